"""Writers of tiny releases in the exact published layouts of MPIIFaceGaze, MPIIGaze and
ETH-XGaze, with known ground truth, for the loader tests.

Each writer reproduces the on-disk format the real release uses -- the 28-column
``pXX.txt``, real JPEG frames, a MATLAB v5 ``Camera.mat``, MATLAB v7.3 ``pXX.mat`` (HDF5
with the 512-byte MATLAB user block and column-major axis order), v5 ``dayYY.mat`` with
the nested ``data.left.image`` structs, and ETH-XGaze's chunked ``subjectXXXX.h5`` --
so the loaders are tested against the layout, not against themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import h5py
import numpy as np
import scipy.io

# The MPIIGaze generic 6-point face model (mm, head frame, columns = points): outer and
# inner corner of the image-left eye, inner and outer corner of the image-right eye,
# then the image-left and image-right mouth corners.
MPII_FACE_MODEL = np.array(
    [
        [
            -45.0967681126441,
            -21.3128582097374,
            21.3128582097374,
            45.0967681126441,
            -26.2995769055718,
            26.2995769055718,
        ],
        [
            -0.483773045049757,
            0.483773045049757,
            0.483773045049757,
            -0.483773045049757,
            68.5950352778326,
            68.5950352778326,
        ],
        [2.39702984214363, -2.39702984214363, -2.39702984214363, 2.39702984214363, 0.0, 0.0],
    ]
)

CAMERA = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
FRAME_HW = (480, 640)
BACKGROUND_BGR = (90, 90, 90)
FACE_CENTRE_BGR = (0, 0, 255)  # red disk at the projected face centre
LEFT_OUTER_BGR = (0, 255, 0)  # green disk at the image-left outer eye corner
RIGHT_OUTER_BGR = (255, 0, 0)  # blue disk at the image-right outer eye corner


def _r6(v: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(v, dtype=np.float64), 6)


# ------------------------------------------------------------------ MPIIFaceGaze raw
@dataclass
class RawSample:
    """One frame: head rotation (Rodrigues), face centre and gaze target (camera, mm)."""

    rvec: np.ndarray
    face_centre: np.ndarray
    gaze_target: np.ndarray
    day: str = "day01"
    # filled in by the writer: what was actually written
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((6, 2)))
    image: str = ""


def project(points_cam: np.ndarray, k: np.ndarray = CAMERA) -> np.ndarray:
    """(3, K) camera points -> (K, 2) pixels, no distortion."""
    p = k @ points_cam
    return (p[:2] / p[2]).T


def write_mpiifacegaze_raw(root: Path, subjects: dict[int, list[RawSample]]) -> Path:
    """``pXX/pXX.txt``, ``pXX/dayYY/NNNN.jpg`` and ``pXX/Calibration/Camera.mat``."""
    root.mkdir(parents=True, exist_ok=True)
    for num, samples in subjects.items():
        name = f"p{num:02d}"
        folder = root / name
        (folder / "Calibration").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(
            folder / "Calibration" / "Camera.mat",
            {
                "cameraMatrix": CAMERA,
                "distCoeffs": np.zeros((1, 5)),
                "retval": np.array([[0.31]]),
                "rvecs": np.zeros((3, 3)),
                "tvecs": np.zeros((3, 3)),
            },
        )
        lines = []
        counters: dict[str, int] = {}
        for s in samples:
            s.rvec, s.face_centre, s.gaze_target = (
                _r6(s.rvec),
                _r6(s.face_centre),
                _r6(s.gaze_target),
            )
            rot, _ = cv2.Rodrigues(s.rvec.reshape(3, 1))
            # place the model so that the mean of its 6 points is the face centre
            t = s.face_centre - rot @ MPII_FACE_MODEL.mean(axis=1)
            pts3 = rot @ MPII_FACE_MODEL + t[:, None]
            s.landmarks = np.round(project(pts3))  # the release stores integer pixels
            counters[s.day] = counters.get(s.day, 0) + 1
            s.image = f"{s.day}/{counters[s.day]:04d}.jpg"
            (folder / s.day).mkdir(exist_ok=True)
            frame = np.empty((*FRAME_HW, 3), np.uint8)
            frame[:] = BACKGROUND_BGR
            fc_px = project(s.face_centre.reshape(3, 1))[0]
            cv2.circle(frame, tuple(round(v) for v in fc_px.tolist()), 12, FACE_CENTRE_BGR, -1)
            cv2.circle(frame, tuple(int(v) for v in s.landmarks[0]), 7, LEFT_OUTER_BGR, -1)
            cv2.circle(frame, tuple(int(v) for v in s.landmarks[3]), 7, RIGHT_OUTER_BGR, -1)
            cv2.imwrite(str(folder / s.image), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
            screen = [512, 384]
            cols = [
                s.image,
                *[str(v) for v in screen],
                *[str(int(v)) for v in s.landmarks.reshape(-1)],
                *[f"{v:.6f}" for v in s.rvec],
                *[f"{v:.6f}" for v in t],
                *[f"{v:.6f}" for v in s.face_centre],
                *[f"{v:.6f}" for v in s.gaze_target],
                "left",
            ]
            lines.append(" ".join(cols))
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


# ----------------------------------------------------------- MPIIFaceGaze normalised
MATLAB_73_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 HDF5 schema 1.00 ."


def matlab_caffe_images(images_rgb: np.ndarray) -> np.ndarray:
    """What the MPIIFaceGaze authors stored: per the dataset page, in MATLAB,
    ``img(:,:,[3 2 1])``, ``flip(img, 2)``, ``imrotate(img, 90)``; stacked (H, W, 3, N)."""
    out = []
    for img in images_rgb:
        x = img[:, :, ::-1]  # RGB -> BGR
        x = x[:, ::-1]  # flip(., 2): mirror the columns
        x = np.rot90(x, 1, axes=(0, 1))  # imrotate(., 90): counter-clockwise
        out.append(x)
    return np.stack(out, axis=-1)  # MATLAB (rows, cols, 3, N)


def write_mpiifacegaze_normalized(path: Path, images_rgb: np.ndarray, labels: np.ndarray, *, v73: bool = True) -> Path:
    """``pXX.mat`` holding struct ``Data`` with ``data`` and ``label`` (16 x N in MATLAB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data_ml = matlab_caffe_images(images_rgb)
    label_ml = np.asarray(labels, dtype=np.float64).T  # MATLAB 16 x N
    if not v73:
        scipy.io.savemat(path, {"Data": {"data": data_ml, "label": label_ml}})
        return path
    # MATLAB writes column-major: h5py sees every array with its axes reversed.
    with h5py.File(path, "w", userblock_size=512) as f:
        g = f.create_group("Data")
        g.attrs["MATLAB_class"] = np.bytes_("struct")
        d = g.create_dataset("data", data=np.ascontiguousarray(data_ml.transpose(3, 2, 1, 0)))
        d.attrs["MATLAB_class"] = np.bytes_("uint8")
        lab = g.create_dataset("label", data=np.ascontiguousarray(label_ml.T))
        lab.attrs["MATLAB_class"] = np.bytes_("double")
    with open(path, "r+b") as fh:
        header = MATLAB_73_HEADER.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
        fh.write(header)
    return path


# ------------------------------------------------------------------- MPIIGaze
def _cell(strings: list[str]) -> np.ndarray:
    cell = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cell[i, 0] = s
    return cell


def write_mpiigaze_day(
    path: Path,
    left: dict[str, np.ndarray],
    right: dict[str, np.ndarray],
    filenames: list[str],
) -> Path:
    """``dayYY.mat``: struct ``data`` with ``left``/``right`` structs (image, gaze, pose)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"data": {"left": left, "right": right}, "filenames": _cell(filenames)})
    return path


def write_mpiigaze_eval_list(root: Path, subject: int, rows: list[tuple[str, str]]) -> Path:
    """``Evaluation Subset/sample list for eye image/pXX.txt``: ``dayYY/NNNN.jpg side``."""
    folder = root / "Evaluation Subset" / "sample list for eye image"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"p{subject:02d}.txt"
    path.write_text("".join(f"{name} {side}\n" for name, side in rows))
    return path


# ------------------------------------------------------------------- ETH-XGaze
def write_ethxgaze_subject(
    path: Path,
    patches_rgb: np.ndarray,
    gaze: np.ndarray | None = None,
    head_pose: np.ndarray | None = None,
    landmarks: np.ndarray | None = None,
) -> Path:
    """``subjectXXXX.h5`` as written by ETH-XGaze's normalisation script (BGR patches)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n, s = patches_rgb.shape[0], patches_rgb.shape[1]
    with h5py.File(path, "w") as f:
        f.create_dataset("frame_index", data=np.arange(n).reshape(n, 1), chunks=(1, 1))
        f.create_dataset("cam_index", data=(np.arange(n) % 18).reshape(n, 1), chunks=(1, 1))
        f.create_dataset(
            "face_patch",
            data=np.ascontiguousarray(patches_rgb[..., ::-1]),
            chunks=(1, s, s, 3),
            compression="lzf",
        )
        f.create_dataset("face_mat_norm", data=np.tile(np.eye(3), (n, 1, 1)), chunks=(1, 3, 3))
        if gaze is not None:
            f.create_dataset("face_gaze", data=np.asarray(gaze, np.float64), chunks=(1, 2))
        if head_pose is not None:
            f.create_dataset("face_head_pose", data=np.asarray(head_pose, np.float64), chunks=(1, 2))
        if landmarks is not None:
            f.create_dataset("facial_landmarks", data=np.asarray(landmarks, np.float64))
    return path


# ------------------------------------------------------------------- damage
def truncate(path: Path, fraction: float = 0.5) -> Path:
    """Cut a file to ``fraction`` of its length, like an interrupted download."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def pattern_images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Asymmetric RGB test images: any flip, transpose or channel swap changes them."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    imgs[:, : h // 4, : w // 3, 0] = 250  # a red-heavy top-left block
    imgs[:, : h // 4, : w // 3, 1:] = 5
    return imgs
