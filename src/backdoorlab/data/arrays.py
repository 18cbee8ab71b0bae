"""The one in-memory/on-disk dataset container every task uses.

Why arrays and not per-file samples: CPU training on small images is dominated by
Python overhead per sample, so datasets are dense numpy arrays indexed a batch at a
time. On disk a dataset is a folder of ``.npy`` files (memory-mappable, readable by
any tool) plus ``meta.json``, which is written last and doubles as the completion
marker: a folder without it is an interrupted write and is refused.

Annotation keys used by the gaze task (each array's first axis is the sample):

==============  ============  ==================================================
key             shape/dtype   meaning
==============  ============  ==================================================
``gaze``        (N, 2) f32    (pitch, yaw) radians, normalised camera frame
``head_pose``   (N, 2) f32    (pitch, yaw) of the face's forward axis
``identity``    (N,) i64      subject id (cross-subject splits use it)
``landmarks``   (N, 5, 2) f32 pixels (x, y): eye centres, nose tip, mouth corners,
                              image-left first (RetinaFace order)
``eye_corners`` (N, 4, 2) f32 pixels: left eye outer/inner, right eye inner/outer
                              (image-left to image-right)
``face_box``    (N, 4) f32    pixels x1, y1, x2, y2
==============  ============  ==================================================

Only ``gaze`` and ``identity`` are required for gaze training; loaders of real data
fill what their release provides.

Beside the dense columns a dataset may hold an :class:`~backdoorlab.data.instances.InstanceTable`
(``instances=``): a variable number of faces per image (boxes, 5 landmarks with
visibility, labels; schema and coordinate conventions in
:mod:`backdoorlab.data.instances`). A batch then carries an
:class:`~backdoorlab.data.instances.InstanceBatch` under ``ann["instances"]`` and one
sample a dict of that image's instance tensors. On disk the table is
``inst_offsets.npy`` plus ``inst_<column>.npy`` and an ``"instances"`` entry in
``meta.json``; a dataset without instances has exactly the files, meta.json and
fingerprint it had before instance tables existed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backdoorlab.data._npy import check_key, load_npy
from backdoorlab.data.instances import InstanceBatch, InstanceTable
from backdoorlab.errors import DatasetError

FORMAT_VERSION = 1
META_FILE = "meta.json"
IMAGES_FILE = "images.npy"
# meta.json entries that describe one folder's bytes: a subset or a concatenation drops them
DERIVED_META = ("fingerprint", "files", "seal")
INSTANCES_KEY = "instances"  # the annotation key a batch carries instances under, and the meta.json entry


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float32 (B, C, H, W) in [0, 1]."""
    arr = np.ascontiguousarray(images)
    if not arr.flags.writeable:  # a read-only memory map: torch warns on wrapping it
        arr = arr.copy()
    t = torch.from_numpy(arr)
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def tensor_to_images(t: torch.Tensor) -> np.ndarray:
    """float (B, C, H, W) in [0, 1] -> uint8 (B, H, W, C), rounded."""
    arr = (t.detach().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class ArrayDataset:
    """Images (uint8, N x H x W x C), a dict of per-sample annotation arrays, optional instances.

    ``__getitem__`` follows the project-wide contract (a float CHW image in [0, 1] and
    a dict of tensors; with instances, ``ann["instances"]`` is a dict of that image's
    instance tensors); :meth:`batch` is the fast path the training loop uses.
    """

    images: np.ndarray
    annotations: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    instances: InstanceTable | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DatasetError(
                f"images must be uint8 of shape (N, H, W, C); got {self.images.dtype} {tuple(self.images.shape)}"
            )
        n = len(self.images)
        for key, arr in self.annotations.items():
            if len(arr) != n:
                raise DatasetError(f"annotation '{key}' has {len(arr)} rows but there are {n} images")
        if self.instances is not None:
            if not isinstance(self.instances, InstanceTable):
                raise DatasetError(f"instances must be an InstanceTable, got {type(self.instances).__name__}")
            if len(self.instances) != n:
                raise DatasetError(f"instances cover {len(self.instances)} images but there are {n} images")
            if INSTANCES_KEY in self.annotations:
                raise DatasetError(f"a dense annotation may not be called {INSTANCES_KEY!r} when instances are present")

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image as the model sees it."""
        _, h, w, c = self.images.shape
        return (int(c), int(h), int(w))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        img, ann = self.batch(np.asarray([i]))
        return img[0], {k: v[0] for k, v in ann.items()}  # InstanceBatch[0] is the image's dict

    def batch(self, indices: np.ndarray | Sequence[int]) -> tuple[torch.Tensor, dict[str, Any]]:
        """Images as float (B, C, H, W) and annotations as tensors, for these indices.

        With instances, ``ann["instances"]`` is an :class:`InstanceBatch` (copies, never
        views of the dataset); the dense columns are exactly as without.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) > 1 and np.all(np.diff(idx) == 1):
            sl = slice(int(idx[0]), int(idx[-1]) + 1)  # contiguous: a view, no gather
            # labels are copied: a batch edited in place (poisoning) must not write into
            # the dataset, or crash on a read-only memory map
            imgs, ann = self.images[sl], {k: np.array(v[sl]) for k, v in self.annotations.items()}
        else:
            imgs, ann = self.images[idx], {k: v[idx] for k, v in self.annotations.items()}
        out: dict[str, Any] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ann.items()}
        if self.instances is not None:
            out[INSTANCES_KEY] = InstanceBatch.from_table(self.instances.gather(idx))
        return images_to_tensor(imgs), out

    def iter_batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
        """Yield batches in order, or in a seeded permutation."""
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield self.batch(order[start : start + batch_size])

    def subset(self, indices: np.ndarray | Sequence[int]) -> ArrayDataset:
        """A new in-memory dataset holding only these samples (order kept)."""
        idx = np.asarray(indices, dtype=np.int64)
        meta = {k: v for k, v in self.meta.items() if k not in DERIVED_META}
        return ArrayDataset(
            np.ascontiguousarray(self.images[idx]),
            {k: np.ascontiguousarray(v[idx]) for k, v in self.annotations.items()},
            meta,
            instances=None if self.instances is None else self.instances.gather(idx),
        )

    def concat(self, other: ArrayDataset) -> ArrayDataset:
        """A new in-memory dataset: these samples, then ``other``'s (same image shape and annotations)."""
        if self.images.shape[1:] != other.images.shape[1:] or self.annotations.keys() != other.annotations.keys():
            raise DatasetError(
                f"cannot concatenate datasets of images {self.images.shape[1:]} / {other.images.shape[1:]} "
                f"and annotations {sorted(self.annotations)} / {sorted(other.annotations)}"
            )
        if (self.instances is None) != (other.instances is None):
            raise DatasetError("cannot concatenate a dataset with per-image instances and one without")
        meta = {k: v for k, v in self.meta.items() if k not in DERIVED_META}
        return ArrayDataset(
            np.concatenate([self.images, other.images]),
            {k: np.concatenate([v, other.annotations[k]]) for k, v in self.annotations.items()},
            meta,
            instances=None if self.instances is None else self.instances.concat(other.instances),  # type: ignore[arg-type]
        )

    def batch_keys(self) -> list[str]:
        """The annotation keys a batch of this dataset carries (dense columns, and ``instances``)."""
        return [*self.annotations, *([INSTANCES_KEY] if self.instances is not None else [])]

    def require(self, *keys: str) -> None:
        """Raise a clear error if an annotation the caller needs is absent (``"instances"`` included)."""
        have = set(self.batch_keys())
        missing = [k for k in keys if k not in have]
        if missing:
            name = self.meta.get("name", "dataset")
            raise DatasetError(f"{name} lacks annotation(s) {missing}; it has {sorted(have)}")

    # ---------------------------------------------------------------- identity
    @property
    def fingerprint(self) -> str:
        """SHA-256 over the images, annotations and instances (cached in ``meta``)."""
        if "fingerprint" not in self.meta:
            self.meta["fingerprint"] = compute_fingerprint(self.images, self.annotations, self.instances)
        return str(self.meta["fingerprint"])

    # -------------------------------------------------------------------- disk
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the folder; ``meta.json`` last so a crash never leaves a 'complete' folder."""
        out = Path(directory)
        # one staging folder per process: two processes caching the same dataset at once
        # (parallel sweep workers) must not write into each other's files
        tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        np.save(tmp / IMAGES_FILE, np.ascontiguousarray(self.images))
        for key, arr in self.annotations.items():
            check_key(key)
            np.save(tmp / f"ann_{key}.npy", np.ascontiguousarray(arr))
        meta = dict(self.meta)
        meta.pop(INSTANCES_KEY, None)  # reserved: describes the files below, never stale user data
        if self.instances is not None:
            meta[INSTANCES_KEY] = self.instances.save(tmp)
        files = {p.name: file_sha256(p) for p in sorted(tmp.glob("*.npy"))}
        meta.update(
            format_version=FORMAT_VERSION,
            n=len(self),
            image_shape=list(self.images.shape[1:]),
            annotations={k: [str(v.dtype), list(v.shape[1:])] for k, v in self.annotations.items()},
            fingerprint=self.fingerprint,
            files=files,
            seal=_seal(self.fingerprint, files),
        )
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)
        try:
            tmp.rename(out)
        except OSError:
            if not (out / META_FILE).is_file():
                raise
            shutil.rmtree(tmp)  # another process completed the same folder first
        self.meta = meta
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike[str], mmap: bool = True, verify: bool = True) -> ArrayDataset:
        """Open a saved folder; arrays are memory-mapped unless ``mmap=False``.

        With ``verify`` (the default) the folder is checked against what was written:
        every file against its SHA-256 in ``meta.json`` and the fingerprint against those
        hashes, so data altered on disk (same shapes) or a wrong fingerprint is refused
        with the file named, instead of training under the fingerprint of other data.
        Folders written before per-file hashes are checked by recomputing the
        fingerprint. ``verify=False`` skips the read of every byte, for huge trusted data.
        """
        d = Path(directory)
        meta_path = d / META_FILE
        if not d.is_dir():
            raise DatasetError(f"dataset folder {d} does not exist")
        if not meta_path.is_file():
            raise DatasetError(f"{meta_path} is missing: {d} is not a complete backdoorlab dataset")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{meta_path} is not valid JSON: {exc}") from exc
        mode = "r" if mmap else None
        images = load_npy(d / IMAGES_FILE, mode)
        annotations: dict[str, np.ndarray] = {}
        for key, (dtype, shape) in meta.get("annotations", {}).items():
            arr = load_npy(d / f"ann_{key}.npy", mode)
            if str(arr.dtype) != dtype or list(arr.shape[1:]) != list(shape):
                raise DatasetError(
                    f"{d / f'ann_{key}.npy'}: expected {dtype} {shape} per sample, "
                    f"found {arr.dtype} {list(arr.shape[1:])}"
                )
            annotations[key] = arr
        if len(images) != meta.get("n"):
            raise DatasetError(f"{d / IMAGES_FILE}: meta.json says {meta.get('n')} images, file has {len(images)}")
        instances = None
        if INSTANCES_KEY in meta:
            instances = InstanceTable.load(d, meta[INSTANCES_KEY], len(images), mode)
        if verify:
            _verify(d, meta, images, annotations, instances)
        return cls(images, annotations, meta, instances=instances)


def compute_fingerprint(
    images: np.ndarray, annotations: Mapping[str, np.ndarray], instances: InstanceTable | None = None
) -> str:
    """Content hash: identical data gives an identical fingerprint, whatever its origin.

    Instances are hashed after the dense arrays and only when present, under names
    with a ``:`` (which no annotation key may contain), so a dataset without instances
    keeps the fingerprint it always had.
    """
    h = hashlib.sha256()
    items: list[tuple[str, np.ndarray]] = [("images", images), *sorted(annotations.items())]
    if instances is not None:
        items += [("instances:offsets", instances.offsets)]
        items += [(f"instances:{k}", v) for k, v in sorted(instances.columns.items())]
    for name, arr in items:
        a = np.ascontiguousarray(arr)
        h.update(f"{name}:{a.dtype}:{a.shape};".encode())
        if a.size:  # an empty array has no bytes (and memoryview refuses to cast a zero-sized shape)
            h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


def load_dataset(directory: str | os.PathLike[str], mmap: bool = True, verify: bool = True) -> ArrayDataset:
    """Open a dataset folder written by :meth:`ArrayDataset.save` (verified unless ``verify=False``)."""
    return ArrayDataset.load(directory, mmap=mmap, verify=verify)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks (no second copy of a large array in memory)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _seal(fingerprint: str, files: Mapping[str, str]) -> str:
    """Ties the fingerprint to the file hashes: editing either alone breaks it."""
    return hashlib.sha256(json.dumps([fingerprint, dict(sorted(files.items()))]).encode()).hexdigest()[:16]


def _verify(
    d: Path,
    meta: Mapping[str, Any],
    images: np.ndarray,
    annotations: Mapping[str, np.ndarray],
    instances: InstanceTable | None,
) -> None:
    """Refuse a folder whose bytes or fingerprint are not those it was written with (see :meth:`ArrayDataset.load`)."""
    fingerprint = meta.get("fingerprint")
    files = meta.get("files")
    if files is None:  # written before per-file hashes: the content fingerprint is the only record
        actual = compute_fingerprint(images, annotations, instances)
        if actual != fingerprint:
            raise DatasetError(
                f"{d / META_FILE}: the data no longer matches its fingerprint {fingerprint!r} (it hashes to "
                f"{actual!r}): a file of {d} was altered, or the fingerprint was edited"
            )
        return
    on_disk = {p.name for p in d.glob("*.npy")}
    for name in sorted(on_disk - set(files)):
        raise DatasetError(f"{d / name}: not among the files {d / META_FILE} records")
    for name, want in sorted(files.items()):
        path = d / name
        if not path.is_file():
            raise DatasetError(f"{path} is missing (recorded in {d / META_FILE})")
        got = file_sha256(path)
        if got != want:
            raise DatasetError(
                f"{path}: its contents changed since the dataset was written (sha256 {got[:12]}..., recorded "
                f"{want[:12]}...); rebuild the dataset, or open it without verification if the change is trusted"
            )
    if meta.get("seal") != _seal(str(fingerprint), files):
        raise DatasetError(
            f"{d / META_FILE}: the fingerprint {fingerprint!r} or the file hashes were edited (they no longer "
            "match each other)"
        )
