"""Safe ``.npy`` reading and file-name checks shared by the dataset containers.

Kept apart so that :mod:`backdoorlab.data.arrays` and
:mod:`backdoorlab.data.instances` refuse the same bad files with the same messages
without importing each other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backdoorlab.errors import DatasetError


def check_key(key: str, what: str = "annotation key") -> None:
    """Keys become file names: only letters, digits and underscores, so no path escapes."""
    if not key.replace("_", "").isalnum():
        raise DatasetError(f"{what} {key!r} must be alphanumeric/underscore")


def load_npy(path: Path, mmap_mode: str | None) -> np.ndarray:
    """``np.load`` that never unpickles and turns every failure into a DatasetError naming the file."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing")
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{path} is truncated or not a .npy array: {exc}") from exc
