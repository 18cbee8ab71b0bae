"""Shared file handling for the real-dataset loaders (MPIIGaze, MPIIFaceGaze, ETH-XGaze).

Why a module of its own: every loader must turn the zoo of exceptions that h5py, scipy
and OpenCV raise on a missing, truncated or malformed file into one
:class:`~backdoorlab.errors.DatasetError` whose message names the file *and* the field,
and the three loaders share the same resize and subject-selection rules. Keeping that
here means a user sees the same kind of message whichever release they point at.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import scipy.io

from backdoorlab.errors import DatasetError

PathLike = str | os.PathLike[str]


def field_error(path: PathLike, field: str, problem: str) -> DatasetError:
    """The one message format: ``<file>: field '<field>' <problem>``."""
    return DatasetError(f"{path}: field '{field}' {problem}")


def require_file(path: Path, field: str) -> Path:
    """Fail early, naming what the file was needed for, if it does not exist."""
    if not path.is_file():
        raise field_error(path, field, "cannot be read: the file does not exist")
    return path


# ---------------------------------------------------------------------------- HDF5
def open_h5(path: Path, field: str = "(file)") -> h5py.File:
    """Open an HDF5 file (also a MATLAB v7.3 .mat) read-only, wrapping h5py's errors."""
    require_file(path, field)
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:  # truncated or not HDF5 at all
        raise field_error(path, field, f"cannot be read: truncated or not an HDF5 file ({exc})") from exc


def h5_dataset(f: h5py.File, path: Path, name: str) -> h5py.Dataset:
    """Look up a dataset by its in-file path; a group or a missing name is a DatasetError."""
    try:
        obj = f.get(name)
    except (OSError, KeyError, ValueError) as exc:  # damaged object headers
        raise field_error(path, name, f"cannot be read ({exc})") from exc
    if obj is None:
        raise field_error(path, name, f"is missing (the file holds {sorted(_h5_names(f))})")
    if not isinstance(obj, h5py.Dataset):
        raise field_error(path, name, "is a group, expected an array")
    return obj


def read_h5(ds: h5py.Dataset, path: Path, name: str, selection: Any = ()) -> np.ndarray:
    """Read (part of) a dataset; a file truncated inside the data still fails cleanly.

    A sorted index array that is one contiguous run is read as a slice (h5py's
    point selection is far slower than a hyperslab).
    """
    if isinstance(selection, np.ndarray) and selection.ndim == 1 and len(selection) > 0:
        if np.all(np.diff(selection) == 1):
            selection = slice(int(selection[0]), int(selection[-1]) + 1)
        else:
            selection = np.sort(selection)
    try:
        return np.asarray(ds[selection])
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise field_error(path, name, f"cannot be read: truncated or damaged ({exc})") from exc


def _h5_names(f: h5py.File) -> list[str]:
    names: list[str] = []
    with contextlib.suppress(OSError, KeyError, ValueError):  # best effort, for messages
        f.visit(names.append)
    return names


def is_hdf5(path: Path) -> bool:
    """True for HDF5 files, including MATLAB v7.3 files with their 512-byte user block."""
    try:
        return bool(h5py.is_hdf5(str(path)))
    except OSError:
        return False


# ------------------------------------------------------------------------- MATLAB v5
def load_mat_v5(path: Path, field: str = "(file)") -> dict[str, Any]:
    """``scipy.io.loadmat`` (structs as record arrays, no squeezing) with wrapped errors.

    Not squeezing keeps one-sample files the same rank as many-sample ones, so
    shape checks need no special case.
    """
    require_file(path, field)
    try:
        return scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=True)
    except Exception as exc:  # scipy raises many unrelated types on damaged files
        raise field_error(path, field, f"cannot be read: truncated or not a MATLAB v5 file ({exc})") from exc


def mat_field(container: Any, name: str, path: Path, field_path: str) -> Any:
    """One field of a loadmat struct (record array) or of the top-level dict."""
    if isinstance(container, Mapping):
        if name not in container:
            raise field_error(path, field_path, "is missing")
        return container[name]
    arr = np.asarray(container)
    if arr.dtype.names is None or name not in arr.dtype.names:
        raise field_error(path, field_path, "is missing")
    if arr.size != 1:
        raise field_error(path, field_path, f"is inside a struct array of {arr.size} elements, expected 1")
    return arr.reshape(-1)[0][name]


def as_float(value: Any, path: Path, field: str) -> np.ndarray:
    """A numeric field as float64; a struct, cell or text where numbers belong is an error."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise field_error(path, field, f"is not numeric ({exc})") from exc


def mat_strings(value: Any) -> list[str]:
    """A MATLAB cell array of strings or a char matrix, as a flat list of str."""
    arr = np.asarray(value)
    if arr.dtype.kind == "U":
        return [str(s).strip() for s in arr.reshape(-1)]
    out: list[str] = []
    for item in arr.reshape(-1):
        inner = np.asarray(item).reshape(-1)
        out.append("".join(str(s) for s in inner).strip())
    return out


# --------------------------------------------------------------------------- arrays
def check_shape(arr: np.ndarray, expected: Sequence[int | None], path: Path, field: str) -> np.ndarray:
    """Check rank and the fixed axes (``None`` matches any length)."""
    ok = arr.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, arr.shape, strict=False))
    if not ok:
        want = "(" + ", ".join("N" if e is None else str(e) for e in expected) + ")"
        raise field_error(path, field, f"has shape {tuple(arr.shape)}, expected {want}")
    return arr


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Pixel arrays stored as doubles in 0..255 (MATLAB's habit) become uint8."""
    if arr.dtype == np.uint8:
        return arr
    return np.clip(np.rint(arr.astype(np.float64)), 0, 255).astype(np.uint8)


def resize_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize one (H, W[, C]) image to ``size`` = (h, w) with INTER_AREA (no aliasing)."""
    h, w = size
    if image.shape[0] == h and image.shape[1] == w:
        return np.ascontiguousarray(image)
    out = cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_AREA)
    if image.ndim == 3 and out.ndim == 2:  # OpenCV drops a single channel axis
        out = out[:, :, None]
    return out


def scale_points(points: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """Pixel (x, y) coordinates under a resize from ``src`` (h, w) to ``dst`` (h, w).

    Pixel centres sit at integer coordinates (OpenCV's convention), hence the half-pixel
    terms: x' = (x + 0.5) * w'/w - 0.5.
    """
    sy, sx = dst[0] / src[0], dst[1] / src[1]
    out = np.empty_like(points, dtype=np.float32)
    out[..., 0] = (points[..., 0] + 0.5) * sx - 0.5
    out[..., 1] = (points[..., 1] + 0.5) * sy - 0.5
    return out


def size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``64`` -> (64, 64); ``(36, 60)`` -> (36, 60); anything else is a DatasetError."""
    if isinstance(size, int | np.integer):
        pair = (int(size), int(size))
    else:
        vals = tuple(int(v) for v in size)
        if len(vals) != 2:
            raise DatasetError(f"size must be an int or (height, width), got {size!r}")
        pair = (vals[0], vals[1])
    if min(pair) < 1:
        raise DatasetError(f"size must be positive, got {size!r}")
    return pair


def even_subsample(n: int, limit: int | None) -> np.ndarray:
    """Indices of at most ``limit`` of ``n`` samples, evenly spread and in order.

    Spreading (rather than taking the first ``limit``) keeps every recording day of a
    subject represented when a quick run loads only part of a release.
    """
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 1:
        raise DatasetError(f"max_per_subject must be at least 1, got {limit}")
    return np.unique(np.round(np.linspace(0, n - 1, limit)).astype(np.int64))


# ------------------------------------------------------------------------- subjects
def subject_number(name: str, pattern: str, path: PathLike) -> int:
    """The subject number in a file/folder name (``p07`` -> 7, ``subject0012`` -> 12)."""
    m = re.fullmatch(pattern, name)
    if m is None:
        raise field_error(path, "identity", f"cannot be derived: name {name!r} does not match {pattern!r}")
    return int(m.group(1))


def select_subjects(
    available: Mapping[int, Path],
    subjects: Iterable[int | str] | None,
    pattern: str,
    root: PathLike,
) -> list[tuple[int, Path]]:
    """Pick subjects by number or by name (``3``, ``"p03"``, ``"subject0003"``), in order."""
    if not available:
        raise DatasetError(f"{root}: no subject files or folders matching {pattern!r} were found")
    if subjects is None:
        return sorted(available.items())
    chosen: list[tuple[int, Path]] = []
    for s in subjects:
        if isinstance(s, int | np.integer):
            num = int(s)
        else:
            digits = re.sub(r"\D", "", str(s))
            if not digits:
                raise DatasetError(f"subject {s!r} is neither a number nor a name like {pattern!r}")
            num = int(digits)
        if num not in available:
            raise DatasetError(f"{root}: subject {s!r} is not in the release (found {sorted(available)})")
        chosen.append((num, available[num]))
    return chosen


def subject_files(
    path: Path, pattern: str, suffix: str, subjects: Iterable[int | str] | None, what: str
) -> list[tuple[int, Path]]:
    """Per-subject files (``pXX.mat``, ``subjectXXXX.h5``) under a folder, or one such file.

    ``what`` names the release in the error raised when ``path`` does not exist.
    """
    if path.is_file() or path.suffix == suffix:
        num = subject_number(path.stem, pattern, path)
        if subjects is not None:
            return select_subjects({num: path}, subjects, pattern, path)
        return [(num, path)]
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} file or folder does not exist")
    available = {
        int(m.group(1)): p for p in path.iterdir() if p.suffix == suffix and (m := re.fullmatch(pattern, p.stem))
    }
    return select_subjects(available, subjects, pattern + re.escape(suffix), path)
