"""Loaders for the two MPIIFaceGaze releases (Zhang et al., CVPRW 2017).

Raw release (``load_mpiifacegaze_raw``)
=======================================

Layout, per subject ``pXX`` (p00..p14)::

    pXX/pXX.txt                     one line per image, whitespace separated, 28 fields
    pXX/dayYY/NNNN.jpg              the full camera frames (1280x720 on the real data)
    pXX/Calibration/Camera.mat      MATLAB v5: cameraMatrix (3x3), distCoeffs (1x5), ...

Columns of ``pXX.txt`` (0-based; from the release's readme, and read the same way by
the normalisation script of X-Shi/Data-Normalization-Gaze-Estimation):

====== ============================================================================
0      image path relative to ``pXX/`` (``day01/0005.jpg``)
1-2    gaze point on the screen, pixels (unused here)
3-14   six landmarks (x, y) in image pixels: four eye corners, then two mouth
       corners, in the order of the 6-point face model (image-left to image-right)
15-17  head rotation, Rodrigues vector (head -> camera), from the 6-point model
18-20  head translation, mm (unused: the face centre below is the reference point)
21-23  face centre ``fc`` in camera coordinates, mm (mean of the 6 model points)
24-26  gaze target ``gt`` in camera coordinates, mm; gaze direction is gt - fc
27     ``left``/``right``: which eye the MPIIGaze evaluation subset uses (unused)
====== ============================================================================

Each frame is normalised as in Zhang, Sugano & Bulling, "Revisiting data normalization
for appearance-based gaze estimation" (ETRA 2018), following the reference
implementation in ``xucong-zhang/ETH-XGaze/normalization_example.py``: a virtual camera
with focal length ``focal_norm`` is placed ``distance_norm`` mm from the face centre
and looks straight at it; its y axis is ``forward x head_x`` so the head's roll is
removed; the frame is warped with ``W = K_norm S R K^-1`` (cv2.warpPerspective, or an
equivalent undistort+rectify remap when the camera has lens distortion) to a
``roi_size`` crop, then shrunk to ``size`` with INTER_AREA. The gaze label is
``R (gt - fc)`` normalised -- the rotation only, not the scale ``S``, per the ETRA
paper (and the dataset author's note in ETH-XGaze issue #26). Defaults are the
ETH-XGaze face setting (focal 960, 300 mm, 448 px: a 140 mm wide view of the face).

Head frame: the 6-point MPII face model (``6 points-based face model.mat`` of MPIIGaze)
has x from the image-left eye's outer corner (-45 mm) to the image-right one (+45 mm),
y down (mouth at +68 mm) and z growing *away* from the viewer (outer eye corners at
+2.4 mm, inner at -2.4 mm). So a face looking into the camera has rotation ~ I and
points along its -z axis -- exactly our head frame (``backdoorlab.geometry``), so no
axis conversion is needed: ``head_pose = head_pose_from_rotation(R @ R_head)``. This is
also what the MPIIGaze/ETH-XGaze reference code computes (pitch = asin(Rz_y), yaw =
atan2(Rz_x, Rz_z) of the rotation's z column, hysts/pytorch_mpiigaze
``tools/preprocess_mpiigaze.py`` and ETH-XGaze ``normalization_example.py``).

Normalised release (``load_mpiifacegaze_normalized``)
=====================================================

One ``pXX.mat`` per subject, MATLAB v7.3 (HDF5 with a 512-byte user block), holding a
struct ``Data`` with ``data`` (the 448x448 colour face images) and ``label`` (one row
per image: gaze pitch, gaze yaw, head pitch, head yaw, then the six landmarks as x, y
pairs). The dataset page says the images were made Caffe-ready in MATLAB by
``img(:,:,[3 2 1])`` (RGB -> BGR), ``flip(img, 2)`` and ``imrotate(img, 90)``; flip then
rotate by +90 is a transpose, and h5py reads MATLAB's column-major arrays with the
axes reversed (another transpose), so h5py sees ``Data/data`` as (N, 3, H, W) of the
upright BGR image, and ``Data/label`` as (N, 16) -- the layout hysts/pytorch_mpiigaze
``tools/preprocess_mpiifacegaze.py`` reads (and treats as BGR, see its BGR-ordered
normalisation means). The labels are (pitch, yaw) in our convention already: hysts'
demo turns the MPIIFaceGaze model's outputs into vectors with
``-(cos p sin y, sin p, cos p cos y)``, our :func:`~backdoorlab.geometry.pitchyaw_to_vector`.
A MATLAB v5 file with the same struct is read with scipy as a fallback; scipy keeps
MATLAB's axis order, so there ``data`` is (W, H, 3, N) -- the transposed images --
and ``label`` is (16, N).

The frame of the landmark columns is not documented (pixel coordinates of the 448
image are the likely reading), so ``eye_corners`` is only returned on request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
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
    h5_dataset,
    is_hdf5,
    load_mat_v5,
    mat_field,
    open_h5,
    read_h5,
    require_file,
    resize_area,
    scale_points,
    select_subjects,
    size_pair,
    subject_files,
    to_uint8,
)
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import DatasetError
from backdoorlab.geometry import head_pose_from_rotation, vector_to_pitchyaw

SUBJECT_PATTERN = r"p(\d+)"
N_COLUMNS = 28
CONVENTION_NOTE = (
    "gaze/head_pose: (pitch, yaw) rad, pitch=arcsin(-y), yaw=arctan2(-x,-z) in the "
    "normalised camera; head frame = MPII 6-point model (face along -z), no conversion"
)


# ---------------------------------------------------------------- normalisation
@dataclass
class NormalizedFace:
    """One normalised face: the crop (BGR, ``roi_size`` square) and its labels."""

    image: np.ndarray  # (roi, roi, 3) uint8, BGR like the input frame
    gaze: np.ndarray  # (2,) pitch, yaw
    head_pose: np.ndarray  # (2,) pitch, yaw of the face's forward axis
    landmarks: np.ndarray  # (K, 2) input landmarks in crop pixels
    rotation: np.ndarray  # (3, 3) camera -> normalised camera


def normalizing_rotation(face_centre: np.ndarray, head_rotation: np.ndarray) -> np.ndarray:
    """Rows (right, down, forward): forward at the face centre, roll taken from the head.

    ``down = forward x head_x`` makes the virtual camera's y axis orthogonal to the
    head's x axis, so after rotation the line between the eyes is horizontal.
    """
    centre = np.asarray(face_centre, dtype=np.float64).reshape(3)
    forward = centre / np.linalg.norm(centre)
    down = np.cross(forward, np.asarray(head_rotation, dtype=np.float64)[:, 0])
    n = np.linalg.norm(down)
    if n < 1e-9:
        raise DatasetError("the head x axis is parallel to the viewing direction; cannot remove roll")
    down /= n
    right = np.cross(down, forward)
    right /= np.linalg.norm(right)
    return np.stack([right, down, forward])


def normalize_face(
    image: np.ndarray,
    camera_matrix: np.ndarray,
    dist_coeffs: np.ndarray | None,
    face_centre: np.ndarray,
    head_rvec: np.ndarray,
    gaze_target: np.ndarray,
    landmarks: np.ndarray | None = None,
    *,
    focal_norm: float = 960.0,
    distance_norm: float = 300.0,
    roi_size: int = 448,
) -> NormalizedFace:
    """Warp one frame to the virtual camera and express its labels there.

    Lens distortion, when the coefficients are non-zero, is undone in the same
    resampling pass (``initUndistortRectifyMap`` with the normalising rotation and the
    scale folded into an effective focal length ``focal_norm * d / distance_norm``),
    which is the same mapping as ``warpPerspective(W)`` on an undistorted frame.
    """
    k = np.asarray(camera_matrix, dtype=np.float64).reshape(3, 3)
    dist = np.zeros(5) if dist_coeffs is None else np.asarray(dist_coeffs, dtype=np.float64).reshape(-1)
    centre = np.asarray(face_centre, dtype=np.float64).reshape(3)
    head_r, _ = cv2.Rodrigues(np.asarray(head_rvec, dtype=np.float64).reshape(3, 1))
    rot = normalizing_rotation(centre, head_r)
    distance = float(np.linalg.norm(centre))
    c = roi_size / 2.0
    # K_norm @ S equals (projectively) a camera of focal focal_norm * distance / distance_norm.
    f_eff = focal_norm * distance / distance_norm
    p_eff = np.array([[f_eff, 0.0, c], [0.0, f_eff, c], [0.0, 0.0, 1.0]])
    if np.any(dist != 0):
        map1, map2 = cv2.initUndistortRectifyMap(k, dist, rot, p_eff, (roi_size, roi_size), cv2.CV_32FC1)
        warped = cv2.remap(image, map1, map2, cv2.INTER_LINEAR)
    else:
        k_norm = np.array([[focal_norm, 0.0, c], [0.0, focal_norm, c], [0.0, 0.0, 1.0]])
        scale = np.diag([1.0, 1.0, distance_norm / distance])
        w = k_norm @ scale @ rot @ np.linalg.inv(k)
        warped = cv2.warpPerspective(image, w, (roi_size, roi_size))

    gaze_vec = rot @ (np.asarray(gaze_target, dtype=np.float64).reshape(3) - centre)
    gaze = vector_to_pitchyaw(gaze_vec)
    head_pose = head_pose_from_rotation(rot @ head_r)
    if landmarks is None:
        pts = np.zeros((0, 2))
    else:
        src = np.asarray(landmarks, dtype=np.float64).reshape(-1, 1, 2)
        pts = cv2.undistortPoints(src, k, dist, R=rot, P=p_eff).reshape(-1, 2)
    return NormalizedFace(warped, np.asarray(gaze), np.asarray(head_pose), pts, rot)


# --------------------------------------------------------------------- raw release
@dataclass
class _Row:
    image: str
    landmarks: np.ndarray  # (6, 2)
    rvec: np.ndarray  # (3,)
    face_centre: np.ndarray  # (3,)
    gaze_target: np.ndarray  # (3,)


def _matches(name: str) -> bool:
    return re.fullmatch(SUBJECT_PATTERN, name) is not None


def _parse_annotation(path: Path) -> list[_Row]:
    require_file(path, "annotation")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise field_error(path, "annotation", f"cannot be read ({exc})") from exc
    rows: list[_Row] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != N_COLUMNS:
            raise field_error(path, "columns", f"line {lineno} has {len(parts)} columns, expected {N_COLUMNS}")
        try:
            nums = np.array([float(v) for v in parts[1:27]])
        except ValueError as exc:
            raise field_error(path, "columns", f"line {lineno} has a non-numeric value ({exc})") from exc
        if not np.all(np.isfinite(nums)):
            raise field_error(path, "columns", f"line {lineno} has a non-finite value")
        if nums[22] <= 0:  # the face centre must be in front of the camera
            raise field_error(path, "columns", f"line {lineno}: face centre z must be > 0")
        rows.append(
            _Row(
                image=parts[0],
                landmarks=nums[2:14].reshape(6, 2),
                rvec=nums[14:17],
                face_centre=nums[20:23],
                gaze_target=nums[23:26],
            )
        )
    if not rows:
        raise field_error(path, "annotation", "has no samples")
    return rows


def _read_camera(path: Path) -> tuple[np.ndarray, np.ndarray]:
    mat = load_mat_v5(path, "cameraMatrix")
    k = as_float(mat_field(mat, "cameraMatrix", path, "cameraMatrix"), path, "cameraMatrix")
    check_shape(k, (3, 3), path, "cameraMatrix")
    dist = as_float(mat_field(mat, "distCoeffs", path, "distCoeffs"), path, "distCoeffs")
    dist = dist.reshape(-1)
    if dist.size not in (4, 5, 8, 12, 14):
        raise field_error(path, "distCoeffs", f"has {dist.size} values, expected 4, 5, 8, 12 or 14")
    return k, dist


def load_mpiifacegaze_raw(
    root: PathLike,
    subjects: Iterable[int | str] | None = None,
    size: int | tuple[int, int] = 64,
    max_per_subject: int | None = None,
    *,
    focal_norm: float = 960.0,
    distance_norm: float = 300.0,
    roi_size: int = 448,
) -> ArrayDataset:
    """Normalise the raw MPIIFaceGaze frames into ``size`` x ``size`` RGB face crops.

    Frames are read one at a time and only the small crops are kept, so memory stays
    proportional to the output. ``max_per_subject`` keeps an evenly spread subset.
    Annotations: ``gaze``, ``head_pose``, ``eye_corners`` (image-left eye outer/inner,
    image-right eye inner/outer, crop pixels) and ``identity`` (the subject number).
    """
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"{base}: MPIIFaceGaze root folder does not exist")
    out_hw = size_pair(size)
    available = {int(p.name[1:]): p for p in base.iterdir() if p.is_dir() and _matches(p.name)}
    chosen = select_subjects(available, subjects, SUBJECT_PATTERN, base)

    images: list[np.ndarray] = []
    gaze: list[np.ndarray] = []
    head: list[np.ndarray] = []
    corners: list[np.ndarray] = []
    ident: list[np.ndarray] = []
    for num, folder in chosen:
        rows = _parse_annotation(folder / f"{folder.name}.txt")
        k, dist = _read_camera(folder / "Calibration" / "Camera.mat")
        keep = even_subsample(len(rows), max_per_subject)
        imgs = np.empty((len(keep), *out_hw, 3), np.uint8)
        g = np.empty((len(keep), 2), np.float32)
        h = np.empty((len(keep), 2), np.float32)
        c = np.empty((len(keep), 4, 2), np.float32)
        for j, i in enumerate(keep):
            row = rows[i]
            img_path = folder / row.image
            frame = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
            if frame is None:
                raise field_error(img_path, "image", "cannot be read: missing or not an image")
            try:
                nf = normalize_face(
                    frame,
                    k,
                    dist,
                    row.face_centre,
                    row.rvec,
                    row.gaze_target,
                    row.landmarks[:4],
                    focal_norm=focal_norm,
                    distance_norm=distance_norm,
                    roi_size=roi_size,
                )
            except (DatasetError, cv2.error) as exc:
                raise field_error(folder / f"{folder.name}.txt", "columns", f"sample {row.image}: {exc}") from exc
            small = resize_area(nf.image, out_hw)
            imgs[j] = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
            g[j], h[j] = nf.gaze, nf.head_pose
            c[j] = scale_points(nf.landmarks, (roi_size, roi_size), out_hw)
        images.append(imgs)
        gaze.append(g)
        head.append(h)
        corners.append(c)
        ident.append(np.full(len(keep), num, np.int64))

    return ArrayDataset(
        np.concatenate(images),
        {
            "gaze": np.concatenate(gaze),
            "head_pose": np.concatenate(head),
            "eye_corners": np.concatenate(corners),
            "identity": np.concatenate(ident),
        },
        {
            "name": "mpiifacegaze-raw",
            "source": str(base),
            "subjects": [n for n, _ in chosen],
            "normalization": {
                "focal_norm": focal_norm,
                "distance_norm_mm": distance_norm,
                "roi_size": roi_size,
                "gaze": "R @ (gaze_target - face_centre), rotation only (Zhang et al. ETRA 2018)",
            },
            "conventions": CONVENTION_NOTE,
        },
    )


class _Source:
    """Uniform access to ``Data/data`` and ``Data/label`` in a v7.3 or a v5 file.

    ``images(idx)`` returns upright BGR (n, H, W, 3) uint8; ``labels`` is (N, K).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._h5: Any = None
        try:
            lab = self._open_h5() if is_hdf5(path) else self._open_v5()
            self.labels = self._orient_labels(as_float(lab, path, "Data/label"))
        except DatasetError:
            self.close()
            raise

    def _open_h5(self) -> Any:
        path = self.path
        self._h5 = open_h5(path, "Data")
        ds = h5_dataset(self._h5, path, "Data/data")
        lab = read_h5(h5_dataset(self._h5, path, "Data/label"), path, "Data/label")
        if ds.ndim != 4 or ds.shape[1] != 3:
            raise field_error(path, "Data/data", f"has shape {tuple(ds.shape)}, expected (N, 3, H, W)")
        self._data: Any = ds
        self.n = int(ds.shape[0])
        self.hw = (int(ds.shape[2]), int(ds.shape[3]))
        return lab

    def _open_v5(self) -> Any:
        path = self.path
        mat = load_mat_v5(path, "Data")
        struct = mat_field(mat, "Data", path, "Data")
        arr = as_float(mat_field(struct, "data", path, "Data/data"), path, "Data/data")
        if arr.ndim == 3:  # MATLAB drops a trailing singleton (one image)
            arr = arr[..., None]
        if arr.ndim != 4 or arr.shape[2] != 3:
            raise field_error(path, "Data/data", f"has shape {tuple(arr.shape)}, expected (W, H, 3, N)")
        # MATLAB's view holds the transposed image (flip + rotate 90): reorder to the
        # (N, 3, H, W) that h5py shows for the v7.3 files.
        self._data = arr.transpose(3, 2, 1, 0)
        self.n = int(arr.shape[3])
        self.hw = (int(arr.shape[1]), int(arr.shape[0]))
        return mat_field(struct, "label", path, "Data/label")

    def _orient_labels(self, lab: np.ndarray) -> np.ndarray:
        if lab.ndim != 2:
            raise field_error(self.path, "Data/label", f"has shape {lab.shape}, expected (N, 16)")
        if lab.shape[0] != self.n and lab.shape[1] == self.n:
            lab = lab.T  # written as N x 16 in MATLAB instead of 16 x N
        if lab.shape[0] != self.n or lab.shape[1] < 4:
            raise field_error(
                self.path,
                "Data/label",
                f"has shape {lab.shape}, expected ({self.n}, 16) to match Data/data",
            )
        if not np.all(np.isfinite(lab[:, :4])):
            raise field_error(self.path, "Data/label", "has non-finite gaze/head values")
        return lab

    def images(self, idx: np.ndarray) -> np.ndarray:
        if self._h5 is not None:
            block = read_h5(self._data, self.path, "Data/data", np.sort(idx))
        else:
            block = self._data[idx]
        return to_uint8(block).transpose(0, 2, 3, 1)

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


def load_mpiifacegaze_normalized(
    root_or_file: PathLike,
    subjects: Iterable[int | str] | None = None,
    size: int | tuple[int, int] = 64,
    max_per_subject: int | None = None,
    *,
    with_eye_corners: bool = False,
    chunk: int = 64,
) -> ArrayDataset:
    """Read the published 448x448 normalised MPIIFaceGaze faces, shrunk to ``size``.

    ``root_or_file`` is the folder of ``pXX.mat`` files or one of them. Images are read
    ``chunk`` at a time (a subject is ~1.8 GB at full size). ``with_eye_corners`` adds
    the label's first four landmarks, read as pixels of the 448 image (see the module
    docstring for why this is opt-in).
    """
    target = Path(root_or_file)
    out_hw = size_pair(size)
    files = subject_files(target, SUBJECT_PATTERN, ".mat", subjects, "MPIIFaceGaze normalised")
    images, gaze, head, corners, ident = [], [], [], [], []
    for num, path in files:
        src = _Source(path)
        try:
            if with_eye_corners and src.labels.shape[1] < 12:
                raise field_error(path, "Data/label", "has no landmark columns (needs 12+ columns)")
            keep = even_subsample(src.n, max_per_subject)
            imgs = np.empty((len(keep), *out_hw, 3), np.uint8)
            for start in range(0, len(keep), chunk):
                idx = keep[start : start + chunk]
                for j, img in enumerate(src.images(idx)):
                    imgs[start + j] = resize_area(img[:, :, ::-1], out_hw)  # BGR -> RGB
            lab = src.labels[keep]
            images.append(imgs)
            gaze.append(lab[:, 0:2].astype(np.float32))
            head.append(lab[:, 2:4].astype(np.float32))
            if with_eye_corners:
                pts = lab[:, 4:12].reshape(-1, 4, 2)
                corners.append(scale_points(pts, src.hw, out_hw))
            ident.append(np.full(len(keep), num, np.int64))
        finally:
            src.close()
    ann = {
        "gaze": np.concatenate(gaze),
        "head_pose": np.concatenate(head),
        "identity": np.concatenate(ident),
    }
    if with_eye_corners:
        ann["eye_corners"] = np.concatenate(corners)
    return ArrayDataset(
        np.concatenate(images),
        ann,
        {
            "name": "mpiifacegaze-normalized",
            "source": str(target),
            "subjects": [n for n, _ in files],
            "conventions": CONVENTION_NOTE + "; images stored BGR, transposed by MATLAB's flip+rot90 and restored here",
        },
    )


__all__ = [
    "NormalizedFace",
    "load_mpiifacegaze_normalized",
    "load_mpiifacegaze_raw",
    "normalize_face",
    "normalizing_rotation",
]
