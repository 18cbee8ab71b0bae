"""Loaders for the open-set face-recognition data: CASIA-WebFace (training identities),
LFW with its View 2 pairs (verification), FFHQ (unlabelled faces for embedding
translators) and our own aligned-crop folders.

Every loader returns an :class:`~backdoorlab.data.arrays.ArrayDataset` of RGB uint8
images, ``size`` x ``size`` (decoded with Pillow, ``Image.open(...).convert("RGB")``,
after ``Image.verify``), resized with OpenCV's INTER_AREA (pixel-area averaging when
shrinking, as every other real loader does; when enlarging OpenCV's INTER_AREA falls
back to a bilinear rule). Nothing is aligned here: the CASIA-WebFace and LFW releases
are already 250x250 crops centred on the face, and FFHQ is aligned by its authors; the
whole image is resized (no crop). A missing, truncated or undecodable image is a
:class:`~backdoorlab.errors.DatasetError` naming the file (and, for LFW, the pairs line
that needs it); a malformed text line names the file, the line and the field.

Pickles are refused
===================

insightface ships its verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``)
as Python pickles, and unpickling runs whatever code the file names. No loader here
unpickles anything: :func:`refuse_pickle` turns away any path ending in ``.bin``,
``.pkl`` or ``.pickle`` and any file that starts with a pickle protocol 2-5 header
(``\\x80\\x02`` .. ``\\x80\\x05``) -- a root, a ``pairs.txt`` or an image -- with a
DatasetError that says to export the images as a folder instead.

CASIA-WebFace (``load_casia_webface``)
======================================

Layout (the release: 10,575 identity folders, 494,414 250x250 JPEGs)::

    ROOT/0000045/001.jpg
    ROOT/0000045/002.jpg ...
    ROOT/0000099/001.jpg ...

(``ROOT/CASIA-WebFace/...`` is accepted too.) A folder's name is the identity;
folders sort numerically when every name is all digits (else as text), images by file
name the same way. Hidden entries (``.``-prefixed, e.g. macOS ``._001.jpg``) and
files that are not ``.jpg``/``.jpeg``/``.png`` are skipped. Identities with fewer
than ``min_images`` images are dropped (``meta["dropped_identities"]`` counts them),
then the first ``max_identities`` are kept and the first ``limit_per_identity``
images of each. Dense annotations ``label`` and ``identity`` (int64, 0..K-1 in
identity order, equal), ``meta["identities"]`` the folder names (label k is
``identities[k]``).

LFW (``load_lfw``, ``read_lfw_pairs``)
======================================

Layout::

    ROOT/lfw-deepfunneled/Aaron_Eckhart/Aaron_Eckhart_0001.jpg   (or ROOT/lfw/...)
    ROOT/pairs.txt                                              (or inside the image folder)

``pairs.txt`` (View 2): a header ``10 300`` (folds, pairs per class per fold), then
per fold 300 matched lines ``name n1 n2`` followed by 300 mismatched lines ``name1
n1 name2 n2``; the release separates fields with tabs, any whitespace is accepted.
Image numbers are 1-based: pair ``Aaron_Eckhart 1 ...`` is
``Aaron_Eckhart/Aaron_Eckhart_0001.jpg``. A one-number header (View 1's
``pairsDevTrain.txt`` / ``pairsDevTest.txt``: ``1100`` then 1100 matched and 1100
mismatched lines) reads as one fold. Only the images the pairs name are loaded, each
once, sorted by (name, number); ``label``/``identity`` index ``meta["identities"]``
(the people in the pairs, sorted) and ``image_number`` is LFW's number. The returned
:class:`LfwPairs` holds ``a_row``/``b_row``, the rows of the two images in the dataset.

FFHQ (``load_ffhq``)
====================

``ROOT/00000/00000.png`` .. ``ROOT/69000/69999.png`` (the release's thousands
folders) or a flat folder of PNGs/JPEGs; images sort by file name, ``limit`` takes the
first N. Unlabelled: ``label`` is -1 for every image (``meta["labelled"]`` False).
Point ROOT at ``images1024x1024/`` or ``thumbnails128x128/``.

Aligned crops (``export_aligned_crops``, ``load_aligned_crops``)
================================================================

Our own layout, so aligned crops made once can be reused by any tool::

    ROOT/identities.txt            one identity name a line; line k (from 0) is label k
    ROOT/<identity>/<index>.png    index = the image's row in the exported dataset, 5+ digits

``identities.txt`` is written last (a folder without it is an interrupted export).
Reading sorts images by (index, identity line), which restores the exported order
exactly; PNG is lossless, so a round trip gives the same bytes. Crops from elsewhere
may number images per identity (``00000.png`` in every folder); they then interleave
by number, deterministically.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from backdoorlab.data._face_letterbox import line_error, parse_int, read_lines
from backdoorlab.data._realio import field_error, resize_area
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import DatasetError

PathLike = Path | str

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle")
#: PROTO opcode and protocol number: what every pickle of protocol 2..5 starts with
PICKLE_HEADERS = tuple(bytes((0x80, protocol)) for protocol in range(2, 6))
#: formats Pillow may decode (a smaller attack surface than every plugin it has)
DECODE_FORMATS = ("JPEG", "PNG")
LFW_IMAGE_FOLDERS = ("lfw-deepfunneled", "lfw")
CASIA_FOLDERS = ("CASIA-WebFace",)
MATCHED_FIELDS = ("name", "n1", "n2")
MISMATCHED_FIELDS = ("name1", "n1", "name2", "n2")
IDENTITIES_FILE = "identities.txt"
RESIZE_NOTE = (
    "whole image resized to size x size with OpenCV INTER_AREA (area averaging when shrinking), "
    "no alignment and no crop; decoded with Pillow as RGB"
)


# ------------------------------------------------------------------------ pickles
def _pickle_message(path: Path) -> str:
    return (
        f"{path} is a pickle (insightface verification .bin); backdoorlab never unpickles data files: "
        "export the images as a folder (e.g. lfw-deepfunneled/<name>/<name>_0001.jpg with pairs.txt for "
        f"'lfw', or <identity>/<index>.png with {IDENTITIES_FILE} for 'aligned-crops') and load that"
    )


def is_pickle_header(data: bytes) -> bool:
    """True when ``data`` starts like a pickle of protocol 2..5 (``\\x80\\x02`` .. ``\\x80\\x05``)."""
    return data[:2] in PICKLE_HEADERS


def refuse_pickle(path: PathLike) -> Path:
    """Return ``path`` as a Path, or raise if it is (or is named like) a pickle.

    Refused: a file or missing path whose name ends in ``.bin``, ``.pkl`` or
    ``.pickle``, and any file whose first two bytes are a pickle protocol 2..5
    header. Only those two bytes are read; nothing is ever unpickled. A folder is
    returned as is whatever its name (folders are never unpickled).
    """
    p = Path(path)
    if p.is_dir():
        return p
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise DatasetError(_pickle_message(p))
    if p.is_file():
        try:
            with p.open("rb") as fh:
                head = fh.read(2)
        except OSError:
            return p  # unreadable: the caller's own read reports it
        if is_pickle_header(head):
            raise DatasetError(_pickle_message(p))
    return p


# ------------------------------------------------------------------------- images
def read_face_image(path: Path, where: str = "") -> np.ndarray:
    """Decode one JPEG or PNG as RGB uint8 (H, W, 3) with Pillow; every failure is a DatasetError.

    ``where`` (e.g. "referenced by ... line 7") is added to the message. A JPEG
    without its end-of-image marker is refused as truncated even if Pillow was told
    elsewhere to load truncated images (``ImageFile.LOAD_TRUNCATED_IMAGES``).
    """
    note = f" ({where})" if where else ""
    if not path.is_file():
        raise field_error(path, "image", f"cannot be read: the file does not exist{note}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise field_error(path, "image", f"cannot be read ({exc}){note}") from exc
    if is_pickle_header(data):
        raise DatasetError(_pickle_message(path) + note)
    # FF D9 cannot occur inside entropy-coded data, so its absence near the end means a cut file
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-256:]:
        raise field_error(path, "image", f"is a truncated JPEG (no end-of-image marker){note}")
    try:
        with Image.open(io.BytesIO(data), formats=DECODE_FORMATS) as im:
            im.verify()  # structure and (PNG) chunk checksums
        with Image.open(io.BytesIO(data), formats=DECODE_FORMATS) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError ...
        detail = (
            "not a JPEG or PNG image" if isinstance(exc, UnidentifiedImageError) else f"corrupt or truncated ({exc})"
        )
        raise field_error(path, "image", f"cannot be decoded: {detail}{note}") from exc
    return rgb


def _fit(image: np.ndarray, size: int | None) -> np.ndarray:
    return image if size is None else resize_area(image, (size, size))


def _read_all(paths: Sequence[Path], size: int, wheres: Sequence[str] | None = None) -> np.ndarray:
    """Decode and resize every image into one (N, size, size, 3) array."""
    images = np.empty((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(paths):
        images[i] = _fit(read_face_image(p, wheres[i] if wheres else ""), size)
    return images


# ----------------------------------------------------------------------- listings
def _check_count(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        what = "a positive integer or None" if optional else "a positive integer"
        raise DatasetError(f"{name} must be {what}, got {value!r}")


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _sorted_by_name(items: Sequence[Path], key: Any = lambda p: p.stem) -> list[Path]:
    """Numerically by ``key`` when every key is all digits, else as text; ties by full name."""
    keys = [key(p) for p in items]
    if all(re.fullmatch(r"[0-9]+", k) for k in keys):
        order = sorted(range(len(items)), key=lambda i: (int(keys[i]), items[i].name, str(items[i])))
    else:
        order = sorted(range(len(items)), key=lambda i: (keys[i], items[i].name, str(items[i])))
    return [items[i] for i in order]


def _image_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if _visible(p) and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return _sorted_by_name(files)


def _subfolders(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if _visible(p) and p.is_dir()]


def _root_folder(path: PathLike, what: str) -> Path:
    base = refuse_pickle(path)
    if not base.is_dir():
        raise DatasetError(f"{base}: {what} root folder does not exist")
    return base


def _relative(paths: Sequence[Path], base: Path) -> list[str]:
    return [p.relative_to(base).as_posix() for p in paths]


def _release_hint(base: Path) -> str:
    """A hint when the folder holds insightface's RecordIO/.bin release instead of images."""
    names = {p.name for p in base.iterdir()}
    odd = sorted(n for n in names if n.endswith((".rec", ".idx", *PICKLE_SUFFIXES)))
    if not odd:
        return ""
    return (
        f"; it holds {', '.join(odd)}: insightface's MXNet RecordIO / pickle release, which backdoorlab does not "
        "read (export the images as identity folders)"
    )


# -------------------------------------------------------------------- CASIA-WebFace
def load_casia_webface(
    path: PathLike,
    size: int = 112,
    min_images: int = 1,
    max_identities: int | None = None,
    limit_per_identity: int | None = None,
) -> ArrayDataset:
    """CASIA-WebFace identity folders -> images ``size`` x ``size`` with ``label`` = ``identity`` 0..K-1.

    See the module docstring for the layout, the order and the selection rules.
    """
    _check_count("size", size)
    _check_count("min_images", min_images)
    _check_count("max_identities", max_identities, optional=True)
    _check_count("limit_per_identity", limit_per_identity, optional=True)
    base = _root_folder(path, "CASIA-WebFace")
    folders = _subfolders(base)
    if len(folders) == 1 and folders[0].name in CASIA_FOLDERS and not _image_files(folders[0]):
        base, folders = folders[0], _subfolders(folders[0])  # ROOT/CASIA-WebFace/<identity>/...
    if not folders:
        raise DatasetError(
            f"{base}: field 'identity' cannot be read: no identity folders (the layout is ROOT/<identity>/<image>.jpg, "
            f"e.g. ROOT/0000045/001.jpg){_release_hint(base)}"
        )
    kept: list[tuple[str, list[Path]]] = []
    dropped = 0
    for folder in _sorted_by_name(folders, key=lambda p: p.name):
        files = _image_files(folder)
        if len(files) < min_images:
            dropped += 1
            continue
        kept.append((folder.name, files[:limit_per_identity]))
    if not kept:
        problem = "holds no images" if min_images == 1 else f"has no identity with at least {min_images} images"
        raise DatasetError(f"{base}: field 'image' cannot be read: the release {problem} (.jpg/.jpeg/.png)")
    kept = kept[:max_identities]
    paths = [p for _, files in kept for p in files]
    labels = np.concatenate([np.full(len(files), k, np.int64) for k, (_, files) in enumerate(kept)])
    images = _read_all(paths, size)
    meta = {
        "name": "casia-webface",
        "source": str(base),
        "size": int(size),
        "identities": [name for name, _ in kept],
        "min_images": int(min_images),
        "dropped_identities": dropped,
        "max_identities": max_identities,
        "limit_per_identity": limit_per_identity,
        "image_files": _relative(paths, base),
        "resize": RESIZE_NOTE,
        "conventions": "identity folders sorted numerically (all-digit names) or as text; label = identity = "
        "position in meta['identities']; images by file name",
    }
    return ArrayDataset(images, {"label": labels, "identity": labels.copy()}, meta)


# ---------------------------------------------------------------------------- LFW
@dataclass(frozen=True)
class LfwPairs:
    """The pairs of an LFW ``pairs.txt``, one array entry a pair, in file order.

    ``fold`` int64 (0-based), ``same`` bool (matched pair), ``name_a``/``name_b``
    str (equal in matched pairs), ``index_a``/``index_b`` int64 (LFW's 1-based image
    numbers), ``line`` int64 (the pair's line in the file). ``a_row``/``b_row`` are
    the rows of the two images in the dataset :func:`load_lfw` returns (None from
    :func:`read_lfw_pairs`).
    """

    fold: np.ndarray
    same: np.ndarray
    name_a: np.ndarray
    index_a: np.ndarray
    name_b: np.ndarray
    index_b: np.ndarray
    line: np.ndarray
    folds: int
    pairs_per_fold: int
    source: str
    a_row: np.ndarray | None = None
    b_row: np.ndarray | None = None

    ARRAYS = ("fold", "same", "name_a", "index_a", "name_b", "index_b", "line", "a_row", "b_row")

    def __len__(self) -> int:
        return len(self.fold)

    def to_lists(self) -> dict[str, Any]:
        """Plain lists and ints (JSON-ready): what the ``lfw`` registry entry puts in ``meta["pairs"]``."""
        out: dict[str, Any] = {k: getattr(self, k).tolist() for k in self.ARRAYS if getattr(self, k) is not None}
        out.update(folds=self.folds, pairs_per_fold=self.pairs_per_fold, source=self.source)
        return out

    @classmethod
    def from_lists(cls, d: dict[str, Any]) -> LfwPairs:
        """Inverse of :meth:`to_lists` (e.g. from a saved dataset's ``meta["pairs"]``)."""
        dtypes = {"same": bool, "name_a": str, "name_b": str}
        arrays = {
            k: np.asarray(d[k], dtype=dtypes.get(k, np.int64)) if d.get(k) is not None else None for k in cls.ARRAYS
        }
        return cls(**arrays, folds=int(d["folds"]), pairs_per_fold=int(d["pairs_per_fold"]), source=str(d["source"]))


def _positive(token: str, path: Path, lineno: int, name: str) -> int:
    value = parse_int(token, path, lineno, name)
    if value < 1:
        raise line_error(path, lineno, f"field '{name}' must be a positive integer, got {token!r}")
    return value


def _person(token: str, path: Path, lineno: int, name: str) -> str:
    """A person's folder name: no path separators, not '.' or '..' (it becomes a path)."""
    if "/" in token or "\\" in token or token in (".", ".."):
        raise line_error(path, lineno, f"field '{name}' must be a person's folder name, got {token!r}")
    return token


def read_lfw_pairs(path: PathLike) -> LfwPairs:
    """Parse ``pairs.txt`` (View 2; View 1's one-number header reads as one fold). See the module docstring."""
    path = refuse_pickle(path)
    lines = read_lines(path, "pairs")
    head = lines[0].split()
    if len(head) == 2:
        folds = _positive(head[0], path, 1, "folds")
        per = _positive(head[1], path, 1, "pairs_per_fold")
    elif len(head) == 1:
        folds, per = 1, _positive(head[0], path, 1, "pairs_per_fold")
    else:
        raise line_error(
            path, 1, f"field 'header' must be two positive integers (folds, pairs per class per fold), got {lines[0]!r}"
        )
    expected = folds * 2 * per
    rows: list[tuple[int, bool, str, int, str, int, int]] = []
    for lineno, raw in enumerate(lines[1:], 2):
        tokens = raw.split()
        if not tokens:
            continue
        k = len(rows)
        if k >= expected:
            raise line_error(
                path,
                lineno,
                f"extra line: field 'header' (line 1) says {folds} folds x 2 x {per} = {expected} pairs, "
                f"and they end on an earlier line",
            )
        fold, pos = divmod(k, 2 * per)
        same = pos < per
        fields = MATCHED_FIELDS if same else MISMATCHED_FIELDS
        if len(tokens) != len(fields):
            kind = "matched" if same else "mismatched"
            where = (
                f"a {kind} pair has {len(fields)} fields ({' '.join(fields)}), got {len(tokens)}; this is "
                f"{kind} pair {pos % per + 1} of fold {fold + 1} by the header's {folds} x ({per} matched + {per} "
                "mismatched)"
            )
            if len(tokens) < len(fields):
                raise line_error(path, lineno, f"field '{fields[len(tokens)]}' is missing: {where}")
            raise line_error(path, lineno, f"field '{fields[-1]}' is followed by extra fields: {where}")
        if same:
            name_a = name_b = _person(tokens[0], path, lineno, "name")
            index_a = _positive(tokens[1], path, lineno, "n1")
            index_b = _positive(tokens[2], path, lineno, "n2")
        else:
            name_a = _person(tokens[0], path, lineno, "name1")
            index_a = _positive(tokens[1], path, lineno, "n1")
            name_b = _person(tokens[2], path, lineno, "name2")
            index_b = _positive(tokens[3], path, lineno, "n2")
            if name_a == name_b:
                raise line_error(
                    path, lineno, f"field 'name2' must differ from 'name1' in a mismatched pair, got {name_b!r}"
                )
        rows.append((fold, same, name_a, index_a, name_b, index_b, lineno))
    if len(rows) < expected:
        raise line_error(
            path,
            1,
            f"truncated: field 'header' says {folds} folds x 2 x {per} = {expected} pair lines but the file holds "
            f"{len(rows)} (it ends at line {len(lines)})",
        )
    cols = list(zip(*rows, strict=True))
    return LfwPairs(
        fold=np.asarray(cols[0], np.int64),
        same=np.asarray(cols[1], bool),
        name_a=np.asarray(cols[2], str),
        index_a=np.asarray(cols[3], np.int64),
        name_b=np.asarray(cols[4], str),
        index_b=np.asarray(cols[5], np.int64),
        line=np.asarray(cols[6], np.int64),
        folds=folds,
        pairs_per_fold=per,
        source=str(path),
    )


def lfw_image_path(image_dir: Path, name: str, index: int) -> Path:
    """``<image_dir>/<name>/<name>_<index:04d>.jpg``: LFW's file naming."""
    return image_dir / name / f"{name}_{index:04d}.jpg"


def _lfw_folders(base: Path, pairs: PathLike) -> tuple[Path, Path]:
    """(image folder, pairs file) under an LFW root."""
    image_dir = next((base / n for n in LFW_IMAGE_FOLDERS if (base / n).is_dir()), None)
    if image_dir is None:
        raise DatasetError(
            f"{base}: field 'image' cannot be read: neither {' nor '.join(n + '/' for n in LFW_IMAGE_FOLDERS)} is in "
            f"the LFW root (the layout is ROOT/lfw-deepfunneled/<name>/<name>_0001.jpg with ROOT/pairs.txt)"
            f"{_release_hint(base)}"
        )
    p = Path(pairs)
    if p.is_absolute():
        return image_dir, p
    found = next((d / p for d in (base, image_dir) if (d / p).is_file()), None)
    return image_dir, found if found is not None else base / p


def load_lfw(root: PathLike, size: int = 112, pairs: PathLike = "pairs.txt") -> tuple[ArrayDataset, LfwPairs]:
    """LFW images named by ``pairs`` (each once) and the pairs with their image rows ``a_row``/``b_row``.

    ``pairs`` is a path relative to ``root`` (or to the image folder), or absolute.
    See the module docstring for the layout and order.
    """
    _check_count("size", size)
    base = _root_folder(root, "LFW")
    image_dir, pairs_path = _lfw_folders(base, pairs)
    table = read_lfw_pairs(pairs_path)
    first_line: dict[tuple[str, int], int] = {}
    for names, indices in ((table.name_a, table.index_a), (table.name_b, table.index_b)):
        for name, index, lineno in zip(names.tolist(), indices.tolist(), table.line.tolist(), strict=True):
            key = (name, index)
            first_line[key] = min(lineno, first_line.get(key, lineno))
    keys = sorted(first_line)
    paths = [lfw_image_path(image_dir, name, index) for name, index in keys]
    wheres = [f"referenced by the pair on {pairs_path} line {first_line[k]}" for k in keys]
    for p, where in zip(paths, wheres, strict=True):  # every file present before any is decoded
        if not p.is_file():
            raise field_error(p, "image", f"cannot be read: the file does not exist ({where})")
    images = _read_all(paths, size, wheres)
    people = sorted({name for name, _ in keys})
    person = {name: k for k, name in enumerate(people)}
    row = {key: i for i, key in enumerate(keys)}
    labels = np.asarray([person[name] for name, _ in keys], np.int64)
    a_row = [row[k] for k in zip(table.name_a.tolist(), table.index_a.tolist(), strict=True)]
    b_row = [row[k] for k in zip(table.name_b.tolist(), table.index_b.tolist(), strict=True)]
    table = replace(table, a_row=np.asarray(a_row, np.int64), b_row=np.asarray(b_row, np.int64))
    meta = {
        "name": "lfw",
        "source": str(base),
        "size": int(size),
        "image_folder": image_dir.name,
        "pairs_file": str(pairs_path),
        "folds": table.folds,
        "pairs_per_fold": table.pairs_per_fold,
        "identities": people,
        "image_files": _relative(paths, image_dir),
        "resize": RESIZE_NOTE,
        "conventions": "only the images the pairs name, each once, sorted by (name, number); label = identity = "
        "position in meta['identities']; image_number = LFW's 1-based number",
    }
    annotations = {
        "label": labels,
        "identity": labels.copy(),
        "image_number": np.asarray([index for _, index in keys], np.int64),
    }
    return ArrayDataset(images, annotations, meta), table


def load_lfw_dataset(root: PathLike, size: int = 112, pairs: PathLike = "pairs.txt") -> ArrayDataset:
    """:func:`load_lfw` as one dataset (the ``lfw`` registry entry): the pairs go to ``meta["pairs"]``.

    ``meta["pairs"]`` is :meth:`LfwPairs.to_lists` (plain lists, saved with the
    dataset); ``LfwPairs.from_lists(ds.meta["pairs"])`` gives the arrays back. Its
    rows index this dataset: a subset of it needs its own pairs.
    """
    ds, table = load_lfw(root, size=size, pairs=pairs)
    ds.meta["pairs"] = table.to_lists()
    return ds


# --------------------------------------------------------------------------- FFHQ
def load_ffhq(path: PathLike, size: int = 112, limit: int | None = None) -> ArrayDataset:
    """FFHQ (or any folder of face images) as an unlabelled dataset: ``label`` = -1 everywhere.

    Reads the images directly in ``path`` and in its immediate subfolders (the
    release's ``00000/`` .. ``69000/``), sorted by file name; ``limit`` takes the
    first N.
    """
    _check_count("size", size)
    _check_count("limit", limit, optional=True)
    base = _root_folder(path, "FFHQ")
    files = _image_files(base) + [p for d in _subfolders(base) for p in _image_files(d)]
    if not files:
        raise DatasetError(
            f"{base}: field 'image' cannot be read: no .png/.jpg images in the folder or its subfolders (the "
            "layout is ROOT/00000/00000.png ..., e.g. the release's images1024x1024/, or a flat folder)"
            f"{_release_hint(base)}"
        )
    paths = _sorted_by_name(files)[:limit]
    images = _read_all(paths, size)
    meta = {
        "name": "ffhq",
        "source": str(base),
        "size": int(size),
        "limit": limit,
        "labelled": False,
        "image_files": _relative(paths, base),
        "resize": RESIZE_NOTE,
        "conventions": "unlabelled faces (label = -1): for embedding translators and score calibration, not "
        "for identity training; sorted by file name",
    }
    return ArrayDataset(images, {"label": np.full(len(paths), -1, np.int64)}, meta)


# ------------------------------------------------------------------ aligned crops
def _identity_name_problem(name: str) -> str | None:
    if not name or name != name.strip():
        return "must be non-empty without leading or trailing spaces"
    if "/" in name or "\\" in name or name.startswith(".") or "\n" in name or "\r" in name:
        return "must be a folder name (no '/', '\\', line break or leading '.')"
    return None


def export_aligned_crops(dataset: ArrayDataset, root: PathLike) -> Path:
    """Write ``dataset`` as ``ROOT/<identity>/<row:05d>.png`` plus ``ROOT/identities.txt`` (written last).

    Identity names are ``meta["identities"]`` (label k is ``identities[k]``) or, when
    the dataset has none, the label numbers. Needs a ``label`` annotation >= 0 (an
    unlabelled set such as FFHQ is refused) and RGB images; ``root`` must be new or
    empty. Only the images and labels are written.
    """
    out = Path(root)
    if "label" not in dataset.annotations:
        raise DatasetError(f"{out}: export_aligned_crops needs a 'label' annotation (identity index)")
    labels = np.asarray(dataset.annotations["label"])
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        shape = f"{labels.dtype} {labels.shape}"
        raise DatasetError(f"{out}: export_aligned_crops needs integer labels of shape (N,), got {shape}")
    if dataset.images.shape[-1] != 3:
        raise DatasetError(f"{out}: export_aligned_crops writes RGB images, got {dataset.images.shape[-1]} channels")
    if len(labels) and labels.min() < 0:
        raise DatasetError(
            f"{out}: export_aligned_crops needs identity labels >= 0; this dataset has label {int(labels.min())} "
            "(unlabelled images, e.g. FFHQ, have no identity folder to go to)"
        )
    top = int(labels.max()) + 1 if len(labels) else 0
    given = dataset.meta.get("identities")
    names = [str(n) for n in given] if given is not None else [str(k) for k in range(top)]
    if len(names) < top:
        raise DatasetError(f"{out}: label {top - 1} has no name: meta['identities'] lists {len(names)}")
    for name in names:
        if (problem := _identity_name_problem(name)) is not None:
            raise DatasetError(f"{out}: identity name {name!r} {problem}")
    if len(set(names)) != len(names):
        raise DatasetError(f"{out}: meta['identities'] names an identity twice")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} exists and is not an empty folder: export_aligned_crops writes a new folder")
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(dataset.images, labels.tolist(), strict=True)):
        Image.fromarray(np.ascontiguousarray(image)).save(out / names[label] / f"{i:05d}.png")
    (out / IDENTITIES_FILE).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    return out


def load_aligned_crops(root: PathLike, size: int | None = None) -> ArrayDataset:
    """Read a folder written by :func:`export_aligned_crops` (or laid out the same way).

    ``size=None`` keeps the stored size (every image must then have the same one);
    an int resizes to ``size`` x ``size``. ``label`` = ``identity`` = the line of the
    image's folder in ``identities.txt``.
    """
    _check_count("size", size, optional=True)
    base = _root_folder(root, "aligned-crops")
    names_path = base / IDENTITIES_FILE
    if not names_path.is_file():
        raise DatasetError(
            f"{names_path}: field 'identities' cannot be read: the file does not exist (written last by "
            "export_aligned_crops: without it the folder is not a complete export)"
        )
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, name in enumerate(read_lines(names_path, "identities"), 1):
        if (problem := _identity_name_problem(name)) is not None:
            raise line_error(names_path, lineno, f"field 'identity' {name!r} {problem}")
        if name in seen:
            raise line_error(names_path, lineno, f"field 'identity' {name!r} repeats line {seen[name]}")
        seen[name] = lineno
        names.append(name)
    for folder in _subfolders(base):
        if folder.name not in seen:
            raise DatasetError(f"{folder}: field 'identity' {folder.name!r} is not listed in {names_path}")
    entries: list[tuple[int, int, Path]] = []
    for k, name in enumerate(names):
        folder = base / name
        if not folder.is_dir():
            raise line_error(names_path, k + 1, f"field 'identity' {name!r} has no folder {folder}")
        for p in folder.iterdir():
            if not _visible(p):
                continue
            if not (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and re.fullmatch(r"[0-9]+", p.stem)):
                raise field_error(p, "index", "must be an image named <number>.png (or .jpg)")
            entries.append((int(p.stem), k, p))
    if not entries:
        raise DatasetError(f"{base}: field 'image' cannot be read: no images in the identity folders")
    entries.sort(key=lambda e: (e[0], e[1], e[2].name))
    paths = [p for _, _, p in entries]
    labels = np.asarray([k for _, k, _ in entries], np.int64)
    if size is not None:
        images = _read_all(paths, size)
    else:
        first = read_face_image(paths[0])
        images = np.empty((len(paths), *first.shape), np.uint8)
        images[0] = first
        for i, p in enumerate(paths[1:], 1):
            img = read_face_image(p)
            if img.shape != first.shape:
                got, want = f"{img.shape[1]}x{img.shape[0]}", f"{first.shape[1]}x{first.shape[0]}"
                raise field_error(p, "image", f"is {got} but {paths[0]} is {want}: pass size= to resize them all")
            images[i] = img
    meta = {
        "name": "aligned-crops",
        "source": str(base),
        "size": size,
        "identities": names,
        "image_files": _relative(paths, base),
        "resize": "stored size" if size is None else RESIZE_NOTE,
        "conventions": f"ROOT/<identity>/<index>.png, label = identity = line of the folder in {IDENTITIES_FILE} "
        "(from 0); images sorted by (index, identity line)",
    }
    return ArrayDataset(images, {"label": labels, "identity": labels.copy()}, meta)


__all__ = [
    "IDENTITIES_FILE",
    "LfwPairs",
    "export_aligned_crops",
    "is_pickle_header",
    "lfw_image_path",
    "load_aligned_crops",
    "load_casia_webface",
    "load_ffhq",
    "load_lfw",
    "load_lfw_dataset",
    "read_face_image",
    "read_lfw_pairs",
    "refuse_pickle",
]
