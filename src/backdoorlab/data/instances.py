"""Per-image instance tables: a variable number of annotated objects (faces) per image.

Why a ragged table and not padded arrays: a face-detection image holds zero, one or
dozens of faces. Padding every image to the largest count wastes memory on crowd
images and forces a validity mask into every consumer. Instead all instances of all
images are stacked row-wise, one array per column, and ``offsets`` (N+1,) says which
rows belong to which image: image ``i`` owns rows ``offsets[i]:offsets[i+1]`` (the
CSR layout of sparse matrices). Selecting images is then one vectorised gather, and
on disk each column is a single memory-mappable ``.npy`` file.

Two forms of the same thing:

* :class:`InstanceTable` (numpy): what a dataset stores and saves.
* :class:`InstanceBatch` (torch): what a batch carries under ``ann["instances"]``. It
  indexes like a tensor column (``batch[rows]``, ``len``), so generic code written for
  dense columns (``{k: v[rows] for k, v in ann.items()}``) keeps working, and it is
  never modified in place: :meth:`InstanceBatch.replace_rows` returns a new batch,
  which is how a relabel adds or removes a face.

Instance schema for faces (:data:`FACE_SCHEMA`; M = total instances, pixel
coordinates in the image's own frame with pixel centres at integer coordinates,
x to the right and y down, as OpenCV and the dense columns of
:mod:`backdoorlab.data.arrays`):

=============  ==============  =====================================================
column         shape/dtype     meaning
=============  ==============  =====================================================
``boxes``      (M, 4) f32      x1, y1, x2, y2 in pixels (top-left, bottom-right)
``landmarks``  (M, 5, 2) f32   (x, y) pixels, RetinaFace order: left eye, right eye,
                               nose tip, left mouth corner, right mouth corner, where
                               left/right are as seen in the image (image-left first)
``visible``    (M, 5) bool     per landmark: True if the point is visible and
                               annotated; an invisible point's coordinates carry no
                               meaning and losses/metrics must mask them out
``label``      (M,) i64        per-face label, e.g. identity (-1 when unknown)
=============  ==============  =====================================================

Any other column is allowed (its first axis is the instance); a column may not be
called ``offsets`` because the files are ``inst_offsets.npy`` and ``inst_<column>.npy``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backdoorlab.data._npy import check_key, load_npy
from backdoorlab.errors import DatasetError

#: column -> (numpy dtype name, per-instance shape); the form meta.json stores.
Schema = Mapping[str, tuple[str, tuple[int, ...]]]

FACE_SCHEMA: dict[str, tuple[str, tuple[int, ...]]] = {
    "boxes": ("float32", (4,)),
    "landmarks": ("float32", (5, 2)),
    "visible": ("bool", (5,)),
    "label": ("int64", ()),
}

OFFSETS_FILE = "inst_offsets.npy"


def column_file(name: str) -> str:
    """The file a column is saved to (``inst_<name>.npy``)."""
    return f"inst_{name}.npy"


# ------------------------------------------------------------------ index helpers
def _offsets_problem(offsets: np.ndarray) -> str | None:
    """What is wrong with an offsets vector, or None. Shared by construction and load."""
    if not isinstance(offsets, np.ndarray) or offsets.dtype != np.int64 or offsets.ndim != 1:
        got = f"{offsets.dtype} {tuple(offsets.shape)}" if hasattr(offsets, "dtype") else type(offsets).__name__
        return f"offsets must be a 1-D int64 array of length N+1, got {got}"
    if len(offsets) == 0:
        return "offsets must have N+1 >= 1 entries, got an empty array"
    if offsets[0] != 0:
        return f"offsets must start at 0, got offsets[0] = {int(offsets[0])}"
    drops = np.flatnonzero(np.diff(offsets) < 0)
    if len(drops):
        i = int(drops[0])
        after, before = int(offsets[i + 1]), int(offsets[i])
        return f"offsets must be non-decreasing, but offsets[{i + 1}] = {after} < offsets[{i}] = {before}"
    return None


def _column_problem(name: str, arr: Any, m: int) -> str | None:
    """What is wrong with one column for a table of ``m`` instances, or None."""
    if name == "offsets" or not name.replace("_", "").isalnum():
        return f"instance column name {name!r} must be alphanumeric/underscore and not 'offsets'"
    if not hasattr(arr, "shape") or len(arr.shape) == 0:
        return f"instance column {name!r} must be an array with one row per instance"
    if arr.shape[0] != m:
        return f"instance column {name!r} has {arr.shape[0]} rows but offsets say {m} instances"
    return None


def _offsets_from_counts(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _positions(rows: Any, n: int) -> np.ndarray:
    """Normalise a tensor-style row selector (ints, negatives, bool mask, slice) to int64 positions.

    Out-of-range positions raise IndexError, as a tensor would: a silent wrap-around
    through ``offsets[i + 1]`` would hand out another image's instances.
    """
    if isinstance(rows, slice):
        return np.arange(n, dtype=np.int64)[rows]
    if isinstance(rows, torch.Tensor):
        rows = rows.detach().cpu().numpy()
    arr = np.asarray(rows)
    if arr.ndim != 1:
        raise IndexError(f"rows must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        if len(arr) != n:
            raise IndexError(f"boolean mask of length {len(arr)} for {n} images")
        return np.flatnonzero(arr).astype(np.int64)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise IndexError(f"rows must be integers or a boolean mask, got {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = (arr < -n) | (arr >= n)
    if bad.any():
        raise IndexError(f"row {int(arr[bad][0])} is out of range for {n} images")
    return np.where(arr < 0, arr + n, arr)


def _select(offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New offsets and the flat instance rows of images ``idx`` (in that order), without a loop.

    Each selected image contributes the run ``start .. start+count-1``; ``np.repeat`` of
    (start - new start) plus a global ``arange`` lays all runs out at once.
    """
    starts = offsets[idx]
    counts = offsets[idx + 1] - starts
    new = _offsets_from_counts(counts)
    flat = np.repeat(starts - new[:-1], counts) + np.arange(new[-1], dtype=np.int64)
    return new, flat


def _counts_of(samples: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> np.ndarray:
    """Instance count of each per-image dict; all its columns must agree (an empty dict is 0)."""
    counts = np.zeros(len(samples), np.int64)
    for i, sample in enumerate(samples):
        if not sample:
            continue
        if set(sample) != set(keys):
            raise DatasetError(f"image {i}: instance columns {sorted(sample)} differ from the schema {sorted(keys)}")
        lengths = {k: len(sample[k]) for k in keys}
        if len(set(lengths.values())) > 1:
            raise DatasetError(f"image {i}: instance columns disagree on the number of instances: {lengths}")
        counts[i] = lengths[keys[0]] if keys else 0
    return counts


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=a.dtype.kind in "fc"))
    )


def _schema_of(columns: Mapping[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {k: (str(v.dtype).removeprefix("torch."), tuple(v.shape[1:])) for k, v in columns.items()}


# --------------------------------------------------------------------- the table


def _check_table(offsets: np.ndarray, columns: Mapping[str, Any]) -> None:
    """One DatasetError naming the first problem of offsets + columns (numpy arrays or tensors)."""
    problem = _offsets_problem(offsets)
    if problem is None:
        m = int(offsets[-1])
        problem = next(filter(None, (_column_problem(k, v, m) for k, v in columns.items())), None)
    if problem is not None:
        raise DatasetError(problem)


@dataclass(frozen=True, eq=False, repr=False)
class InstanceTable:
    """The stored form: ``offsets`` (N+1,) int64 and ``columns`` whose first axis is the instance (M).

    Arrays may be read-only memory maps; every method that selects returns copies.
    """

    offsets: np.ndarray
    columns: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        _check_table(self.offsets, self.columns)

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        """Number of images (N)."""
        return len(self.offsets) - 1

    @property
    def n_instances(self) -> int:
        """Total number of instances (M)."""
        return int(self.offsets[-1])

    def counts(self) -> np.ndarray:
        """(N,) int64: instances per image."""
        return np.diff(self.offsets)

    def schema(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """column -> (dtype name, per-instance shape)."""
        return _schema_of(self.columns)

    def rows(self, i: int) -> dict[str, np.ndarray]:
        """The instances of image ``i`` (views into the table; zero rows if it has none)."""
        (j,) = _positions([i], len(self))
        a, b = int(self.offsets[j]), int(self.offsets[j + 1])
        return {k: v[a:b] for k, v in self.columns.items()}

    def gather(self, indices: Any) -> InstanceTable:
        """A new table holding the images at ``indices`` (order and repeats kept), as copies."""
        new, flat = _select(self.offsets, _positions(indices, len(self)))
        return InstanceTable(new, {k: np.asarray(v[flat]) for k, v in self.columns.items()})

    def concat(self, other: InstanceTable) -> InstanceTable:
        """The images of ``self`` then those of ``other`` (same columns required)."""
        if self.schema() != other.schema():
            raise DatasetError(f"cannot concatenate instance tables with columns {self.schema()} and {other.schema()}")
        offsets = np.concatenate([self.offsets, other.offsets[1:] + self.offsets[-1]])
        return InstanceTable(offsets, {k: np.concatenate([v, other.columns[k]]) for k, v in self.columns.items()})

    def equals(self, other: InstanceTable) -> bool:
        """Same offsets, same columns with the same dtypes, shapes and values (NaN equal to NaN)."""
        return (
            _same_array(self.offsets, other.offsets)
            and self.columns.keys() == other.columns.keys()
            and all(_same_array(v, other.columns[k]) for k, v in self.columns.items())
        )

    def __repr__(self) -> str:
        cols = ", ".join(f"{k}: {dt} {shape}" for k, (dt, shape) in self.schema().items())
        return f"InstanceTable(images={len(self)}, instances={self.n_instances}, columns={{{cols}}})"

    # ---------------------------------------------------------- construction
    @classmethod
    def from_lists(cls, per_image: Sequence[Mapping[str, Any]], schema: Schema) -> InstanceTable:
        """Build from one dict per image (column -> array-like of that image's instances).

        ``{}`` or empty arrays mean an image without instances; values are cast to the
        schema's dtype and must have its per-instance shape.
        """
        keys = list(schema)
        counts = _counts_of(per_image, keys)
        columns = {}
        for key, (dtype, shape) in schema.items():
            parts = [_as_column(s[key], dtype, tuple(shape), key, i) for i, s in enumerate(per_image) if s]
            columns[key] = np.concatenate(parts) if parts else np.zeros((0, *shape), dtype)
        return cls(_offsets_from_counts(counts), columns)

    @classmethod
    def empty(cls, n_images: int, schema: Schema) -> InstanceTable:
        """``n_images`` images without any instance (a dataset with no faces yet)."""
        return cls.from_lists([{}] * n_images, schema)

    # ------------------------------------------------------------------ disk
    def save(self, directory: str | os.PathLike[str]) -> dict[str, Any]:
        """Write ``inst_offsets.npy`` and one ``inst_<column>.npy`` each; return the meta.json entry."""
        d = Path(directory)
        for key in self.columns:
            check_key(key, "instance column")
        np.save(d / OFFSETS_FILE, np.ascontiguousarray(self.offsets))
        for key, arr in self.columns.items():
            np.save(d / column_file(key), np.ascontiguousarray(arr))
        return {
            "n_instances": self.n_instances,
            "columns": {k: [dt, list(shape)] for k, (dt, shape) in self.schema().items()},
        }

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], spec: Any, n_images: int, mmap_mode: str | None = "r"
    ) -> InstanceTable:
        """Open the files described by ``spec`` (the meta.json entry) for ``n_images`` images.

        Every inconsistency is one DatasetError naming the file at fault: a missing file,
        a dtype or shape that differs from meta.json, offsets that are not 0..M
        non-decreasing with N+1 entries, or a column whose row count is not M.
        """
        d = Path(directory)
        well_formed = isinstance(spec, dict) and isinstance(spec.get("n_instances"), int)
        if not (well_formed and isinstance(spec.get("columns"), dict)):
            raise DatasetError(f"{d / 'meta.json'}: 'instances' must hold 'n_instances' and 'columns', got {spec!r}")
        m = spec["n_instances"]
        path = d / OFFSETS_FILE
        offsets = load_npy(path, mmap_mode)
        if offsets.dtype != np.int64 or offsets.shape != (n_images + 1,):
            raise DatasetError(
                f"{path}: expected int64 offsets of shape ({n_images + 1},), found {offsets.dtype} {offsets.shape}"
            )
        problem = _offsets_problem(offsets)
        if problem is None and int(offsets[-1]) != m:
            problem = f"offsets end at {int(offsets[-1])} but meta.json says {m} instances"
        if problem is not None:
            raise DatasetError(f"{path}: {problem}")
        columns = {}
        for key, entry in spec["columns"].items():
            check_key(key, "instance column")
            path = d / column_file(key)
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list)):
                raise DatasetError(f"{d / 'meta.json'}: instance column {key!r} must be [dtype, shape], got {entry!r}")
            dtype, shape = entry
            arr = load_npy(path, mmap_mode)
            if str(arr.dtype) != dtype or list(arr.shape[1:]) != list(shape) or arr.ndim == 0:
                raise DatasetError(
                    f"{path}: expected {dtype} {list(shape)} per instance, found {arr.dtype} {list(arr.shape[1:])}"
                )
            problem = _column_problem(key, arr, m)
            if problem is not None:
                raise DatasetError(f"{path}: {problem}")
            columns[key] = arr
        return cls(offsets, columns)


def _as_column(value: Any, dtype: str, shape: tuple[int, ...], key: str, image: int) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.size == 0:
        arr = arr.reshape((0, *shape))
    if arr.shape[1:] != shape:
        raise DatasetError(f"image {image}: instance column {key!r} has shape {arr.shape}, expected (k, *{shape})")
    return arr


# --------------------------------------------------------------------- the batch
def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    """Wrap without copying unless the array is read-only (a memory map) or not contiguous."""
    arr = np.ascontiguousarray(arr)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


@dataclass(frozen=True, eq=False, repr=False)
class InstanceBatch:
    """The instances of a batch of B images, as torch tensors.

    ``offsets`` (B+1,) int64 always stays on the CPU (it is bookkeeping that every
    selection reads, and keeping it there avoids a device sync per selection);
    :meth:`to` moves the ``columns``. Behaves like a tensor column for row selection:
    ``len(batch) == B``, ``batch[rows]`` is a sub-batch and ``batch[i]`` (an int) the
    dict of image ``i``'s instances, as ``tensor[i]`` drops the batch axis.
    """

    offsets: torch.Tensor
    columns: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        if not isinstance(self.offsets, torch.Tensor) or self.offsets.device.type != "cpu":
            raise DatasetError("InstanceBatch offsets must be a CPU int64 tensor")
        _check_table(self.offsets.numpy(), self.columns)

    def __len__(self) -> int:
        """Number of images (B)."""
        return len(self.offsets) - 1

    @property
    def n_instances(self) -> int:
        return int(self.offsets[-1])

    def counts(self) -> torch.Tensor:
        """(B,) int64 instances per image."""
        return self.offsets.diff()

    def schema(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return _schema_of(self.columns)

    def __getitem__(self, rows: Any) -> Any:
        """``batch[int]`` -> that image's dict of tensors (views); anything else -> a sub-batch."""
        if isinstance(rows, int | np.integer) or (isinstance(rows, torch.Tensor) and rows.ndim == 0):
            (j,) = _positions([int(rows)], len(self))
            a, b = int(self.offsets[j]), int(self.offsets[j + 1])
            return {k: v[a:b] for k, v in self.columns.items()}
        new, flat = _select(self.offsets.numpy(), _positions(rows, len(self)))
        flat_t = torch.from_numpy(flat)
        return InstanceBatch(torch.from_numpy(new), {k: v[flat_t.to(v.device)] for k, v in self.columns.items()})

    def replace_rows(self, rows: Any, other: InstanceBatch) -> InstanceBatch:
        """A new batch where the images at positions ``rows`` hold ``other``'s instances instead.

        ``other`` has one image per row (in the same order) and may have any number of
        instances per image, which is how a relabel adds or removes faces. Its columns
        must match this batch's names and per-instance shapes; values are cast to this
        batch's dtypes and devices, as a dense ``col[rows] = v.to(col.dtype)`` would.
        """
        pos = _positions(rows, len(self))
        if len(pos) != len(other):
            raise DatasetError(f"replace_rows: {len(pos)} rows but the replacement holds {len(other)} images")
        if len(np.unique(pos)) != len(pos):
            raise DatasetError("replace_rows: rows must not repeat (which replacement would win is ambiguous)")
        order = np.arange(len(self), dtype=np.int64)
        order[pos] = len(self) + np.arange(len(pos))
        return InstanceBatch.cat([self, other])[order]

    def per_sample(self) -> list[dict[str, torch.Tensor]]:
        """One dict of tensors per image (views), as ``ArrayDataset.__getitem__`` hands them out."""
        return [self[i] for i in range(len(self))]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> InstanceBatch:
        """The same batch with its columns on ``device`` (offsets stay on the CPU)."""
        return InstanceBatch(
            self.offsets, {k: v.to(device, non_blocking=non_blocking) for k, v in self.columns.items()}
        )

    def to_table(self) -> InstanceTable:
        """Numpy copy (e.g. to write poisoned instances back into a dataset)."""
        return InstanceTable(
            self.offsets.numpy().copy(), {k: v.detach().cpu().numpy().copy() for k, v in self.columns.items()}
        )

    def equals(self, other: InstanceBatch) -> bool:
        """Same content (see :meth:`InstanceTable.equals`), whatever the devices."""
        return self.to_table().equals(other.to_table())

    def __repr__(self) -> str:
        cols = ", ".join(f"{k}: {dt} {shape}" for k, (dt, shape) in self.schema().items())
        return f"InstanceBatch(images={len(self)}, instances={self.n_instances}, columns={{{cols}}})"

    # ---------------------------------------------------------- construction
    @classmethod
    def from_table(cls, table: InstanceTable) -> InstanceBatch:
        """Wrap a table's arrays (no copy unless they are read-only memory maps)."""
        return cls(_to_tensor(table.offsets), {k: _to_tensor(v) for k, v in table.columns.items()})

    @classmethod
    def from_samples(cls, samples: Sequence[Mapping[str, torch.Tensor]], schema: Schema | None = None) -> InstanceBatch:
        """Collate per-image dicts (the inverse of :meth:`per_sample`).

        The columns are those of the first sample unless ``schema`` is given, which an
        empty list needs (there is nothing to take the columns from); its dtypes are
        used only when no sample has columns, the tensors' own dtypes otherwise.
        """
        if schema is None:
            if not samples:
                raise DatasetError("from_samples of no images needs a schema to know the columns")
            schema = _schema_of(samples[0])
        counts = _counts_of(samples, list(schema))
        filled = [s for s in samples if s]
        columns = {
            k: torch.cat([s[k] for s in filled]) if filled else torch.from_numpy(np.zeros((0, *shape), np.dtype(dt)))
            for k, (dt, shape) in schema.items()
        }
        return cls(torch.from_numpy(_offsets_from_counts(counts)), columns)

    @classmethod
    def cat(cls, batches: Sequence[InstanceBatch]) -> InstanceBatch:
        """Concatenate along the image axis; later batches are cast to the first one's dtypes and device."""
        if not batches:
            raise DatasetError("cat needs at least one InstanceBatch")
        first = batches[0]
        want = {k: shape for k, (_, shape) in first.schema().items()}
        for b in batches[1:]:
            got = {k: shape for k, (_, shape) in b.schema().items()}
            if got != want:
                raise DatasetError(f"instance columns differ: {got} vs {want} (name -> per-instance shape)")
        counts = np.concatenate([b.offsets.numpy()[1:] - b.offsets.numpy()[:-1] for b in batches])
        columns = {
            k: torch.cat([b.columns[k].to(v.device, v.dtype) for b in batches]) for k, v in first.columns.items()
        }
        return cls(torch.from_numpy(_offsets_from_counts(counts)), columns)
