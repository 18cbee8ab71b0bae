"""Loader for ETH-XGaze (Zhang et al., ECCV 2020), the normalised per-subject HDF5 release.

Layout implemented: one ``subjectXXXX.h5`` per subject (the release's ``train/`` and
``test/`` folders, e.g. ``xgaze_224/train/subject0000.h5``), with datasets

==================  ===================  ==========================================
``face_patch``      (N, S, S, 3) uint8   normalised face crops, **BGR** (S = 224 or
                                         448); the official loader (ETH-XGaze
                                         ``data_loader.py``) swaps to RGB
``face_gaze``       (N, 2) float         (pitch, yaw) rad; train split only
``face_head_pose``  (N, 2) float         (pitch, yaw) rad of the head; train only
``frame_index``     (N, 1) int           frame number within the session
``cam_index``       (N, 1) int           which of the 18 cameras
``face_mat_norm``   (N, 3, 3) float      the normalising rotation (not used)
``facial_landmarks`` (N, 68, 2) float    optional: 68 landmarks in face_patch pixels
==================  ===================  ==========================================

Label conventions, from ``normalization_example.py`` of xucong-zhang/ETH-XGaze (the
script that wrote these files): ``face_gaze`` = (arcsin(-y), arctan2(-x, -z)) of the
normalised gaze vector -- exactly :func:`~backdoorlab.geometry.vector_to_pitchyaw`, so
no conversion. ``face_head_pose`` = (asin(Zy), atan2(Zx, Zz)) of the z column of the
normalised head rotation; the ETH-XGaze face model has z pointing into the head (nose
tip at small z, outer eye corners at larger z), so this is
:func:`~backdoorlab.geometry.head_pose_from_rotation` too. The test split files carry no
gaze: asking for gaze from them is an error unless ``require_gaze=False``.

``facial_landmarks`` (present only in files made with the example script) are turned
into ``eye_corners`` (iBUG points 36, 39, 42, 45: image-left eye outer/inner,
image-right eye inner/outer) and ``landmarks`` (eye centres, nose tip 30, mouth corners
48 and 54).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import h5py
import numpy as np

from backdoorlab.data._realio import (
    PathLike,
    even_subsample,
    field_error,
    h5_dataset,
    open_h5,
    read_h5,
    resize_area,
    scale_points,
    size_pair,
    subject_files,
)
from backdoorlab.data.arrays import ArrayDataset

SUBJECT_PATTERN = r"subject(\d+)"
LABEL_KEYS = {"face_gaze": "gaze", "face_head_pose": "head_pose"}
EYE_CORNER_IDX = [36, 39, 42, 45]


def _landmark_sets(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    corners = lm[:, EYE_CORNER_IDX]
    five = np.stack([lm[:, 36:42].mean(1), lm[:, 42:48].mean(1), lm[:, 30], lm[:, 48], lm[:, 54]], axis=1)
    return corners, five


def load_ethxgaze(
    path_or_dir: PathLike,
    size: int | tuple[int, int] = 64,
    subjects: Iterable[int | str] | None = None,
    max_per_subject: int | None = None,
    *,
    require_gaze: bool = True,
    with_landmarks: bool = True,
    chunk: int = 256,
) -> ArrayDataset:
    """Read ETH-XGaze subject files into RGB ``size`` x ``size`` crops with labels.

    ``path_or_dir`` is one ``subjectXXXX.h5`` or a folder of them. Each file is read
    ``chunk`` images at a time and shrunk at once (a subject is several GB at 224 px).
    An annotation is returned only if every selected file has it; ``gaze`` must be
    present unless ``require_gaze=False`` (the test split has none). ``cam_index`` and
    ``frame_index`` are kept as annotations because ETH-XGaze's protocols split by them.
    """
    target = Path(path_or_dir)
    out_hw = size_pair(size)
    files = subject_files(target, SUBJECT_PATTERN, ".h5", subjects, "ETH-XGaze")

    per_file: list[dict[str, np.ndarray]] = []
    for num, path in files:
        with open_h5(path, "face_patch") as f:
            per_file.append(_read_file(f, path, num, out_hw, max_per_subject, require_gaze, with_landmarks, chunk))

    common = set.intersection(*(set(d) for d in per_file))
    ann = {k: np.concatenate([d[k] for d in per_file]) for k in sorted(common) if k != "images"}
    return ArrayDataset(
        np.concatenate([d["images"] for d in per_file]),
        ann,
        {
            "name": "ethxgaze",
            "source": str(target),
            "subjects": [n for n, _ in files],
            "conventions": (
                "gaze/head_pose: face_gaze/face_head_pose as published, (pitch, yaw) rad, "
                "pitch=arcsin(-y), yaw=arctan2(-x,-z) in the normalised camera; face_patch BGR->RGB"
            ),
        },
    )


def _read_file(
    f: h5py.File,
    path: Path,
    num: int,
    out_hw: tuple[int, int],
    max_per_subject: int | None,
    require_gaze: bool,
    with_landmarks: bool,
    chunk: int,
) -> dict[str, np.ndarray]:
    patches = h5_dataset(f, path, "face_patch")
    if patches.ndim != 4 or patches.shape[3] != 3 or patches.dtype != np.uint8:
        raise field_error(
            path,
            "face_patch",
            f"has {patches.dtype} {tuple(patches.shape)}, expected uint8 (N, S, S, 3)",
        )
    n = int(patches.shape[0])
    if require_gaze and "face_gaze" not in f:
        raise field_error(path, "face_gaze", "is missing (test-split files have no gaze; pass require_gaze=False)")
    keep = even_subsample(n, max_per_subject)
    out: dict[str, np.ndarray] = {}
    for key, name in LABEL_KEYS.items():
        if key in f:
            arr = read_h5(h5_dataset(f, path, key), path, key)
            if arr.shape != (n, 2):
                raise field_error(path, key, f"has shape {arr.shape}, expected ({n}, 2)")
            if not np.all(np.isfinite(arr)):
                raise field_error(path, key, "has non-finite values")
            out[name] = arr[keep].astype(np.float32)
    for key in ("cam_index", "frame_index"):
        if key in f:
            arr = read_h5(h5_dataset(f, path, key), path, key)
            if arr.size != n:
                raise field_error(path, key, f"has shape {arr.shape}, expected ({n}, 1)")
            out[key] = arr.reshape(n)[keep].astype(np.int64)
    if with_landmarks and "facial_landmarks" in f:
        lm = read_h5(h5_dataset(f, path, "facial_landmarks"), path, "facial_landmarks")
        if lm.shape != (n, 68, 2):
            raise field_error(path, "facial_landmarks", f"has shape {lm.shape}, expected ({n}, 68, 2)")
        src_hw = (int(patches.shape[1]), int(patches.shape[2]))
        corners, five = _landmark_sets(lm[keep].astype(np.float64))
        out["eye_corners"] = scale_points(corners, src_hw, out_hw)
        out["landmarks"] = scale_points(five, src_hw, out_hw)
    out["identity"] = np.full(len(keep), num, np.int64)

    images = np.empty((len(keep), *out_hw, 3), np.uint8)
    for start in range(0, len(keep), chunk):
        idx = keep[start : start + chunk]
        block = read_h5(patches, path, "face_patch", idx)
        for j, img in enumerate(block):
            images[start + j] = cv2.cvtColor(resize_area(img, out_hw), cv2.COLOR_BGR2RGB)
    out["images"] = images
    return out


__all__ = ["load_ethxgaze"]
