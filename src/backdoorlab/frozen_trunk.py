"""Fine-tuning only a model's last layers on its frozen trunk's features, computed once.

Why: the face-recognition thesis built its zoo of 52 networks by fine-tuning only
``last_linear`` + ``last_bn`` of one pretrained network. With the trunk frozen, its
output for a training image never changes, so it is computed once and the last layers
train on those features in seconds instead of minutes.

The cache is content-addressed: one file per trunk (keyed by its weights and buffers)
holds the features of every image it has seen, each under a digest of the image's pixels.
So every fine-tune of one base model shares it whatever its split: the thesis's zoo
resamples the train/test split per network, and a cache keyed by the (split) dataset
recomputed 400 MB of features for each of them.

The model contract (checked on an example batch): ``trunk(x)`` gives the features, and
the layers named in ``LAST_LAYERS``, applied in that order, turn them into exactly what
``model(x)`` returns. :class:`LastLayers` is those layers as a module of their own, the
one the generic training loop then trains (the trunk never runs in training, so its
BatchNorm statistics stay as they were).

Evaluation reuses the cache too: the clean test images' features are the trunk's, so
their predictions come from the last layers alone (the task's ``forward`` then sees
features where it would see images: this holds for tasks whose forward only calls the
model, as the recognition task's does). Triggered images still go through the whole model.

Poisoned samples are passed through the attack's batch transform (trigger and relabel)
*before* the trunk, once: a trigger with per-epoch randomness is frozen at its first
draw. Only dense annotation columns are supported (the recognition task's identities).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from backdoorlab.batches import BatchTransform
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import ConfigError, DatasetError, ModelContractError

Tensor = torch.Tensor
FEATURE_BATCH = 256
#: tolerance of the contract check model(x) == LastLayers(trunk(x)) (float32, eval mode)
CONTRACT_ATOL = 1e-4


class LastLayers(nn.Module):
    """A model's ``LAST_LAYERS`` (shared, not copied) applied in order to trunk features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        names = tuple(getattr(model, "LAST_LAYERS", ()))
        missing = [n for n in names if not isinstance(getattr(model, n, None), nn.Module)]
        if not names or missing or not callable(getattr(model, "trunk", None)):
            raise ModelContractError(
                f"{type(model).__name__} cannot be fine-tuned on frozen features: it needs trunk(x) and a "
                f"LAST_LAYERS tuple of its submodules (missing: {', '.join(missing) or 'LAST_LAYERS'})"
            )
        self.names = names
        self.layers = nn.ModuleList(getattr(model, n) for n in names)

    def forward(self, features: Tensor) -> Tensor:
        for layer in self.layers:
            features = layer(features)
        return features


class _Tail(nn.Module):
    """Stages applied in order to flattened features of the stage before them (unflattened to ``shape`` first)."""

    def __init__(self, stages: Sequence[nn.Module], shape: tuple[int, ...]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.shape = shape

    def forward(self, features: Tensor) -> Tensor:
        out = features.reshape(len(features), *self.shape)
        for stage in self.stages:
            out = stage(out)
        return out


class StagedTrunk(nn.Module):
    """A model cut before one of its named stages: the stages before it are the frozen trunk, the rest train.

    Why: the thesis's multi-layer slice (section 4.7) fine-tunes more than the last layers,
    and it stays as cheap as a last-layer fine-tune when the frozen part's output is cached
    like the trunk's. The model names its stages (``model.stages()``: (name, module) pairs
    whose composition on ``model.prepare(x)`` is ``model(x)``); ``trunk(x)`` runs those before
    ``start`` and flattens, so the feature cache and :class:`LastLayers` work unchanged
    (``LAST_LAYERS = ("tail",)``). The modules are the model's own (shared, not copied), so
    training the tail trains the model.

    Args:
        model: the model to cut.
        start: the first trained stage's name.
        example: a batch of the model's input, to check the cut and learn the feature shape.
    """

    LAST_LAYERS = ("tail",)

    def __init__(self, model: nn.Module, start: str, example: Tensor) -> None:
        super().__init__()
        stages = getattr(model, "stages", None)
        prepare = getattr(model, "prepare", None)
        if not callable(stages) or not callable(prepare):
            raise ModelContractError(
                f"{type(model).__name__} does not name its stages (stages() and prepare()): "
                "it can only be fine-tuned from its LAST_LAYERS (leave out train.trainable_from)"
            )
        named = list(stages())
        names = [n for n, _ in named]
        if start not in names[1:]:
            raise ConfigError(
                f"train.trainable_from: {start!r} is not a stage of {type(model).__name__} after its first; "
                f"its stages: {', '.join(names[1:])}"
            )
        cut = names.index(start)
        self.start = start
        self.prepare = prepare
        self.front = nn.ModuleList(m for _, m in named[:cut])
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                shape = tuple(self._front(example).shape[1:])
                self.tail = _Tail([m for _, m in named[cut:]], shape)
                direct, staged = model(example), self(example)
        finally:
            model.train(was)
            self.training = was  # the model's mode (a child's train() would otherwise flip the shared layers)
        if not torch.allclose(direct, staged, atol=CONTRACT_ATOL):
            raise ModelContractError(f"{type(model).__name__}: its stages do not compose to model(x)")

    def _front(self, x: Tensor) -> Tensor:
        out = self.prepare(x)
        for stage in self.front:
            out = stage(out)
        return out

    def trunk(self, x: Tensor) -> Tensor:
        """The frozen stages' output, flattened to (B, F): what the cache stores and the tail reads."""
        return self._front(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.tail(self.trunk(x))


@torch.no_grad()
def check_last_layers_contract(model: nn.Module, last: LastLayers, example: Tensor) -> None:
    """Refuse a model whose forward is not ``LAST_LAYERS(trunk(x))`` (fine-tuning would train something else)."""
    was = model.training
    model.eval()
    try:
        direct = model(example)
        split = last(model.trunk(example))  # type: ignore[operator]
    finally:
        model.train(was)
    if not torch.allclose(direct, split, atol=CONTRACT_ATOL):
        raise ModelContractError(
            f"{type(model).__name__}: model(x) is not {' -> '.join(last.names)} applied to trunk(x); "
            "it cannot be fine-tuned on frozen features"
        )


class FeatureDataset:
    """Trunk features (N, F) float32 and dense annotation columns: what the training loop reads of a dataset."""

    def __init__(self, features: np.ndarray, annotations: dict[str, np.ndarray], fingerprint: str = "") -> None:
        self.features = np.asarray(features, np.float32)
        self.annotations = annotations
        self.fingerprint = fingerprint
        for key, col in annotations.items():
            if len(col) != len(self.features):
                raise DatasetError(f"annotation '{key}' has {len(col)} rows for {len(self.features)} features")

    def __len__(self) -> int:
        return len(self.features)

    def require(self, *keys: str) -> None:
        missing = [k for k in keys if k not in self.annotations]
        if missing:
            raise DatasetError(f"the feature set lacks annotations {missing}")

    def batch(self, indices: np.ndarray | Sequence[int]) -> tuple[Tensor, dict[str, Tensor]]:
        idx = np.asarray(indices, np.int64)
        ann = {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in self.annotations.items()}
        return torch.from_numpy(self.features[idx]), ann

    def iter_batches(self, batch_size: int) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        """In order (what :meth:`backdoorlab.tasks.base.Task.predict` reads)."""
        for start in range(0, len(self), batch_size):
            yield self.batch(np.arange(start, min(start + batch_size, len(self))))


def trunk_key(model: nn.Module) -> str:
    """A key of the trunk's weights and buffers (the last layers left out): equal keys give equal features."""
    last = set(getattr(model, "LAST_LAYERS", ()))
    h = hashlib.sha256(b"trunk-features/2")
    for name, value in sorted(model.state_dict().items()):
        if name.split(".", 1)[0] in last:
            continue
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def image_digests(images: np.ndarray) -> np.ndarray:
    """(N,) 16-byte BLAKE2b digests of each image's pixels (and shape): the cache's per-image key."""
    prefix = hashlib.blake2b(f"{images.dtype}{images.shape[1:]}".encode(), digest_size=16)
    out = []
    for img in images:
        h = prefix.copy()
        h.update(np.ascontiguousarray(img).tobytes())
        out.append(h.digest())
    return np.array(out, dtype="S16")


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(digests, features) of a cache file, or None when it is missing or damaged (then it is rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            digests, features = f["digests"], f["features"]
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return (digests, features) if len(digests) == len(features) and features.ndim == 2 else None


def _write_cache(path: Path, digests: np.ndarray, features: np.ndarray) -> None:
    """Merge with what another process may have added meanwhile, then replace the file atomically."""
    current = _read_cache(path)
    if current is not None and current[1].shape[1] == features.shape[1]:
        new = ~np.isin(current[0], digests)
        digests, features = np.concatenate([digests, current[0][new]]), np.concatenate([features, current[1][new]])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, digests=digests, features=features)
    os.replace(tmp, path)


@torch.no_grad()
def _trunk_batches(
    model: nn.Module, batches: Any, total: int, device: torch.device | str, progress: bool
) -> np.ndarray:
    out = []
    with tqdm(total=total, desc="trunk features", unit="img", leave=False, disable=not progress) as bar:
        for images in batches:
            out.append(model.trunk(images.to(device)).float().cpu().numpy())  # type: ignore[operator]
            bar.update(len(images))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def clean_trunk_features(
    model: nn.Module,
    data: ArrayDataset,
    device: torch.device | str = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """(N, F) trunk features of every image of ``data`` in eval mode; only images the cache lacks run the trunk."""
    if cache_dir is None:
        return _trunk_features(model, data, device, progress)
    path = Path(cache_dir) / "trunk-features" / f"{trunk_key(model)}.npz"
    digests = image_digests(data.images)
    cached = _read_cache(path)
    known_digests, known = cached if cached is not None else (np.zeros(0, "S16"), None)
    where = {d: i for i, d in enumerate(known_digests.tolist())}
    pos = np.array([where.get(d, -1) for d in digests.tolist()], np.int64)
    missing = np.flatnonzero(pos < 0)
    if not len(missing):
        assert known is not None
        return known[pos]
    new_digests, first = np.unique(digests[missing], return_index=True)  # sorted; identical images run once
    computed = _trunk_features(model, data.subset(missing[first]), device, progress)
    pos[missing] = len(known_digests) + np.searchsorted(new_digests, digests[missing])  # new rows go after the known
    known_digests = np.concatenate([known_digests, new_digests])
    known = computed if known is None else np.concatenate([known, computed])
    _write_cache(path, known_digests, known)
    return known[pos]


def _trunk_features(model: nn.Module, data: ArrayDataset, device: torch.device | str, progress: bool) -> np.ndarray:
    was = model.training
    model.eval()
    try:
        return _trunk_batches(model, (x for x, _ in data.iter_batches(FEATURE_BATCH)), len(data), device, progress)
    finally:
        model.train(was)


def frozen_feature_set(
    model: nn.Module,
    base: ArrayDataset,
    trained: ArrayDataset,
    sources: np.ndarray,
    transformed: np.ndarray,
    transform: BatchTransform | None,
    device: torch.device | str = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> FeatureDataset:
    """The features and annotations the last layers train on, one row per sample of ``trained``.

    ``base`` is the clean training set (its features come from the cache); ``trained`` is
    the set as trained (``base``, or ``base`` with poisoned copies appended), whose row
    ``i`` is a copy of ``base`` row ``sources[i]``. The rows in ``transformed`` (poisoned
    or noise-mode samples) go through ``transform`` first, and take its annotations.
    """
    if trained.instances is not None:
        raise ConfigError("train.trainable: last supports datasets with dense annotations only (no instance tables)")
    clean = clean_trunk_features(model, base, device, cache_dir, progress)
    feats = clean[sources].copy()
    annotations = {k: np.array(v) for k, v in trained.annotations.items()}
    rows = np.asarray(transformed, np.int64)
    if len(rows) and transform is not None:
        was = model.training
        model.eval()
        try:
            for start in range(0, len(rows), FEATURE_BATCH):
                idx = rows[start : start + FEATURE_BATCH]
                images, ann = trained.batch(idx)
                images, ann = transform(images, ann, idx)
                feats[idx] = _trunk_batches(model, [images], len(idx), device, progress=False)
                for k, v in ann.items():
                    annotations[k][idx] = v.numpy()
        finally:
            model.train(was)
    return FeatureDataset(feats, annotations, fingerprint=trained.fingerprint)


def load_initial_weights(model: nn.Module, source: str | os.PathLike[str]) -> None:
    """Load ``model.init`` weights (a run folder's ``model.safetensors`` or a file) strictly into ``model``."""
    from backdoorlab.models.checkpoint import WEIGHTS_FILE, read_state_dict

    p = Path(source)
    weights = p / WEIGHTS_FILE if p.is_dir() else p
    state = read_state_dict(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(
            f"model.init: {weights} does not fit {type(model).__name__} as configured (model.kwargs): {first}"
        ) from None
