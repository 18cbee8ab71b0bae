"""Writers of tiny face-detection releases in the exact published layouts, for the loader tests.

* WIDER FACE: ``wider_face_split/wider_face_{split}_bbx_gt.txt`` (path line, count
  line, ten integers per face, the all-zero line after a 0 count) and
  ``WIDER_{split}/images/<event>/<name>.jpg``.
* RetinaFace labels: ``{split}/label.txt`` (``# path`` lines, 20 numbers per face in
  train with ``-1.0`` for missing landmarks, 4 numbers in val) and
  ``{split}/images/...``.
* CelebA: ``img_celeba/NNNNNN.jpg``, ``Anno/list_bbox_celeba.txt`` and the two landmark
  files (count line, header line, padded columns as in the release),
  ``Anno/identity_CelebA.txt`` and ``Eval/list_eval_partition.txt``.

Images are real JPEGs written with OpenCV: a dark noisy background with a white
square drawn at every face box, so tests can check where the pixels went.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

LANDMARK_HEADER = (
    "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
)


def write_jpeg(path: Path, hw: tuple[int, int], squares: Sequence[Sequence[float]] = (), seed: int = 0) -> Path:
    """An (h, w) JPEG, dark background, one white filled square per (x, y, w, h) box."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 30, size=(*hw, 3), dtype=np.uint8)
    for x, y, w, h in squares:
        if w > 0 and h > 0:
            img[int(y) : int(y + h), int(x) : int(x + w)] = 255
    assert cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return path


# ------------------------------------------------------------------ WIDER FACE
@dataclass
class WiderImage:
    """One image: its path under ``images/``, size and faces as the ten published integers."""

    name: str
    hw: tuple[int, int]
    faces: list[tuple[int, ...]] = field(default_factory=list)
    write_image: bool = True


def wider_face(x: int, y: int, w: int, h: int, *, blur=0, expression=0, illumination=0, invalid=0, occlusion=0, pose=0):
    """The ten integers of one face line, in the file's column order."""
    return (x, y, w, h, blur, expression, illumination, invalid, occlusion, pose)


def wider_text(images: Sequence[WiderImage], *, zero_line: bool = True) -> str:
    """The ``_bbx_gt.txt`` text; a 0-face image gets the release's all-zero line."""
    out = []
    for im in images:
        out += [im.name, str(len(im.faces))]
        out += [" ".join(str(v) for v in f) + " " for f in im.faces]  # the release ends face lines with a space
        if not im.faces and zero_line:
            out.append("0 0 0 0 0 0 0 0 0 0 ")
    return "\n".join(out) + "\n"


def write_wider(root: Path, split: str, images: Sequence[WiderImage], *, zero_line: bool = True) -> Path:
    """Write the split's images and annotation file; returns the annotation file."""
    for k, im in enumerate(images):
        if im.write_image:
            write_jpeg(root / f"WIDER_{split}" / "images" / im.name, im.hw, [f[:4] for f in im.faces], seed=k)
    ann = root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(wider_text(images, zero_line=zero_line))
    return ann


# ------------------------------------------------------------------ RetinaFace
@dataclass
class RetinaImage:
    """One image of ``label.txt``: rows of 4 or 20 numbers (already in file order)."""

    name: str
    hw: tuple[int, int]
    faces: list[Sequence[float]] = field(default_factory=list)


def retina_face(box: Sequence[float], points: Sequence[Sequence[float]] | None, flags=(0, 0, 0, 0, 0), blur=0.82):
    """20 numbers: box, five (x, y, flag) (``-1`` triples when ``points`` is None), blur."""
    row = list(box)
    for k in range(5):
        if points is None or flags[k] == -1:
            row += [-1.0, -1.0, -1.0]
        else:
            row += [points[k][0], points[k][1], float(flags[k])]
    return [*row, blur if points is not None else -1.0]


def _row_text(row: Sequence[float]) -> str:
    """``449 330 122 149 488.906 373.643 0.0 ... 0.82``: integer box, then Python float reprs."""
    return " ".join([*(f"{v:g}" for v in row[:4]), *(repr(float(v)) for v in row[4:])])


def retina_text(images: Sequence[RetinaImage]) -> str:
    out = []
    for im in images:
        out.append(f"# {im.name}")
        out += [_row_text(f) for f in im.faces]
    return "\n".join(out) + "\n"


def write_retinaface(root: Path, split: str, images: Sequence[RetinaImage]) -> Path:
    for k, im in enumerate(images):
        write_jpeg(root / split / "images" / im.name, im.hw, [f[:4] for f in im.faces], seed=k)
    ann = root / split / "label.txt"
    ann.write_text(retina_text(images))
    return ann


# ------------------------------------------------------------------ CelebA
@dataclass
class CelebaImage:
    """One in-the-wild image: box (x, y, w, h), ten landmark ints (file order), split code, identity."""

    name: str
    hw: tuple[int, int]
    box: tuple[int, int, int, int]
    landmarks: tuple[int, ...]
    split: int = 0
    identity: int = 1


def _table(rows: Sequence[Sequence[object]], header: str | None) -> str:
    lines = [] if header is None else [str(len(rows)), header]
    for r in rows:  # the release pads the columns with spaces
        lines.append(f"{r[0]:<10}" + "".join(f" {v:>4}" for v in r[1:]))
    return "\n".join(lines) + "\n"


def write_celeba(
    root: Path,
    images: Sequence[CelebaImage],
    *,
    identities: bool = True,
    partition: bool = True,
    wild_landmarks: bool = True,
    aligned_landmarks: bool = True,
) -> Path:
    """The in-the-wild CelebA layout; the aligned landmark file holds plausible 178x218 crop coordinates."""
    for k, im in enumerate(images):
        write_jpeg(root / "img_celeba" / im.name, im.hw, [im.box], seed=k)
    anno = root / "Anno"
    anno.mkdir(parents=True, exist_ok=True)
    (anno / "list_bbox_celeba.txt").write_text(
        _table([(im.name, *im.box) for im in images], "image_id x_1 y_1 width height")
    )
    if wild_landmarks:
        (anno / "list_landmarks_celeba.txt").write_text(
            _table([(im.name, *im.landmarks) for im in images], LANDMARK_HEADER)
        )
    if aligned_landmarks:
        aligned = (69, 109, 106, 113, 77, 142, 73, 152, 108, 154)
        (anno / "list_landmarks_align_celeba.txt").write_text(
            _table([(im.name, *aligned) for im in images], LANDMARK_HEADER)
        )
    if identities:
        (anno / "identity_CelebA.txt").write_text("".join(f"{im.name} {im.identity}\n" for im in images))
    if partition:
        (root / "Eval").mkdir(exist_ok=True)
        (root / "Eval" / "list_eval_partition.txt").write_text("".join(f"{im.name} {im.split}\n" for im in images))
    return root


def truncate_bytes(path: Path, fraction: float = 0.6) -> Path:
    """Cut a file to ``fraction`` of its length, like an interrupted download."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path
