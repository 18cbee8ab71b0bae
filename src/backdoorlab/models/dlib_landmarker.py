"""An independent, pretrained face landmarker: dlib's detectors and shape predictors.

Optional extra: ``pip install 'backdoorlab[dlib]'`` installs ``dlib-bin`` (a prebuilt
dlib wheel) and ``face-recognition-models`` (dlib's pretrained model files shipped
inside the package). Nothing is downloaded at run time. This module imports without
either; dlib is imported only when a model is built, and a missing extra raises
:class:`~backdoorlab.errors.MissingExtraError` saying what to install.

What it is for: a run-time defence can cross-check a (possibly backdoored) face
detector's 5 landmarks against a landmarker that was never exposed to the poisoned
data. :meth:`DlibLandmarker.landmarks` predicts landmarks inside boxes the detector
under test produced; :meth:`DlibLandmarker.detect` runs dlib's own face detector too.

Output convention: 5 points per face in RetinaFace order (image-left eye centre,
image-right eye centre, nose tip, image-left mouth corner, image-right mouth corner),
(x, y) pixels, as the ``landmarks`` column of :mod:`backdoorlab.data.instances`.

* ``predictor="68"`` (iBUG 300-W markup, 0-based): eye centres are the means of points
  36-41 (image-left eye) and 42-47, the nose tip is point 30, the mouth corners are 48
  and 54. All five points are provided.
* ``predictor="5"``: the model marks two corners of each eye and one point *under* the
  nose (the base of the columella, not the tip), and nothing on the mouth. Eye centres
  are the midpoints of each eye's two corners; the nose tip and both mouth corners are
  returned as NaN. :attr:`DlibLandmarker.provides` says which of the 5 points a model
  provides (``[True, True, False, False, False]`` here); the raw points are available
  from :meth:`DlibLandmarker.points`.

Boxes: dlib's shape predictors were trained from dlib's own detector boxes, which are
square and tighter than this project's face boxes (the face outline from hairline to
chin). :meth:`~DlibLandmarker.landmarks` therefore converts boxes given in the project
convention with :func:`face_box_to_dlib` (constants fitted on the synthetic renderer,
see ``bench/dlib_on_synthetic.py``) unless ``box_format="dlib"``; :meth:`~DlibLandmarker.detect`
returns both dlib's own boxes and their approximate project-convention equivalent.

Licences: dlib is under the Boost Software License; ``face-recognition-models`` declares
CC0 1.0 for its model files, but the 68-point predictor was trained on the iBUG 300-W
data set, whose images are licensed for non-commercial use only; see ``docs/dlib.md``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from backdoorlab.errors import ConfigError, MissingExtraError

INSTALL_HINT = "pip install 'backdoorlab[dlib]'"

PREDICTOR_FILES = {"68": "shape_predictor_68_face_landmarks.dat", "5": "shape_predictor_5_face_landmarks.dat"}
CNN_DETECTOR_FILE = "mmod_human_face_detector.dat"

#: which of the 5 RetinaFace points each predictor provides
PROVIDES = {
    "68": np.array([True, True, True, True, True]),
    "5": np.array([True, True, False, False, False]),
}

#: dlib-style box from a project face box: centre shifted by (dx * w, dy * h), square side
#: ``scale * sqrt(w * h)``. Fitted on HOG detections of rendered 192 px faces (53 faces:
#: dx -0.01 +- 0.08, dy -0.05 +- 0.07, scale 0.94 +- 0.07); dlib's boxes are quantised
#: to its detection window sizes, hence the spread.
DLIB_BOX_DX = 0.0
DLIB_BOX_DY = -0.05
DLIB_BOX_SCALE = 0.94


# ------------------------------------------------------------------ pure numpy helpers
def five_from_68(points: np.ndarray) -> np.ndarray:
    """(..., 68, 2) iBUG 300-W points (0-based) -> (..., 5, 2) in RetinaFace order."""
    p = np.asarray(points, dtype=np.float32)
    if p.shape[-2:] != (68, 2):
        raise ValueError(f"expected (..., 68, 2) points, got {p.shape}")
    return np.stack(
        [p[..., 36:42, :].mean(-2), p[..., 42:48, :].mean(-2), p[..., 30, :], p[..., 48, :], p[..., 54, :]], -2
    ).astype(np.float32)


def five_from_dlib5(points: np.ndarray) -> np.ndarray:
    """(..., 5, 2) points of dlib's 5-point model -> (..., 5, 2) in RetinaFace order.

    dlib's order is: image-right eye (outer, inner corner), image-left eye (outer, inner
    corner), under the nose. Eye centres are corner midpoints; the nose tip and mouth
    corners are not marked by this model and come back as NaN.
    """
    p = np.asarray(points, dtype=np.float32)
    if p.shape[-2:] != (5, 2):
        raise ValueError(f"expected (..., 5, 2) points, got {p.shape}")
    out = np.full(p.shape, np.nan, dtype=np.float32)
    out[..., 0, :] = p[..., 2:4, :].mean(-2)
    out[..., 1, :] = p[..., 0:2, :].mean(-2)
    return out


def face_box_to_dlib(boxes: np.ndarray) -> np.ndarray:
    """(K, 4) project face boxes (x1, y1, x2, y2) -> (K, 4) square dlib-style boxes (floats)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    cx = (b[:, 0] + b[:, 2]) / 2 + DLIB_BOX_DX * w
    cy = (b[:, 1] + b[:, 3]) / 2 + DLIB_BOX_DY * h
    half = DLIB_BOX_SCALE * np.sqrt(np.clip(w * h, 0, None)) / 2
    return np.stack([cx - half, cy - half, cx + half, cy + half], 1)


def dlib_box_to_face(boxes: np.ndarray) -> np.ndarray:
    """Approximate inverse of :func:`face_box_to_dlib` (a square dlib box gives a square face box)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    side = np.sqrt(np.clip((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 0, None)) / DLIB_BOX_SCALE
    cx = (b[:, 0] + b[:, 2]) / 2 - DLIB_BOX_DX * side
    cy = (b[:, 1] + b[:, 3]) / 2 - DLIB_BOX_DY * side
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1).astype(np.float32)


# ------------------------------------------------------------------ the optional extra
def import_dlib() -> Any:
    try:
        import dlib
    except ImportError as exc:
        raise MissingExtraError(f"dlib's pretrained models need dlib: {INSTALL_HINT} ({exc})") from None
    return dlib


def model_dir() -> Path:
    """The folder of ``face-recognition-models``' model files.

    Found without importing the package: its ``__init__`` imports ``pkg_resources``,
    which recent setuptools no longer ships.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise MissingExtraError(f"dlib's pretrained models need the package face-recognition-models: {INSTALL_HINT}")
    return Path(spec.origin).parent / "models"


def model_file(name: str) -> Path:
    path = model_dir() / name
    if not path.is_file():
        raise MissingExtraError(f"{path} is missing from face-recognition-models; reinstall it: {INSTALL_HINT}")
    return path


@lru_cache(maxsize=4)
def _load(kind: str, path: str) -> Any:
    dlib = import_dlib()
    if kind == "shape":
        return dlib.shape_predictor(path)
    if kind == "cnn":
        return dlib.cnn_face_detection_model_v1(path)
    return dlib.get_frontal_face_detector()


# ------------------------------------------------------------------ the landmarker
def _as_images(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"images must be (B, H, W, 3) uint8 RGB, got shape {images.shape}")
        images = list(images)
    out = []
    for i, im in enumerate(images):
        im = np.asarray(im)
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"image {i} must be (H, W, 3) uint8 RGB, got {im.dtype} {im.shape}")
        out.append(np.ascontiguousarray(im))
    return out


class DlibLandmarker:
    """dlib face detector + shape predictor, giving 5 landmarks in RetinaFace order.

    Args:
        predictor: ``"68"`` (all 5 points) or ``"5"`` (eye centres only; see the module doc).
        detector: ``"hog"`` (dlib's frontal HOG + linear SVM detector; fast, needs faces of
            about 80 px, or 80 / 2**upsample px) or ``"cnn"`` (dlib's MMOD CNN; more
            robust, about 40x slower on a CPU).
        upsample: times dlib doubles the image before detecting (finds faces half as
            large each time, at about 4x the cost). Used by :meth:`detect` only.
        threshold: detection score threshold passed to dlib (0 is dlib's default for HOG;
            the CNN's confidences are compared against it too).
    """

    def __init__(
        self,
        predictor: Literal["68", "5"] = "68",
        detector: Literal["hog", "cnn"] = "hog",
        upsample: int = 1,
        threshold: float = 0.0,
    ) -> None:
        if predictor not in PREDICTOR_FILES:
            raise ConfigError(f"DlibLandmarker predictor must be '68' or '5', got {predictor!r}")
        if detector not in ("hog", "cnn"):
            raise ConfigError(f"DlibLandmarker detector must be 'hog' or 'cnn', got {detector!r}")
        if int(upsample) != upsample or upsample < 0:
            raise ConfigError(f"DlibLandmarker upsample must be a non-negative integer, got {upsample!r}")
        self.predictor = predictor
        self.detector = detector
        self.upsample = int(upsample)
        self.threshold = float(threshold)
        self.provides = PROVIDES[predictor].copy()
        import_dlib()  # fail here, with the install hint, rather than on first use
        self._shape = _load("shape", str(model_file(PREDICTOR_FILES[predictor])))
        self._det: Any = None

    @staticmethod
    def available() -> bool:
        """Whether dlib and the model files are installed (nothing is loaded)."""
        if importlib.util.find_spec("dlib") is None:
            return False
        try:
            return all((model_dir() / f).is_file() for f in (*PREDICTOR_FILES.values(), CNN_DETECTOR_FILE))
        except MissingExtraError:
            return False

    def _detector(self) -> Any:
        if self._det is None:
            path = str(model_file(CNN_DETECTOR_FILE)) if self.detector == "cnn" else ""
            self._det = _load(self.detector, path)
        return self._det

    def _to_five(self, points: np.ndarray) -> np.ndarray:
        return five_from_68(points) if self.predictor == "68" else five_from_dlib5(points)

    def points(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        boxes: Sequence[np.ndarray],
        box_format: Literal["face", "dlib"] = "face",
    ) -> list[np.ndarray]:
        """The predictor's raw points, (K, 68, 2) or (K, 5, 2) float32 per image."""
        if box_format not in ("face", "dlib"):
            raise ConfigError(f"box_format must be 'face' or 'dlib', got {box_format!r}")
        ims = _as_images(images)
        if len(boxes) != len(ims):
            raise ValueError(f"{len(ims)} images but {len(boxes)} box arrays")
        dlib = import_dlib()
        n = int(self.predictor)
        out = []
        for im, b in zip(ims, boxes, strict=True):
            b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
            if box_format == "face":
                b = face_box_to_dlib(b)
            pts = np.zeros((len(b), n, 2), np.float32)
            for k, (x1, y1, x2, y2) in enumerate(np.rint(b).astype(np.int64).tolist()):
                shape = self._shape(im, dlib.rectangle(x1, y1, x2, y2))
                pts[k] = [(p.x, p.y) for p in shape.parts()]
            out.append(pts)
        return out

    def landmarks(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        boxes: Sequence[np.ndarray],
        box_format: Literal["face", "dlib"] = "face",
    ) -> list[np.ndarray]:
        """5 landmarks per box: a (K, 5, 2) float32 array per image, RetinaFace order.

        ``images``: uint8 RGB, (B, H, W, 3) or a list of (H, W, 3). ``boxes``: one (K, 4)
        array (x1, y1, x2, y2 pixels) per image, in the project's face-box convention
        (``box_format="face"``) or as dlib's detector draws them (``"dlib"``). Points a
        predictor does not provide are NaN (see :attr:`provides`).
        """
        return [self._to_five(p) for p in self.points(images, boxes, box_format)]

    def detect(self, images: np.ndarray | Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Run dlib's detector, then the shape predictor, on each image.

        Returns one dict per image: ``boxes`` (K, 4) float32 in the project's face-box
        convention (approximate, via :func:`dlib_box_to_face`), ``dlib_boxes`` (K, 4)
        as dlib drew them, ``scores`` (K,) float32 (HOG SVM score or CNN confidence),
        ``landmarks`` (K, 5, 2) float32 in RetinaFace order.
        """
        ims = _as_images(images)
        det = self._detector()
        out = []
        for im in ims:
            if self.detector == "hog":
                rects, scores, _ = det.run(im, self.upsample, self.threshold)
            else:
                found = [d for d in det(im, self.upsample) if d.confidence >= self.threshold]
                rects, scores = [d.rect for d in found], [d.confidence for d in found]
            raw = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], np.float32).reshape(-1, 4)
            lm = self.landmarks([im], [raw], box_format="dlib")[0]
            out.append(
                {
                    "boxes": dlib_box_to_face(raw),
                    "dlib_boxes": raw,
                    "scores": np.asarray(scores, np.float32).reshape(-1),
                    "landmarks": lm,
                }
            )
        return out
