"""Loaders for WIDER FACE (Yang et al., CVPR 2016): its own box annotations, and the
five-landmark annotations RetinaFace (Deng et al., CVPR 2020) published for its images.

Both return a letterboxed :class:`~backdoorlab.data.arrays.ArrayDataset` whose
instance table follows :data:`~backdoorlab.data.instances.FACE_SCHEMA` (boxes x1, y1,
x2, y2 and landmarks in canvas pixels), plus an ``ignore`` bool column, and the dense
annotations ``scale`` (N,) f32 and ``orig_size`` (N, 2) int64 (h, w) that map
predictions back to the original image (geometry in
:mod:`backdoorlab.data._face_letterbox`). Images keep the annotation file's order;
``limit`` takes the first N. ``label`` is -1 (WIDER has no identities).

WIDER FACE original annotations (``load_widerface``)
=====================================================

Layout::

    ROOT/wider_face_split/wider_face_{train,val}_bbx_gt.txt
    ROOT/WIDER_{train,val}/images/<event>/<name>.jpg

Per image: a line with the path relative to ``images/``, a line with the face count,
then one line per face of ten integers ``x1 y1 w h blur expression illumination
invalid occlusion pose``. Quirk of the release: an image with count 0 is still
followed by one line of ten zeros; it is read and dropped (a file without that line is
accepted too, but a non-zero line after a 0 count is an error).

Boxes become x1, y1, x1 + w, y1 + h, as published (no half-pixel shift). The release
has boxes of zero or negative size, mostly flagged ``invalid``; they are **kept** so
the face count per image matches the release, with ``invalid = True`` when either the
flag is set or w <= 0 or h <= 0, and ``ignore = invalid`` (or smaller than
``min_face``). The attributes are kept as int8 columns ``blur`` (0 clear, 1 normal,
2 heavy), ``expression``, ``illumination``, ``occlusion`` (0 none, 1 partial, 2 heavy)
and ``pose`` (0 typical, 1 atypical). WIDER has no landmarks: all zero, none visible.

RetinaFace landmark annotations (``load_widerface_retinaface``)
================================================================

Layout (the ``retinaface_gt`` release)::

    ROOT/{train,val,test}/label.txt
    ROOT/{train,val,test}/images/<event>/<name>.jpg

``# <path>`` starts an image; each following line is one face. The train file has 20
numbers per face: ``x y w h``, five ``lx ly flag`` triples in RetinaFace order (left
eye, right eye, nose, left mouth corner, right mouth corner, image-left first) and a
final blur/quality score. The val/test files have only ``x y w h`` (4 numbers). Flag
-1 means not annotated (coordinates -1), 0 visible, 1 occluded but annotated; so
``visible = flag in {0, 1}`` and a column ``occluded`` (M, 5) bool holds flag 1. The
last number goes to ``blur_score`` f32 (NaN on 4-number lines). A box of negative
width or height is an error; one of zero size is kept with ``ignore = True``.

A file cut at a line boundary cannot be told from a shorter one (there is no count);
a line cut short has the wrong number of values and is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backdoorlab.data._face_letterbox import (
    LANDMARK_NAMES,
    FaceRecord,
    PathLike,
    boxes_to_original,
    build_dataset,
    check_options,
    empty_faces,
    line_error,
    parse_float,
    parse_int,
    points_to_original,
    read_lines,
)
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import DatasetError

WIDER_FIELDS = ("x1", "y1", "w", "h", "blur", "expression", "illumination", "invalid", "occlusion", "pose")
WIDER_ATTRIBUTES = ("blur", "expression", "illumination", "occlusion", "pose")
WIDER_SCHEMA: dict[str, tuple[str, tuple[int, ...]]] = {
    "invalid": ("bool", ()),
    **{name: ("int8", ()) for name in WIDER_ATTRIBUTES},
}
RETINAFACE_FIELDS = (
    "x",
    "y",
    "w",
    "h",
    *[f"{name}_{part}" for name in LANDMARK_NAMES for part in ("x", "y", "flag")],
    "blur",
)
RETINAFACE_SCHEMA: dict[str, tuple[str, tuple[int, ...]]] = {
    "occluded": ("bool", (5,)),
    "blur_score": ("float32", ()),
}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# ------------------------------------------------------------------ WIDER FACE
def _wider_face(tokens: list[str], path: Path, lineno: int) -> list[int]:
    if len(tokens) != len(WIDER_FIELDS):
        raise line_error(
            path,
            lineno,
            f"expected {len(WIDER_FIELDS)} integers ({' '.join(WIDER_FIELDS)}), got {len(tokens)}",
        )
    values = [parse_int(t, path, lineno, name) for t, name in zip(tokens, WIDER_FIELDS, strict=True)]
    for name, v in zip(WIDER_FIELDS[4:], values[4:], strict=True):
        ok = v in (0, 1) if name == "invalid" else 0 <= v <= 127
        if not ok:
            want = "0 or 1" if name == "invalid" else "a small non-negative code"
            raise line_error(path, lineno, f"field '{name}' must be {want}, got {v}")
    return values


def parse_wider_annotations(path: PathLike, image_dir: PathLike) -> list[FaceRecord]:
    """Parse ``wider_face_{split}_bbx_gt.txt`` into records (original-image pixels)."""
    path, image_dir = Path(path), Path(image_dir)
    lines = read_lines(path, "annotations")
    records: list[FaceRecord] = []
    i = 0
    while i < len(lines):
        name_no = i + 1
        name = lines[i].strip()
        if len(name.split()) != 1 or not name.lower().endswith(_IMAGE_SUFFIXES):
            raise line_error(path, name_no, f"field 'image' must be an image path (…/name.jpg), got {name!r}")
        i += 1
        if i >= len(lines):
            raise line_error(path, name_no, f"truncated: image {name!r} has no face-count line after it")
        count_no = i + 1
        count = parse_int(lines[i].strip(), path, count_no, "count")
        if count < 0:
            raise line_error(path, count_no, f"field 'count' must be >= 0, got {count}")
        i += 1
        rows: list[list[int]] = []
        # the release writes one all-zero face line after a 0 count
        if count == 0 and i < len(lines) and len(lines[i].split()) == len(WIDER_FIELDS):
            values = _wider_face(lines[i].split(), path, i + 1)
            if any(values):
                raise line_error(path, i + 1, "a face count of 0 must be followed by the all-zero line, got faces")
            i += 1
        for k in range(count):
            if i >= len(lines):
                raise line_error(
                    path,
                    count_no,
                    f"truncated: field 'count' says {count} faces for {name!r} but the file ends after {k}",
                )
            tokens = lines[i].split()
            if len(tokens) == 1 and tokens[0].lower().endswith(_IMAGE_SUFFIXES):
                raise line_error(
                    path,
                    count_no,
                    f"truncated record: field 'count' says {count} faces for {name!r} but only {k} face "
                    f"line(s) follow before the next image on line {i + 1}",
                )
            rows.append(_wider_face(tokens, path, i + 1))
            i += 1
        arr = np.asarray(rows, np.float64).reshape(-1, len(WIDER_FIELDS))
        x1, y1, w, h = arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]
        invalid = (arr[:, 7] == 1) | (w <= 0) | (h <= 0)
        faces = empty_faces(len(arr))
        faces["ignore"] = invalid.copy()
        records.append(
            FaceRecord(
                image=image_dir / name,
                lineno=name_no,
                boxes=np.stack([x1, y1, x1 + w, y1 + h], axis=1),
                extra={
                    "invalid": invalid,
                    **{a: arr[:, WIDER_FIELDS.index(a)].astype(np.int8) for a in WIDER_ATTRIBUTES},
                },
                **faces,
            )
        )
    return records


def load_widerface(
    root: PathLike,
    split: str = "train",
    size: int = 192,
    limit: int | None = None,
    min_face: float = 0.0,
    *,
    pad_value: int = 0,
) -> ArrayDataset:
    """WIDER FACE ``train`` or ``val`` with its original box annotations, letterboxed to ``size``.

    Instance columns: FACE_SCHEMA (landmarks zero, none visible, label -1), ``ignore``,
    ``invalid`` bool and the attributes ``blur``, ``expression``, ``illumination``,
    ``occlusion``, ``pose`` (int8). ``min_face`` (canvas pixels) marks smaller faces
    ``ignore`` instead of dropping them. See the module docstring for the format.
    """
    check_options(split, ("train", "val"), size, limit, min_face)
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"{base}: WIDER FACE root folder does not exist")
    ann = base / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
    records = parse_wider_annotations(ann, base / f"WIDER_{split}" / "images")
    records = records[:limit]
    return build_dataset(
        records,
        ann,
        size,
        min_face,
        pad_value,
        WIDER_SCHEMA,
        {
            "name": "widerface",
            "source": str(base),
            "split": split,
            "conventions": "boxes x1,y1,x1+w,y1+h as published, letterboxed; no landmarks (all invisible); "
            "invalid = flag or w<=0 or h<=0, kept with ignore=True; label -1",
        },
    )


# ------------------------------------------------------------------ RetinaFace
def parse_retinaface_labels(path: PathLike, image_dir: PathLike) -> list[FaceRecord]:
    """Parse a RetinaFace ``label.txt`` (20 numbers per face in train, 4 in val/test)."""
    path, image_dir = Path(path), Path(image_dir)
    lines = read_lines(path, "annotations")
    heads: list[tuple[str, int, list[list[float]]]] = []
    for lineno, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text:
            continue
        if text.startswith("#"):
            name = text[1:].strip()
            if not name:
                raise line_error(path, lineno, "field 'image' is empty after '#'")
            heads.append((name, lineno, []))
            continue
        if not heads:
            raise line_error(path, lineno, "a face line comes before any '# <image path>' line")
        tokens = text.split()
        if len(tokens) not in (4, len(RETINAFACE_FIELDS)):
            raise line_error(path, lineno, f"expected 4 or {len(RETINAFACE_FIELDS)} numbers, got {len(tokens)}")
        values = [parse_float(t, path, lineno, f) for t, f in zip(tokens, RETINAFACE_FIELDS, strict=False)]
        for f, v in zip(("w", "h"), values[2:4], strict=True):
            if v < 0:
                raise line_error(path, lineno, f"field '{f}' must be >= 0 (a box of negative size), got {v:g}")
        for k, name in enumerate(LANDMARK_NAMES):
            if len(values) > 4 and values[6 + 3 * k] not in (-1.0, 0.0, 1.0):
                flag = values[6 + 3 * k]
                raise line_error(path, lineno, f"field '{name}_flag' must be -1, 0 or 1, got {flag:g}")
        heads[-1][2].append(values)

    records: list[FaceRecord] = []
    for name, lineno, rows in heads:
        k = len(rows)
        faces = empty_faces(k)
        boxes = np.zeros((k, 4))
        occluded = np.zeros((k, 5), bool)
        blur = np.full(k, np.nan, np.float32)
        for j, v in enumerate(rows):
            boxes[j] = (v[0], v[1], v[0] + v[2], v[1] + v[3])
            faces["ignore"][j] = v[2] == 0 or v[3] == 0
            if len(v) > 4:
                triples = np.asarray(v[4:19]).reshape(5, 3)
                faces["landmarks"][j] = triples[:, :2]
                faces["visible"][j] = triples[:, 2] >= 0
                occluded[j] = triples[:, 2] == 1
                blur[j] = v[19]
        records.append(
            FaceRecord(
                image=image_dir / name,
                lineno=lineno,
                boxes=boxes,
                extra={"occluded": occluded, "blur_score": blur},
                **faces,
            )
        )
    return records


def load_widerface_retinaface(
    root: PathLike,
    split: str = "train",
    size: int = 192,
    limit: int | None = None,
    min_face: float = 0.0,
    *,
    pad_value: int = 0,
) -> ArrayDataset:
    """WIDER FACE images with RetinaFace's ``label.txt`` (five landmarks in train), letterboxed.

    Instance columns: FACE_SCHEMA (``visible`` = landmark annotated, label -1),
    ``ignore``, ``occluded`` (M, 5) bool and ``blur_score`` f32. See the module docstring.
    """
    check_options(split, ("train", "val", "test"), size, limit, min_face)
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"{base}: RetinaFace WIDER annotation root folder does not exist")
    ann = base / split / "label.txt"
    records = parse_retinaface_labels(ann, base / split / "images")[:limit]
    return build_dataset(
        records,
        ann,
        size,
        min_face,
        pad_value,
        RETINAFACE_SCHEMA,
        {
            "name": "widerface-retinaface",
            "source": str(base),
            "split": split,
            "conventions": "boxes x,y,x+w,y+h letterboxed; landmarks RetinaFace order (image-left first); "
            "visible = flag in {0,1}, occluded = flag 1; zero-size boxes ignore=True; label -1",
        },
    )


__all__ = [
    "boxes_to_original",
    "load_widerface",
    "load_widerface_retinaface",
    "parse_retinaface_labels",
    "parse_wider_annotations",
    "points_to_original",
]
