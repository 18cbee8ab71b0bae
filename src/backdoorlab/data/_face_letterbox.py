"""Shared pieces of the face-detection loaders (WIDER FACE, RetinaFace labels, CelebA).

Why a module of its own: the three releases hold images of every size, while an
:class:`~backdoorlab.data.arrays.ArrayDataset` needs one (N, H, W, 3) array. All three
loaders therefore *letterbox* each image into a ``size`` x ``size`` canvas the same way,
and must map boxes and landmarks with exactly the transform the pixels went through;
keeping that here makes the geometry one piece of code with one test. The text-file
error helpers live here too, so every malformed line reads the same way:
``<file> line <n>: field '<field>' <problem>``.

Letterbox geometry
==================

``scale = min(size / h, size / w)``; the image is resized by ``scale`` on both axes
(``cv2.resize`` with ``fx = fy = scale`` and INTER_AREA, so the resampling uses exactly
this factor even though the output size is rounded to whole pixels) and pasted at the
top-left of the canvas; the bottom/right rest is the constant ``pad_value``. A point
maps as ``x' = (x + 0.5) * scale - 0.5`` (pixel centres at integer coordinates, the
convention of :mod:`backdoorlab.data.instances` and of OpenCV's resize), and back with
:func:`points_to_original` / :func:`boxes_to_original` given the per-image ``scale``
annotation. Box corners use the same map, so a box's width scales by exactly ``scale``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.instances import FACE_SCHEMA, InstanceTable
from backdoorlab.errors import DatasetError

PathLike = Path | str

#: RetinaFace landmark order, named as CelebA's header names them (image-left first).
LANDMARK_NAMES = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")

#: Columns every face loader adds to :data:`FACE_SCHEMA`: ``ignore`` marks faces that
#: evaluation should neither count as missed nor as false positives (WIDER's invalid
#: faces, degenerate boxes, faces below ``min_face``).
COMMON_SCHEMA: dict[str, tuple[str, tuple[int, ...]]] = {**FACE_SCHEMA, "ignore": ("bool", ())}


# ------------------------------------------------------------------------- errors
def line_error(path: PathLike, lineno: int, problem: str) -> DatasetError:
    """``<file> line <n>: <problem>`` -- the one message format of the text parsers."""
    return DatasetError(f"{path} line {lineno}: {problem}")


def read_lines(path: Path, what: str) -> list[str]:
    """The lines of a text annotation file; missing or undecodable is a DatasetError naming it."""
    if not path.is_file():
        raise DatasetError(f"{path}: field '{what}' cannot be read: the file does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: field '{what}' cannot be read ({exc})") from exc
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # trailing blank lines are harmless
        lines.pop()
    if not lines:
        raise DatasetError(f"{path}: field '{what}' cannot be read: the file is empty")
    return lines


def parse_int(token: str, path: PathLike, lineno: int, name: str) -> int:
    """One integer field; ``'x'`` -> ``<file> line 7: field 'h' must be an integer, got 'x'``."""
    try:
        return int(token)
    except ValueError:
        raise line_error(path, lineno, f"field '{name}' must be an integer, got {token!r}") from None


def parse_float(token: str, path: PathLike, lineno: int, name: str) -> float:
    """One finite real field."""
    try:
        value = float(token)
    except ValueError:
        raise line_error(path, lineno, f"field '{name}' must be a number, got {token!r}") from None
    if not math.isfinite(value):
        raise line_error(path, lineno, f"field '{name}' must be finite, got {token!r}")
    return value


def check_options(split: str, splits: Sequence[str], size: int, limit: int | None, min_face: float) -> None:
    """The options every face loader shares, checked before any file is opened."""
    if split not in splits:
        raise DatasetError(f"unknown split {split!r}; valid splits: {', '.join(splits)}")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise DatasetError(f"size must be a positive integer (the square canvas side), got {size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 1):
        raise DatasetError(f"limit must be a positive integer or None, got {limit!r}")
    if not isinstance(min_face, int | float) or min_face < 0:
        raise DatasetError(f"min_face must be a non-negative number of canvas pixels, got {min_face!r}")


# ------------------------------------------------------------------------ images
def read_image_rgb(path: Path, listed_in: PathLike, lineno: int) -> np.ndarray:
    """Decode one image as RGB uint8; missing, undecodable or cut-short files are errors.

    A JPEG cut short still decodes (libjpeg fills the rest with grey and only warns),
    so a JPEG whose last bytes hold no end-of-image marker is refused as truncated.
    """
    where = f"(listed in {listed_in} line {lineno})"
    try:
        data = path.read_bytes()
    except OSError:
        raise DatasetError(f"{path}: field 'image' cannot be read: the file does not exist {where}") from None
    # FF D9 cannot occur inside entropy-coded data (an FF there is stuffed with 00), so
    # the marker near the end is a safe test; the tail allows for padding after it
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-256:]:
        raise DatasetError(f"{path}: field 'image' is a truncated JPEG (no end-of-image marker) {where}")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"{path}: field 'image' cannot be decoded: not an image {where}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def letterbox(image: np.ndarray, size: int, pad_value: int = 0) -> tuple[np.ndarray, float]:
    """Fit ``image`` (H, W, 3) into a ``size`` x ``size`` canvas; returns (canvas, scale).

    See the module docstring for the geometry.
    """
    h, w = image.shape[:2]
    scale = min(size / h, size / w)
    new_w, new_h = min(size, max(1, round(w * scale))), min(size, max(1, round(h * scale)))
    if (new_w, new_h) == (round(w * scale), round(h * scale)):
        # dsize left to OpenCV: it then resamples with exactly fx = fy = scale
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    else:  # a sliver of an image (under one output pixel on an axis): size forced
        small = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    canvas = np.full((size, size, 3), pad_value, np.uint8)
    canvas[: small.shape[0], : small.shape[1]] = small.reshape(small.shape[0], small.shape[1], -1)
    return canvas, float(scale)


def points_to_canvas(points: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
    """(..., 2) original-image pixels -> canvas pixels (``(p + 0.5) * scale - 0.5``)."""
    return ((np.asarray(points, np.float64) + 0.5) * scale - 0.5).astype(np.float32)


def points_to_original(points: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
    """(..., 2) canvas pixels -> original-image pixels; ``scale`` is the image's ``scale`` annotation."""
    return ((np.asarray(points, np.float64) + 0.5) / scale - 0.5).astype(np.float32)


def boxes_to_canvas(boxes: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
    """(..., 4) x1, y1, x2, y2 original pixels -> canvas pixels (corners mapped as points)."""
    b = np.asarray(boxes, np.float64)
    return points_to_canvas(b.reshape(*b.shape[:-1], 2, 2), scale).reshape(b.shape)


def boxes_to_original(boxes: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
    """(..., 4) canvas boxes -> original-image pixels (inverse of :func:`boxes_to_canvas`)."""
    b = np.asarray(boxes, np.float64)
    return points_to_original(b.reshape(*b.shape[:-1], 2, 2), scale).reshape(b.shape)


# ----------------------------------------------------------------------- records
@dataclass
class FaceRecord:
    """One image as parsed from an annotation file, in original-image pixels.

    ``boxes`` (k, 4) x1, y1, x2, y2; ``landmarks`` (k, 5, 2); ``visible`` (k, 5);
    ``label`` (k,); ``ignore`` (k,) before the ``min_face`` rule; ``extra`` holds the
    release's own columns (each with k rows).
    """

    image: Path
    lineno: int
    boxes: np.ndarray
    landmarks: np.ndarray
    visible: np.ndarray
    label: np.ndarray
    ignore: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def empty_faces(k: int) -> dict[str, np.ndarray]:
    """Zero landmarks, none visible, unknown labels, nothing ignored: for ``k`` faces."""
    return {
        "landmarks": np.zeros((k, 5, 2), np.float32),
        "visible": np.zeros((k, 5), bool),
        "label": np.full(k, -1, np.int64),
        "ignore": np.zeros(k, bool),
    }


def build_dataset(
    records: Sequence[FaceRecord],
    listed_in: PathLike,
    size: int,
    min_face: float,
    pad_value: int,
    extra_schema: dict[str, tuple[str, tuple[int, ...]]],
    meta: dict[str, Any],
) -> ArrayDataset:
    """Read and letterbox every record's image and map its faces into the canvas.

    ``min_face``: a face whose box is narrower or shorter than this many canvas pixels
    stays in the table but gets ``ignore = True`` (WIDER's evaluation ignores such
    faces rather than counting them as missed).
    """
    n = len(records)
    images = np.empty((n, size, size, 3), np.uint8)
    scales = np.empty(n, np.float32)
    orig = np.empty((n, 2), np.int64)
    per_image: list[dict[str, np.ndarray]] = []
    for i, rec in enumerate(records):
        img = read_image_rgb(rec.image, listed_in, rec.lineno)
        orig[i] = img.shape[:2]
        images[i], scale = letterbox(img, size, pad_value)
        scales[i] = scale
        boxes = boxes_to_canvas(rec.boxes, scale)
        landmarks = np.where(rec.visible[..., None], points_to_canvas(rec.landmarks, scale), 0.0)
        small = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) < min_face
        per_image.append(
            {
                "boxes": boxes,
                "landmarks": landmarks,
                "visible": rec.visible,
                "label": rec.label,
                "ignore": rec.ignore | small,
                **rec.extra,
            }
        )
    table = InstanceTable.from_lists(per_image, {**COMMON_SCHEMA, **extra_schema})
    meta = {
        **meta,
        "size": int(size),
        "min_face": min_face,
        "pad_value": int(pad_value),
        "image_paths": [str(r.image) for r in records],
        "letterbox": "scale = min(size/h, size/w), image at the top-left, pad bottom/right; "
        "x' = (x + 0.5) * scale - 0.5 (pixel centres at integers); annotations 'scale' and "
        "'orig_size' (h, w) map predictions back (boxes_to_original / points_to_original)",
    }
    return ArrayDataset(images, {"scale": scales, "orig_size": orig}, meta, instances=table)


__all__ = [
    "COMMON_SCHEMA",
    "LANDMARK_NAMES",
    "FaceRecord",
    "boxes_to_canvas",
    "boxes_to_original",
    "build_dataset",
    "letterbox",
    "points_to_canvas",
    "points_to_original",
    "read_image_rgb",
]
