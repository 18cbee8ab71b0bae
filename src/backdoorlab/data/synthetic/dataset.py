"""Synthetic gaze datasets: a validated spec -> an :class:`ArrayDataset`, cached on disk.

Determinism: identity ``k`` of a spec is drawn from ``default_rng([seed, 0, k])`` and
its images from ``default_rng([seed, 1, k])``, and each block of at most
``CHUNK`` images of one identity gets its own noise generator. So the same spec gives
byte-identical data whatever the batching, and adding identities leaves the existing
ones unchanged.

Speed (``bench/renderer_throughput.py``): the ray-caster is a long chain of
elementwise tensor operations on batches of ``CHUNK`` images. Eagerly, one batch per
core at a time scales far better than torch's intra-op threads (each operation is too
short to split), so batches are shared out over a pool of Python threads, each with
one torch thread: torch releases the GIL inside every operation, and unlike worker
processes, threads cost nothing to start (a process pays ~2 s to import torch, a
sixth of a 12,000-image dataset) and write their images straight into the result.
``torch.compile`` fuses the chain into a few loops but costs ~26 s to compile in each
new process, so it is used only from ``COMPILE_MIN_IMAGES`` on (``compile="auto"``),
in this thread with all of torch's threads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.synthetic import faces, render
from backdoorlab.data.synthetic.params import (
    IdentityParams,
    ImageParams,
    SamplingRanges,
    concat_rows,
    sample_identities,
    sample_images,
)
from backdoorlab.errors import DatasetError

RENDERER_VERSION = "2"  # bump whenever the pixels a spec produces change (it keys the cache)
CHUNK = 64
COMPILE_MIN_IMAGES = 50_000  # compiling costs ~26 s; it pays for itself from ~45k images
MAX_WORKERS = 4  # rendering threads at most (one per core)


class SyntheticGazeSpec(BaseModel):
    """What to render. Every field is part of the cache key."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["face", "eye"] = "face"
    identities: int = Field(30, ge=1, le=100_000)
    images_per_identity: int = Field(200, ge=1, le=100_000)
    size: int = Field(64, ge=16, le=224, description="face crop side in pixels (kind=face)")
    eye_height: int = Field(36, ge=12, le=224)
    eye_width: int = Field(60, ge=12, le=224)
    seed: int = 0
    gaze_range: float = Field(0.5, gt=0.0, le=1.2, description="|pitch|, |yaw| <= this (radians)")
    blur_max: float = Field(0.7, ge=0.0, le=3.0)
    noise_max: float = Field(0.03, ge=0.0, le=0.3)

    @model_validator(mode="after")
    def _not_too_big(self) -> SyntheticGazeSpec:
        if self.identities * self.images_per_identity > 2_000_000:
            raise ValueError("identities * images_per_identity must be <= 2,000,000")
        return self

    @property
    def n_images(self) -> int:
        return self.identities * self.images_per_identity

    def ranges(self) -> SamplingRanges:
        g = self.gaze_range
        return SamplingRanges(gaze_pitch=(-g, g), gaze_yaw=(-g, g), blur_max=self.blur_max, noise_max=self.noise_max)

    def cache_key(self) -> str:
        payload = json.dumps({"renderer": RENDERER_VERSION, **self.model_dump()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def identity_params(spec: SyntheticGazeSpec, identity: int) -> IdentityParams:
    return sample_identities(np.random.default_rng([spec.seed, 0, identity]), 1)


def view_params(spec: SyntheticGazeSpec, identity: int) -> ImageParams:
    return sample_images(np.random.default_rng([spec.seed, 1, identity]), spec.images_per_identity, spec.ranges())


Block = tuple[int, int, int]  # (identity, first image, end image)


def default_workers() -> int:
    """Rendering threads by default: torch's thread budget of this process, up to ``MAX_WORKERS``.

    Why torch's budget and not the core count: a sweep gives each run a share of the cores
    (its torch threads), and a process pinned to fewer cores than the machine has must not
    start a thread per core.
    """
    return max(1, min(torch.get_num_threads(), MAX_WORKERS))


def synthesize(
    spec: SyntheticGazeSpec,
    compile: bool | Literal["auto"] = "auto",
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ArrayDataset:
    """Render the dataset described by ``spec`` in memory.

    ``workers`` threads (default: :func:`default_workers`) render the
    batches eagerly, each with one torch thread; compiled rendering runs in this thread
    alone, with all of torch's threads (compiling from several threads at once is not
    safe). The bytes do not depend on ``workers``: every batch is the same whoever
    renders it.
    """
    use_compile = spec.n_images >= COMPILE_MIN_IMAGES if compile == "auto" else bool(compile)
    batches = _batches(spec)
    if workers is None:
        workers = default_workers()
    workers = 1 if use_compile else max(1, min(workers, len(batches)))
    fn = _render_faces_fn(use_compile)
    h, w = (spec.size, spec.size) if spec.kind == "face" else (spec.eye_height, spec.eye_width)
    images = np.empty((spec.n_images, h, w, 3), np.uint8)
    starts = np.cumsum([0] + [sum(e - s for _, s, e in batch) for batch in batches])
    anns: list[dict[str, np.ndarray]] = [{} for _ in batches]

    def render_one(i: int) -> int:
        rendered = _render_blocks(spec, fn, batches[i], use_compile)
        images[starts[i] : starts[i + 1]] = rendered.images
        anns[i] = rendered.annotations
        return int(starts[i + 1])

    if workers == 1:
        for i in range(len(batches)):
            done = render_one(i)
            if progress:
                progress(done, spec.n_images)
    else:
        threads = torch.get_num_threads()
        try:
            with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as ex:
                for done in ex.map(render_one, range(len(batches))):
                    if progress:
                        progress(done, spec.n_images)
        finally:
            torch.set_num_threads(threads)  # the pool's threads changed torch's default for new threads
    ann = {k: np.concatenate([a[k] for a in anns]) for k in anns[0]}
    ann["identity"] = np.repeat(np.arange(spec.identities, dtype=np.int64), spec.images_per_identity)
    meta = {
        "name": f"synthetic-{spec.kind}",
        "source": "backdoorlab renderer",
        "renderer_version": RENDERER_VERSION,
        "spec": spec.model_dump(),
    }
    return ArrayDataset(images, ann, meta)


_COMPILED: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {}


def _render_faces_fn(use_compile: bool) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    if not use_compile:
        return render.render_faces
    if "faces" not in _COMPILED:
        _COMPILED["faces"] = torch.compile(render.render_faces, dynamic=False)
    return _COMPILED["faces"]


def _batches(spec: SyntheticGazeSpec) -> list[list[Block]]:
    """Blocks of at most ``CHUNK`` images of one identity, packed in order into batches of at most ``CHUNK``."""
    ipi = spec.images_per_identity
    batches: list[list[Block]] = [[]]
    size = 0
    for k in range(spec.identities):
        for s in range(0, ipi, CHUNK):
            e = min(s + CHUNK, ipi)
            if size + (e - s) > CHUNK and batches[-1]:
                batches.append([])
                size = 0
            batches[-1].append((k, s, e))
            size += e - s
    return batches


def _render_blocks(
    spec: SyntheticGazeSpec,
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    blocks: list[Block],
    use_compile: bool,
) -> faces.Rendered:
    """Render one batch of blocks: every parameter is drawn from the block's own seeds."""
    pending: list[tuple[IdentityParams, ImageParams, np.ndarray, int]] = []
    views: dict[int, ImageParams] = {}
    for k, s, e in blocks:
        if k not in views:
            views[k] = view_params(spec, k)
        view = views[k].take(np.arange(s, e))
        ident = identity_params(spec, k).take(np.zeros(e - s, int))
        sides = np.random.default_rng([spec.seed, 2, k, s]).integers(0, 2, e - s)
        pending.append((ident, view, sides, _noise_seed(spec.seed, k, s)))
    return _render_batch(spec, fn, pending, pad_to=CHUNK if use_compile else None)


def _noise_seed(seed: int, identity: int, start: int) -> int:
    return int(np.random.default_rng([seed, 3, identity, start]).integers(0, 2**62))


def _render_batch(
    spec: SyntheticGazeSpec,
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    pending: list[tuple[IdentityParams, ImageParams, np.ndarray, int]],
    pad_to: int | None,
) -> faces.Rendered:
    """Render one batch; noise is drawn per block so batching cannot change it.

    With ``pad_to`` the batch is padded (with copies of its first face) to a fixed size,
    so that a compiled renderer never recompiles for a short last batch.
    """
    ident = concat_rows([p[0] for p in pending])
    view = concat_rows([p[1] for p in pending])
    sides = np.concatenate([p[2] for p in pending])
    n = len(view.gaze)
    if pad_to is not None and n < pad_to:
        take = np.r_[np.arange(n), np.zeros(pad_to - n, int)]
        ident, view, sides = ident.take(take), view.take(take), sides[take]
    b = len(view.gaze)
    if spec.kind == "face":
        cam, trans = faces.face_camera(b, spec.size)
    else:
        cam, trans = faces.eye_camera(ident, view, sides, spec.eye_height, spec.eye_width)
    noise = torch.zeros(b, cam.height, cam.width, 3)
    at = 0
    for p in pending:
        m = len(p[1].gaze)
        noise[at : at + m] = torch.randn((m, cam.height, cam.width, 3), generator=torch.Generator().manual_seed(p[3]))
        at += m
    # quantised down (a slightly larger eye window is harmless) so that a compiled
    # renderer sees the same constant batch after batch
    px_min = math.floor(float((trans.norm(dim=-1) / cam.focal).min()) * 20) / 20
    rgb, alpha = fn(ident, view, cam, trans, px_min=px_min)
    radius = max(1, math.ceil(3 * spec.blur_max))
    images = render.finish_images(rgb, alpha, view, noise, radius).numpy()[:n]
    ann = {k: v[:n] for k, v in faces.annotate(ident, view, cam, trans).items()}
    if spec.kind == "eye":
        ann["eye_side"] = np.asarray(sides[:n], dtype=np.int64)
    return faces.Rendered(images, ann)


def default_cache_dir() -> Path:
    """``$BACKDOORLAB_CACHE`` or ``~/.cache/backdoorlab``."""
    return Path(os.environ.get("BACKDOORLAB_CACHE", Path.home() / ".cache" / "backdoorlab"))


def load_or_synthesize(
    spec: SyntheticGazeSpec,
    cache_dir: str | os.PathLike[str] | None = None,
    compile: bool | Literal["auto"] = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> ArrayDataset:
    """Return the cached dataset for ``spec``, rendering and caching it on first use."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / "synthetic" / spec.cache_key()
    cached = load_cache_entry(folder, stacklevel=3)
    if cached is not None:
        return cached
    return store_cache_entry(synthesize(spec, compile=compile, progress=progress), folder)


def load_cache_entry(folder: Path, stacklevel: int = 2) -> ArrayDataset | None:
    """The verified dataset cached in ``folder``, or None if there is none or it is damaged.

    A damaged or altered entry (any file whose SHA-256 differs from the one recorded,
    an edited fingerprint) is never trusted: it is reported with a warning and the
    caller renders it again. Shared by every synthetic dataset kind.
    """
    if not (folder / "meta.json").is_file():
        return None
    try:
        return ArrayDataset.load(folder)
    except DatasetError as exc:
        warnings.warn(f"rebuilding the synthetic cache entry: {exc}", stacklevel=stacklevel)
        return None


def store_cache_entry(ds: ArrayDataset, folder: Path) -> ArrayDataset:
    """Save ``ds`` as the cache entry ``folder`` (sealed, meta.json last) and serve it from disk."""
    ds.save(folder)
    return ArrayDataset.load(folder)
