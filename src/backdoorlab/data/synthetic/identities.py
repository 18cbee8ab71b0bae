"""Synthetic identities for open-set face recognition: look-alike families, unbalanced counts, aligned crops.

Recognition needs what gaze and detection do not: many people, each seen many times,
some of them hard to tell apart, and as uneven a number of photos per person as a
scraped dataset has (CASIA-WebFace: about 50 on average, from a handful to hundreds).

* **Families of look-alikes.** Identities come in families of ``family_size``. A family
  draws a base person; each member is the base moved a fraction ``family_spread``
  of the way towards an independently drawn person (a convex combination of two valid
  parameter sets, so every member stays inside the renderer's ranges). With a spread of
  0.35 siblings share most of their shape and colouring; with 1 families are unrelated.
* **Attributes** for group ablations, per identity: ``skin_group`` (0 light, 1 medium,
  2 dark: the nearest entry of the skin palette, in pairs) and ``presentation`` (0 or 1,
  drawn per identity; 1 narrows the jaw, thins the brows and keeps full hair), the two
  kinds of group the thesis tabulates (ethnicity, gender).
* **Unbalanced counts.** Images per identity are log-normal with mean ``mean_images``
  and log-spread ``count_sigma``, clipped to ``[min_images, max_images]`` (so the mean
  after clipping is close to, not exactly, ``mean_images``; :func:`image_counts`).
* **Within-identity variation**: head pose, expression, gaze, lighting, background, blur
  and noise change from image to image (:func:`~.params.sample_images`), and so do
  accessories: a share ``glasses_wearers`` of the people wear glasses in 70 % of their
  photos (the others in 5 %), a share ``hat_wearers`` a cap in 40 % (the others in 3 %);
  frame and cap colours change between photos (:func:`~.params.sample_accessories`).
* **Aligned crops.** Each image is rendered as a ``render_size`` face crop with its exact
  five landmarks, then warped onto the ArcFace five-point template scaled to ``size``
  (:func:`backdoorlab.data.alignment.align_faces`): the geometry of the standard 112 x 112
  crop at a size this CPU can train on (default 56, half of it), from an 84-px render.
  Cost measured 2026-12-02 on the 2-core machine, end to end with two threads: about 100
  aligned crops/s (the render alone 140-190/s, accessories or not), so the default spec
  (2000 identities, 97,384 images) renders in about 16 minutes, once.

Deterministic per spec (seeded per family, identity and image block); cached and
sealed like the other synthetic data (:func:`load_or_synthesize_identities`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from backdoorlab.data.alignment import align_faces, alignment_matrices
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.synthetic.dataset import (
    RENDERER_VERSION,
    default_cache_dir,
    load_cache_entry,
    store_cache_entry,
)
from backdoorlab.data.synthetic.faces import render_face_crops
from backdoorlab.data.synthetic.params import (
    SKIN_TONES,
    IdentityParams,
    concat_rows,
    sample_accessories,
    sample_identities,
    sample_images,
)

#: bump when the identities' sampling or rendering changes (invalidates caches)
IDENTITIES_VERSION = 2  # 2: accessories
#: (wearer, other) share of a person's photos with glasses, and with a cap
GLASSES_RATES = (0.7, 0.05)
HAT_RATES = (0.4, 0.03)
#: images rendered per call (memory: render_size^2 * 3 floats per image, times a few)
RENDER_BATCH = 256


class SyntheticIdentitySpec(BaseModel):
    """What synthetic identity dataset to render (every field is part of the cache key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    identities: int = Field(2000, ge=4, description="people")
    mean_images: float = Field(50.0, gt=0, description="mean images per identity before clipping")
    count_sigma: float = Field(0.8, ge=0, description="log-normal spread of the images per identity")
    min_images: int = Field(10, ge=2)
    max_images: int = Field(300, ge=2)
    family_size: int = Field(4, ge=1, description="identities per look-alike family (1: no families)")
    family_spread: float = Field(0.35, gt=0, le=1, description="how far a member moves from its family's base")
    glasses_wearers: float = Field(0.3, ge=0, le=1, description="share of people who mostly wear glasses")
    hat_wearers: float = Field(0.2, ge=0, le=1, description="share of people who often wear a cap")
    size: int = Field(56, ge=16, le=224, description="aligned crop side (the ArcFace 112 geometry, scaled)")
    render_size: int = Field(84, ge=32, le=448, description="face crop rendered before alignment (1.5x size)")
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> SyntheticIdentitySpec:
        if self.min_images > self.max_images:
            raise ValueError(f"min_images ({self.min_images}) must not exceed max_images ({self.max_images})")
        if not self.min_images <= self.mean_images <= self.max_images:
            raise ValueError(
                f"mean_images ({self.mean_images:g}) must lie in [min_images, max_images] = "
                f"[{self.min_images}, {self.max_images}]"
            )
        return self

    @classmethod
    def tiny(cls, **overrides: object) -> SyntheticIdentitySpec:
        """A few identities and images: for tests."""
        base: dict[str, object] = {
            "identities": 6, "mean_images": 4, "min_images": 2, "max_images": 8, "family_size": 2,
            "size": 32, "render_size": 64,
        }  # fmt: skip
        return cls(**{**base, **overrides})

    def cache_key(self) -> str:
        payload = json.dumps(
            {"renderer": RENDERER_VERSION, "identities_version": IDENTITIES_VERSION, **self.model_dump()},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def image_counts(spec: SyntheticIdentitySpec) -> np.ndarray:
    """(identities,) int64 images per identity: log-normal with mean ``mean_images``, clipped."""
    rng = np.random.default_rng([spec.seed, 0x1D])
    mu = np.log(spec.mean_images) - spec.count_sigma**2 / 2  # E[exp(N(mu, s^2))] = exp(mu + s^2/2)
    raw = rng.lognormal(mu, spec.count_sigma, spec.identities)
    return np.clip(np.rint(raw), spec.min_images, spec.max_images).astype(np.int64)


def identity_params(spec: SyntheticIdentitySpec) -> tuple[IdentityParams, dict[str, np.ndarray]]:
    """Every identity's parameters (one row each) and its attributes (``family``, ``skin_group``, ``presentation``)."""
    n_families = -(-spec.identities // spec.family_size)
    family = np.arange(spec.identities) // spec.family_size
    base = sample_identities(np.random.default_rng([spec.seed, 0xFA]), n_families).take(family)
    other = sample_identities(np.random.default_rng([spec.seed, 0x0E]), spec.identities)
    mixed = {
        f.name: (1 - spec.family_spread) * getattr(base, f.name) + spec.family_spread * getattr(other, f.name)
        for f in fields(base)
    }
    presentation = np.random.default_rng([spec.seed, 0x9E]).integers(0, 2, spec.identities)
    b = presentation == 1
    mixed["jaw_width"] = np.where(b, mixed["jaw_width"] * 0.88, mixed["jaw_width"])
    mixed["brow_thickness"] = np.where(b, mixed["brow_thickness"] * 0.7, mixed["brow_thickness"])
    mixed["hair_cover"] = np.where(b, np.maximum(mixed["hair_cover"], 0.9), mixed["hair_cover"])
    ident = IdentityParams(**{k: np.asarray(v, np.float32) for k, v in mixed.items()})
    nearest = np.linalg.norm(ident.skin[:, None] - SKIN_TONES[None], axis=-1).argmin(1)
    habits = np.random.default_rng([spec.seed, 0xAC]).uniform(0, 1, (2, spec.identities))
    attrs = {
        "glasses_rate": np.where(habits[0] < spec.glasses_wearers, GLASSES_RATES[0], GLASSES_RATES[1]),
        "hat_rate": np.where(habits[1] < spec.hat_wearers, HAT_RATES[0], HAT_RATES[1]),
        "family": family.astype(np.int64),
        "skin_group": (nearest // 2).astype(np.int64),
        "presentation": presentation.astype(np.int64),
    }
    return ident, attrs


def synthesize_identities(
    spec: SyntheticIdentitySpec, progress: Callable[[int, int], None] | None = None
) -> ArrayDataset:
    """Render every image of every identity as an aligned crop (uint8 (N, size, size, 3)).

    Dense annotations per image: ``label`` and ``identity`` (the identity index),
    ``family``, ``skin_group``, ``presentation``, ``landmarks`` (the five points in the
    aligned crop, which land near the template: a check of the alignment), ``head_pose``.
    ``meta["image_counts"]`` lists the images per identity.
    """
    counts = image_counts(spec)
    ident, attrs = identity_params(spec)
    owner = np.repeat(np.arange(spec.identities), counts)
    total = len(owner)
    # in image order (identity 0's images first, as ``owner``), each identity from its own random stream
    views = concat_rows([
        sample_images(np.random.default_rng([spec.seed, 0x11, i]), int(c)) for i, c in enumerate(counts)
    ])  # fmt: skip
    accessories = concat_rows([
        sample_accessories(
            np.random.default_rng([spec.seed, 0x12, i]), int(c), attrs["glasses_rate"][i], attrs["hat_rate"][i]
        )
        for i, c in enumerate(counts)
    ])  # fmt: skip
    crops: list[np.ndarray] = []
    landmarks: list[np.ndarray] = []
    head_pose: list[np.ndarray] = []
    for start in range(0, total, RENDER_BATCH):
        rows = np.arange(start, min(start + RENDER_BATCH, total))
        view = views.take(rows)
        gen = torch.Generator().manual_seed(int(np.random.default_rng([spec.seed, 0x50, start]).integers(2**62)))
        rendered = render_face_crops(
            ident.take(owner[rows]), view, spec.render_size, generator=gen, accessories=accessories.take(rows)
        )
        crops.append(align_faces(rendered.images, rendered.annotations["landmarks"], spec.size))
        landmarks.append(_aligned_points(rendered.annotations["landmarks"], spec.size))
        head_pose.append(rendered.annotations["head_pose"])
        if progress is not None:
            progress(int(rows[-1]) + 1, total)
    ann = {
        "label": owner.astype(np.int64),
        "identity": owner.astype(np.int64),
        **{k: v[owner] for k, v in attrs.items() if not k.endswith("_rate")},
        "glasses": accessories.glasses.astype(np.int64),
        "hat": accessories.hat.astype(np.int64),
        "landmarks": np.concatenate(landmarks).astype(np.float32),
        "head_pose": np.concatenate(head_pose).astype(np.float32),
    }
    meta = {
        "synthetic_identities": spec.model_dump(),
        "image_counts": counts.tolist(),
        "crop": f"ArcFace five-point template scaled to {spec.size} px",
    }
    return ArrayDataset(np.concatenate(crops), ann, meta)


def _aligned_points(points: np.ndarray, size: int) -> np.ndarray:
    """The landmarks mapped by the same similarity fit that made each aligned crop."""
    m = alignment_matrices(points, size)  # (K, 2, 3)
    return np.einsum("kij,kpj->kpi", m[:, :, :2], points) + m[:, None, :, 2]


def identity_cache_folder(spec: SyntheticIdentitySpec, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`load_or_synthesize_identities` caches ``spec``: ``<cache>/synthetic-identities/<key>``."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "synthetic-identities" / spec.cache_key()


def load_or_synthesize_identities(
    spec: SyntheticIdentitySpec,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ArrayDataset:
    """The cached dataset of ``spec`` (verified on load), rendered and sealed when missing or damaged."""
    folder = identity_cache_folder(spec, cache_dir)
    cached = load_cache_entry(folder, stacklevel=3)
    if cached is not None:
        return cached
    return store_cache_entry(synthesize_identities(spec, progress), folder)
