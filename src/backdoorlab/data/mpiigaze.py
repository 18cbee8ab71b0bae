"""Loader for the normalised eye images of MPIIGaze (Zhang et al., CVPR 2015 / TPAMI 2019).

Layout implemented (the release's ``Data/Normalized`` folder)::

    <root>/Data/Normalized/pXX/dayYY.mat        MATLAB v5, one file per recording day
    <root>/Evaluation Subset/sample list for eye image/pXX.txt   (optional)

Each ``dayYY.mat`` holds a struct ``data`` with sub-structs ``left`` and ``right``,
each with ``image`` (N x 36 x 60 uint8 grey eye patches), ``gaze`` (N x 3 unit gaze
vectors) and ``pose`` (N x 3 head rotation vectors), all in that eye's normalised
camera, plus ``filenames`` (the N source frame names, ``0005.jpg``). This is the layout
read by hysts/pytorch_mpiigaze ``tools/preprocess_mpiigaze.py``. The evaluation list
has one ``dayYY/NNNN.jpg left|right`` line per sample of the standard 3000-per-subject
protocol; with ``evaluation_subset=True`` exactly those samples (and eyes) are loaded.

Labels. ``gaze`` becomes (pitch, yaw) with :func:`~backdoorlab.geometry.vector_to_pitchyaw`
(pitch = arcsin(-y), yaw = arctan2(-x, -z): the ``convert_gaze`` of the reference
code). ``pose`` is turned into a rotation with cv2.Rodrigues and into the (pitch, yaw)
of the face's forward axis with :func:`~backdoorlab.geometry.head_pose_from_rotation`;
the MPII 6-point head frame has its z axis pointing into the head (see
:mod:`backdoorlab.data.mpiifacegaze`), so this equals the reference ``convert_pose``
(pitch = asin(Rz_y), yaw = atan2(Rz_x, Rz_z)) and the MPIIFaceGaze loaders' head pose.

Right eyes. The reference code mirrors every right-eye patch left-right and negates the
yaw of its gaze and head pose, so one model sees only "left-looking" eye shapes.
Mirroring the image is the reflection x -> -x of the normalised camera, which leaves
pitch unchanged and negates yaw, so the labels stay exact. ``flip_right=True`` (the
default) does the same; ``eye_side`` (0 left, 1 right) records where a sample came from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from backdoorlab.data._realio import (
    PathLike,
    as_float,
    check_shape,
    even_subsample,
    field_error,
    load_mat_v5,
    mat_field,
    mat_strings,
    require_file,
    resize_area,
    select_subjects,
    size_pair,
    to_uint8,
)
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import DatasetError
from backdoorlab.geometry import head_pose_from_rotation, vector_to_pitchyaw

SUBJECT_PATTERN = r"p(\d+)"
EVAL_DIR = Path("Evaluation Subset") / "sample list for eye image"
SIDES = ("left", "right")


def _normalized_dir(root: Path) -> Path:
    """Accept the release root, its ``Data`` folder or ``Data/Normalized`` itself."""
    for cand in (root / "Data" / "Normalized", root / "Normalized", root):
        if cand.is_dir() and any(re.fullmatch(SUBJECT_PATTERN, p.name) for p in cand.iterdir()):
            return cand
    raise DatasetError(f"{root}: no Data/Normalized/pXX folders found (is this the MPIIGaze root?)")


def _eye_arrays(data: Any, side: str, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``data.<side>.image/gaze/pose`` with their shapes checked against each other."""
    eye = mat_field(data, side, path, f"data.{side}")
    image = np.asarray(mat_field(eye, "image", path, f"data.{side}.image"))
    gaze = as_float(mat_field(eye, "gaze", path, f"data.{side}.gaze"), path, f"data.{side}.gaze")
    pose = as_float(mat_field(eye, "pose", path, f"data.{side}.pose"), path, f"data.{side}.pose")
    if image.ndim == 2:  # a one-sample day saved without its leading axis
        image = image[None]
    check_shape(image, (None, None, None), path, f"data.{side}.image")
    n = image.shape[0]
    check_shape(gaze.reshape(-1, 3) if gaze.size == 3 else gaze, (n, 3), path, f"data.{side}.gaze")
    check_shape(pose.reshape(-1, 3) if pose.size == 3 else pose, (n, 3), path, f"data.{side}.pose")
    if image.dtype != np.uint8:
        image = to_uint8(as_float(image, path, f"data.{side}.image"))
    gaze, pose = gaze.reshape(n, 3), pose.reshape(n, 3)
    if not (np.all(np.isfinite(gaze)) and np.all(np.isfinite(pose))):
        raise field_error(path, f"data.{side}.gaze", "has non-finite values")
    if np.any(np.linalg.norm(gaze, axis=1) < 1e-9):
        raise field_error(path, f"data.{side}.gaze", "has zero-length gaze vectors")
    return image, gaze, pose


def _labels(gaze: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g = vector_to_pitchyaw(gaze).astype(np.float32)
    rots = np.stack([cv2.Rodrigues(r.reshape(3, 1))[0] for r in pose]) if len(pose) else np.zeros((0, 3, 3))
    h = head_pose_from_rotation(rots).astype(np.float32).reshape(-1, 2)
    return g, h


def _read_eval_list(path: Path) -> dict[str, list[tuple[str, str]]]:
    """``dayYY/NNNN.jpg side`` lines grouped by day, in file order."""
    require_file(path, "evaluation list")
    per_day: dict[str, list[tuple[str, str]]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in SIDES or parts[0].count("/") != 1:
            raise field_error(path, "evaluation list", f"line {lineno} is not 'dayYY/NNNN.jpg left|right'")
        day, name = parts[0].split("/")
        per_day.setdefault(day, []).append((name, parts[1]))
    return per_day


def load_mpiigaze_normalized(
    root: PathLike,
    subjects: Iterable[int | str] | None = None,
    eye: str = "both",
    *,
    flip_right: bool = True,
    evaluation_subset: bool = False,
    max_per_subject: int | None = None,
    size: int | Sequence[int] | None = None,
) -> ArrayDataset:
    """Load the 36x60 normalised eye patches as (N, 36, 60, 1) uint8 with labels.

    ``eye`` picks ``"left"``, ``"right"`` or ``"both"`` (both eyes of every frame, left
    first within each day). With ``evaluation_subset`` only the samples (and the eye)
    named in the official per-subject list are loaded, further filtered by ``eye``.
    ``size`` (an int for a square, or (h, w)) resizes with INTER_AREA; ``None`` keeps
    36x60. ``max_per_subject`` keeps an evenly spread subset of each subject.
    Annotations: ``gaze``, ``head_pose``, ``identity``, ``eye_side`` (0 left, 1 right).
    """
    if eye not in ("both", *SIDES):
        raise DatasetError(f"eye must be 'both', 'left' or 'right', got {eye!r}")
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"{base}: MPIIGaze root folder does not exist")
    norm_dir = _normalized_dir(base)
    available = {int(p.name[1:]): p for p in norm_dir.iterdir() if p.is_dir() and re.fullmatch(SUBJECT_PATTERN, p.name)}
    chosen = select_subjects(available, subjects, SUBJECT_PATTERN, norm_dir)
    wanted = SIDES if eye == "both" else (eye,)
    out_hw = None if size is None else size_pair(size)

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("img", "gaze", "head", "ident", "side")}
    for num, folder in chosen:
        eval_days = None
        if evaluation_subset:
            eval_root = base if (base / EVAL_DIR).is_dir() else norm_dir.parent.parent
            eval_days = _read_eval_list(eval_root / EVAL_DIR / f"{folder.name}.txt")
        subj = _load_subject(folder, wanted, eval_days, flip_right)
        keep = even_subsample(len(subj["img"]), max_per_subject)
        imgs = subj["img"][keep]
        if out_hw is not None:
            imgs = np.stack([resize_area(im, out_hw) for im in imgs]) if len(imgs) else imgs
        parts["img"].append(imgs.reshape(len(keep), *imgs.shape[1:3], 1))
        parts["gaze"].append(subj["gaze"][keep])
        parts["head"].append(subj["head"][keep])
        parts["side"].append(subj["side"][keep])
        parts["ident"].append(np.full(len(keep), num, np.int64))
    shapes = {p.shape[1:] for p in parts["img"] if len(p)}
    if len(shapes) > 1:
        raise DatasetError(f"{norm_dir}: eye images differ in size across subjects ({sorted(shapes)})")
    return ArrayDataset(
        np.concatenate(parts["img"]),
        {
            "gaze": np.concatenate(parts["gaze"]),
            "head_pose": np.concatenate(parts["head"]),
            "identity": np.concatenate(parts["ident"]),
            "eye_side": np.concatenate(parts["side"]),
        },
        {
            "name": "mpiigaze-normalized",
            "source": str(base),
            "subjects": [n for n, _ in chosen],
            "eye": eye,
            "flip_right": flip_right,
            "evaluation_subset": evaluation_subset,
            "conventions": (
                "gaze: (pitch, yaw) rad of data.<eye>.gaze, pitch=arcsin(-y), yaw=arctan2(-x,-z); "
                "head_pose: forward axis (-z) of Rodrigues(data.<eye>.pose); both in the eye's "
                "normalised camera" + ("; right eyes mirrored left-right with yaw negated" if flip_right else "")
            ),
        },
    )


def _load_subject(
    folder: Path,
    sides: Sequence[str],
    eval_days: dict[str, list[tuple[str, str]]] | None,
    flip_right: bool,
) -> dict[str, np.ndarray]:
    """All samples of one subject, day by day (one day file in memory at a time)."""
    days = sorted(p for p in folder.iterdir() if p.suffix == ".mat" and p.stem.startswith("day"))
    if eval_days is not None:
        names = {p.stem for p in days}
        missing = sorted(set(eval_days) - names)
        if missing:
            raise field_error(
                folder / f"{missing[0]}.mat",
                "data",
                "is listed in the evaluation subset but missing",
            )
        days = [p for p in days if p.stem in eval_days]
    if not days:
        raise DatasetError(f"{folder}: no dayYY.mat files")
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("img", "gaze", "head", "side")}
    for path in days:
        mat = load_mat_v5(path, "data")
        data = mat_field(mat, "data", path, "data")
        eyes = {s: _eye_arrays(data, s, path) for s in SIDES}
        n = eyes["left"][0].shape[0]
        if eyes["right"][0].shape[0] != n:
            raise field_error(path, "data.right.image", f"has {eyes['right'][0].shape[0]} rows, left has {n}")
        if eval_days is None:
            picks = [(s, np.arange(n)) for s in sides]
        else:
            names = mat_strings(mat_field(mat, "filenames", path, "filenames"))
            if len(names) != n:
                raise field_error(path, "filenames", f"has {len(names)} entries, expected {n}")
            index = {name: i for i, name in enumerate(names)}
            picks = []
            for name, side in eval_days[path.stem]:
                if name not in index:
                    raise field_error(path, "filenames", f"does not contain {name!r} from the evaluation list")
                if side in sides:
                    picks.append((side, np.array([index[name]])))
        for side, idx in picks:
            image, gaze3, pose3 = eyes[side]
            img = image[idx]
            g, h = _labels(gaze3[idx], pose3[idx])
            if side == "right" and flip_right:
                img = img[:, :, ::-1]
                g[:, 1] *= -1.0
                h[:, 1] *= -1.0
            out["img"].append(np.ascontiguousarray(img))
            out["gaze"].append(g)
            out["head"].append(h)
            out["side"].append(np.full(len(idx), SIDES.index(side), np.int64))
    if not out["img"]:
        return {
            "img": np.zeros((0, 36, 60), np.uint8),
            "gaze": np.zeros((0, 2), np.float32),
            "head": np.zeros((0, 2), np.float32),
            "side": np.zeros(0, np.int64),
        }
    shapes = {a.shape[1:] for a in out["img"]}
    if len(shapes) > 1:
        raise DatasetError(f"{folder}: eye images differ in size between days ({sorted(shapes)})")
    return {k: np.concatenate(v) for k, v in out.items()}


__all__ = ["load_mpiigaze_normalized"]
