"""Loader for CelebA in the wild (Liu et al., ICCV 2015): ``img_celeba`` with its boxes
and five landmarks, letterboxed for face detection.

Layout (the official release)::

    ROOT/img_celeba/000001.jpg ...
    ROOT/Anno/list_bbox_celeba.txt             count, header, ``name x_1 y_1 width height``
    ROOT/Anno/list_landmarks_celeba.txt        count, header, ``name`` + 10 ints (in the wild)
    ROOT/Anno/list_landmarks_align_celeba.txt  the same for img_align_celeba (not used here)
    ROOT/Anno/identity_CelebA.txt              optional: ``name identity``
    ROOT/Eval/list_eval_partition.txt          ``name split`` (0 train, 1 val, 2 test)

The two landmark files have the same header (``lefteye_x lefteye_y righteye_x ...
rightmouth_y``) but different frames: ``list_landmarks_celeba.txt`` is in the pixels
of the in-the-wild images, which the boxes of ``list_bbox_celeba.txt`` also use;
``list_landmarks_align_celeba.txt`` is in the 178x218 aligned crops (its first row,
``69 109 106 113 ...``, lies outside image 1's box ``95 71 226 313``). Pairing aligned
landmarks with in-the-wild boxes is silently wrong, so the loader reads the
in-the-wild file and refuses the aligned one -- by name, and by geometry: if the eye
midpoint of most rows lies outside the box, the file is refused as aligned
landmarks. (torchvision's CelebA makes the opposite pairing, aligned images with wild
boxes, and warns about it.) :func:`read_celeba_landmarks` reads either file.

Landmark order: CelebA's ``lefteye`` is the eye on the image's left (its x is smaller
than ``righteye``'s in the data), likewise ``leftmouth``; so the header order is
already RetinaFace's image-left-first order and is copied as is. Every landmark is
``visible`` (CelebA annotates all five).

One face per image; the box is x_1, y_1, x_1 + width, y_1 + height. ``label`` is the
identity when ``Anno/identity_CelebA.txt`` exists, else -1. ``split`` is ``train``,
``val``, ``test`` (from the partition file) or ``all`` (every boxed image, no
partition file needed); images keep the file order and ``limit`` takes the first N.
Note CelebA boxes are looser than WIDER's, so detection AP is not comparable between
the two.
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
    parse_int,
    points_to_original,
    read_lines,
)
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import DatasetError

BBOX_HEADER = ("image_id", "x_1", "y_1", "width", "height")
LANDMARK_HEADER = tuple(f"{name}_{axis}" for name in LANDMARK_NAMES for axis in ("x", "y"))
SPLITS = {"train": 0, "val": 1, "test": 2}
WILD_LANDMARKS = "list_landmarks_celeba.txt"
ALIGNED_LANDMARKS = "list_landmarks_align_celeba.txt"


def _without_id(header: tuple[str, ...]) -> tuple[str, ...]:
    return header[1:] if header[:1] == ("image_id",) else header


Rows = dict[str, tuple[int, list[int]]]


def _read_table(path: Path, header: tuple[str, ...] | None, fields: tuple[str, ...]) -> Rows:
    """Rows ``name v1 .. vk`` -> {name: (line number, values)}.

    With ``header`` the file starts with a count line and a header line (the Anno
    files); without, it is bare rows (identity and partition files).
    """
    lines = read_lines(path, "annotations")
    start, count = 0, None
    if header is not None:
        count = parse_int(lines[0].strip(), path, 1, "count")
        got = tuple(lines[1].split()) if len(lines) > 1 else ()
        if _without_id(got) != _without_id(header):  # accept the header with or without image_id
            raise line_error(path, 2, f"field 'header' must be {' '.join(header)!r}, got {' '.join(got)!r}")
        start = 2
    rows: Rows = {}
    for lineno, raw in enumerate(lines[start:], start + 1):
        tokens = raw.split()
        if not tokens:
            continue
        if len(tokens) != len(fields) + 1:
            problem = f"expected an image name and {len(fields)} integers, got {len(tokens)} fields"
            raise line_error(path, lineno, problem)
        name = tokens[0]
        if name in rows:
            raise line_error(path, lineno, f"field 'image_id' {name!r} repeats line {rows[name][0]}")
        rows[name] = (lineno, [parse_int(t, path, lineno, f) for t, f in zip(tokens[1:], fields, strict=True)])
    if count is not None and count != len(rows):
        kind = "truncated: " if count > len(rows) else ""
        raise line_error(path, 1, f"{kind}field 'count' says {count} rows but the file holds {len(rows)}")
    return rows


def read_celeba_boxes(path: PathLike) -> dict[str, tuple[int, np.ndarray]]:
    """``list_bbox_celeba.txt`` -> {name: (line, x1 y1 x2 y2 float64)}; negative sizes are errors."""
    path = Path(path)
    out = {}
    for name, (lineno, (x, y, w, h)) in _read_table(path, BBOX_HEADER, BBOX_HEADER[1:]).items():
        for f, v in (("width", w), ("height", h)):
            if v < 0:
                raise line_error(path, lineno, f"field '{f}' must be >= 0 (a box of negative size), got {v}")
        out[name] = (lineno, np.array([x, y, x + w, y + h], np.float64))
    return out


def read_celeba_landmarks(path: PathLike) -> dict[str, np.ndarray]:
    """Either landmark file (in the wild or aligned) -> {name: (5, 2) float64, image-left first}."""
    rows = _read_table(Path(path), LANDMARK_HEADER, LANDMARK_HEADER)
    return {name: np.asarray(v, np.float64).reshape(5, 2) for name, (_, v) in rows.items()}


def read_celeba_partition(path: PathLike) -> dict[str, int]:
    """``list_eval_partition.txt`` -> {name: 0 train / 1 val / 2 test}."""
    path = Path(path)
    out = {}
    for name, (lineno, (code,)) in _read_table(path, None, ("split",)).items():
        if code not in (0, 1, 2):
            raise line_error(path, lineno, f"field 'split' must be 0, 1 or 2, got {code}")
        out[name] = code
    return out


def read_celeba_identities(path: PathLike) -> dict[str, int]:
    """``identity_CelebA.txt`` -> {name: identity}."""
    return {name: v[0] for name, (_, v) in _read_table(Path(path), None, ("identity",)).items()}


def _landmarks_file(anno: Path, landmarks_file: str) -> Path:
    path = anno / landmarks_file
    if Path(landmarks_file).name == ALIGNED_LANDMARKS:
        raise DatasetError(
            f"{path}: field 'landmarks' refers to the aligned crops (img_align_celeba) and cannot be paired "
            f"with the in-the-wild boxes of img_celeba; use {WILD_LANDMARKS}"
        )
    if not path.is_file() and (anno / ALIGNED_LANDMARKS).is_file():
        raise DatasetError(
            f"{path}: field 'landmarks' cannot be read: the file does not exist (Anno/ holds only "
            f"{ALIGNED_LANDMARKS}, which refers to img_align_celeba, not to the img_celeba boxes)"
        )
    return path


def _check_wild(path: Path, names: list[str], boxes: dict, points: dict) -> None:
    """Refuse landmarks that do not sit in their boxes (the aligned file under another name)."""
    if not names:
        return
    box = np.stack([boxes[n][1] for n in names])
    mid = np.stack([points[n][:2].mean(axis=0) for n in names])
    inside = (mid[:, 0] >= box[:, 0]) & (mid[:, 0] <= box[:, 2]) & (mid[:, 1] >= box[:, 1]) & (mid[:, 1] <= box[:, 3])
    if inside.mean() < 0.5:
        raise DatasetError(
            f"{path}: field 'landmarks' does not match the in-the-wild boxes (the eyes of {int((~inside).sum())} of "
            f"{len(names)} images lie outside their box): is it the aligned file ({ALIGNED_LANDMARKS})?"
        )


def load_celeba(
    root: PathLike,
    split: str = "train",
    size: int = 192,
    limit: int | None = None,
    min_face: float = 0.0,
    *,
    pad_value: int = 0,
    landmarks_file: str = WILD_LANDMARKS,
) -> ArrayDataset:
    """CelebA in the wild: one face per image with box and five landmarks, letterboxed to ``size``.

    Instance columns: FACE_SCHEMA (all landmarks visible; label = identity if
    ``Anno/identity_CelebA.txt`` exists, else -1) and ``ignore`` (zero-size box or
    under ``min_face`` canvas pixels). See the module docstring for the layout and why
    the aligned landmark file is refused.
    """
    check_options(split, (*SPLITS, "all"), size, limit, min_face)
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"{base}: CelebA root folder does not exist")
    anno = base / "Anno"
    lm_path = _landmarks_file(anno, landmarks_file)
    boxes = read_celeba_boxes(anno / "list_bbox_celeba.txt")
    names = list(boxes)
    if split != "all":
        part_path = base / "Eval" / "list_eval_partition.txt"
        partition = read_celeba_partition(part_path)
        missing = [n for n in names if n not in partition]
        if missing:
            raise DatasetError(f"{part_path}: field 'split' is missing for {len(missing)} images, e.g. {missing[0]!r}")
        names = [n for n in names if partition[n] == SPLITS[split]]
    if not names:
        raise DatasetError(f"{base}: CelebA split {split!r} holds no images")
    names = names[:limit]
    points = read_celeba_landmarks(lm_path)
    missing = [n for n in names if n not in points]
    if missing:
        raise DatasetError(f"{lm_path}: field 'landmarks' is missing for {len(missing)} images, e.g. {missing[0]!r}")
    _check_wild(lm_path, names, boxes, points)
    id_path = anno / "identity_CelebA.txt"
    identities = read_celeba_identities(id_path) if id_path.is_file() else {}

    records = []
    for n in names:
        lineno, box = boxes[n]
        faces = empty_faces(1)
        faces["landmarks"][0] = points[n]
        faces["visible"][:] = True
        faces["label"][0] = identities.get(n, -1)
        faces["ignore"][0] = box[2] == box[0] or box[3] == box[1]
        records.append(FaceRecord(image=base / "img_celeba" / n, lineno=lineno, boxes=box[None], **faces))
    return build_dataset(
        records,
        anno / "list_bbox_celeba.txt",
        size,
        min_face,
        pad_value,
        {},
        {
            "name": "celeba",
            "source": str(base),
            "split": split,
            "identities": bool(identities),
            "conventions": "in-the-wild img_celeba with list_bbox_celeba.txt and list_landmarks_celeba.txt; "
            "boxes x_1,y_1,x_1+width,y_1+height letterboxed; CelebA lefteye = image-left eye, so the header "
            "order is RetinaFace's; all landmarks visible; label = identity or -1",
        },
    )


__all__ = [
    "boxes_to_original",
    "load_celeba",
    "points_to_original",
    "read_celeba_boxes",
    "read_celeba_identities",
    "read_celeba_landmarks",
    "read_celeba_partition",
]
