"""Synthetic face-detection scenes: a validated spec -> one :class:`ArrayDataset` per split, cached.

Each scene is a square canvas with 0 to ``max_faces`` faces of varied identity, size,
pose, lighting and position over a cluttered background. Faces are placed like people
at different distances: a larger face is nearer and hides the faces behind it, and a
face may stand partly outside the picture. Every face gets exact ground truth in the
image's :class:`~backdoorlab.data.instances.InstanceTable` (:data:`SCENE_SCHEMA`).

Ground truth (coordinates follow :mod:`backdoorlab.data.instances`: pixel centres at
integer coordinates, so the canvas spans ``[0, size - 1]`` in x and y):

* ``boxes``: the face box (face outline from hairline to chin, plus the five
  landmarks) *clipped to the canvas*: like WIDER FACE we annotate the visible extent
  of a face cut by the border, not where it would be.
* ``landmarks``: exact projections (RetinaFace order), also when hidden.
* ``visible``: the landmark lies on the canvas and is not covered by a nearer face
  (the nearer faces' accumulated coverage at its pixel is below one half). Self
  occlusion (the far eye of a face turned by 60 degrees) is not modelled.
* ``label``: the identity id (identity pools of the splits are disjoint).
* ``occlusion``: the fraction of the face's own pixels (its coverage inside its
  unclipped face box) that is hidden by nearer faces or lies outside the canvas;
  ``truncation`` is the part of it due to the border alone.
* ``yaw``, ``pitch``, ``roll``: head angles in degrees (``ImageParams.head_ypr``).
* ``difficulty``: WIDER-FACE-style level from the clipped box width and occlusion
  (:func:`difficulty_level`): 0 easy (width >= 40 px and occlusion < 0.3), 1 medium
  (width >= 20 px and occlusion < 0.6), 2 hard (the rest). As in WIDER the hard set
  evaluates all faces, the medium set easy + medium, the easy set only easy faces.
* Faces hidden almost completely (occlusion > ``drop_occlusion``, default 0.85) or
  whose clipped box is under a pixel wide or high are *dropped* from the ground truth:
  little more than hair shows, no annotator would mark them and no detector should be
  asked to find them. They are still rendered (and hide what is behind them); the
  dense column ``n_hidden`` counts them, ``n_faces`` counts the annotated faces.

Determinism: scene ``i`` of split ``name`` is drawn from
``default_rng([seed, 11, tag(name), i])`` (``tag`` a hash of the name), identity ``k``
from ``default_rng([seed, 10, k])``; so a scene does not depend on batching, worker
count or the other scenes, and the splits use different streams. Identity pools are
consecutive id ranges in the order of ``splits``, hence disjoint.

Why 192 px canvases by default: a two-core CPU trains a small detector on a few
thousand 192 px scenes in tens of minutes, and faces from 10 px (hard) to ~170 px still
fit on one canvas. Rendering is per face in a window around the face (a small face
costs a few milliseconds, not a full-canvas ray cast), spread over worker processes.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.instances import FACE_SCHEMA, InstanceTable
from backdoorlab.data.synthetic import faces, render
from backdoorlab.data.synthetic.clutter import paint_clutter, sample_clutter
from backdoorlab.data.synthetic.dataset import (
    RENDERER_VERSION,
    default_cache_dir,
    load_cache_entry,
    store_cache_entry,
)
from backdoorlab.data.synthetic.params import (
    IdentityParams,
    ImageParams,
    SamplingRanges,
    concat_rows,
    sample_identities,
    sample_images,
)
from backdoorlab.errors import DatasetError

SCENES_VERSION = "1"  # bump whenever the scenes or their labels a spec produces change (it keys the cache)
IDENTITY_STREAM, SCENE_STREAM = 10, 11
PARALLEL_MIN_SCENES = 200  # below this, starting worker processes costs more than it saves
CHUNK_SCENES = 25  # scenes per task handed to a worker (progress and load balancing)

# difficulty thresholds (pixels of clipped box width, occlusion fraction)
EASY_WIDTH, EASY_OCCLUSION = 40.0, 0.3
MEDIUM_WIDTH, MEDIUM_OCCLUSION = 20.0, 0.6
EASY, MEDIUM, HARD = 0, 1, 2

#: the instance columns of a scene dataset: :data:`FACE_SCHEMA` plus per-face extras
SCENE_SCHEMA: dict[str, tuple[str, tuple[int, ...]]] = {
    **FACE_SCHEMA,
    "occlusion": ("float32", ()),
    "truncation": ("float32", ()),
    "yaw": ("float32", ()),
    "pitch": ("float32", ()),
    "roll": ("float32", ()),
    "difficulty": ("int8", ()),
}


class SceneSplit(BaseModel):
    """One split: how many scenes, and the size of its own identity pool."""

    model_config = ConfigDict(extra="forbid")

    n_images: int = Field(ge=1, le=1_000_000)
    identities: int = Field(ge=1, le=1_000_000, description="identities in this split's pool (disjoint from others)")


def _default_splits() -> dict[str, SceneSplit]:
    return {
        "train": SceneSplit(n_images=3000, identities=2000),
        "val": SceneSplit(n_images=300, identities=400),
        "test": SceneSplit(n_images=600, identities=800),
    }


class SyntheticSceneSpec(BaseModel):
    """What to render. Every field is part of the cache key.

    Face widths are nominal (the pixels :data:`faces.FACE_WIDTH_MM` spans at the face's
    depth), drawn log-uniformly between ``min_face_px`` and ``max_face_frac * size``:
    as many faces per octave of size, as in crowd photos where small faces abound. A
    face's centre may lie up to ``border_overhang`` face widths beyond the border.
    Face counts: 0 with probability ``empty_fraction``, otherwise ``k`` in
    1..``max_faces`` with probability proportional to ``count_decay ** (k - 1)``.
    """

    model_config = ConfigDict(extra="forbid")

    size: int = Field(192, ge=32, le=1024, description="canvas side in pixels (192: see the module docstring)")
    splits: dict[str, SceneSplit] = Field(default_factory=_default_splits)
    max_faces: int = Field(6, ge=1, le=32)
    empty_fraction: float = Field(0.08, ge=0.0, le=1.0)
    count_decay: float = Field(0.8, gt=0.0, le=1.0)
    min_face_px: float = Field(10.0, ge=4.0)
    max_face_frac: float = Field(0.9, gt=0.0, le=1.5)
    border_overhang: float = Field(0.25, ge=0.0, le=1.0)
    max_yaw_deg: float = Field(60.0, ge=0.0, le=75.0)
    max_pitch_deg: float = Field(25.0, ge=0.0, le=40.0)
    max_roll_deg: float = Field(30.0, ge=0.0, le=60.0)
    clutter: int = Field(12, ge=0, le=64, description="most background shapes per scene (0: plain gradient)")
    blur_max: float = Field(0.7, ge=0.0, le=3.0)
    noise_max: float = Field(0.03, ge=0.0, le=0.3)
    drop_occlusion: float = Field(0.85, gt=0.0, le=1.0)
    seed: int = 0

    @field_validator("splits")
    @classmethod
    def _split_names(cls, splits: dict[str, SceneSplit]) -> dict[str, SceneSplit]:
        if not splits:
            raise ValueError("at least one split is needed")
        for name in splits:
            if not name or not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"split name {name!r} must be letters, digits, '_' or '-' (it names a folder)")
        return splits

    @model_validator(mode="after")
    def _consistent(self) -> SyntheticSceneSpec:
        if self.min_face_px >= self.max_face_frac * self.size:
            raise ValueError(
                f"min_face_px ({self.min_face_px}) must be below max_face_frac * size "
                f"({self.max_face_frac * self.size:g})"
            )
        for name, split in self.splits.items():
            if split.identities < self.max_faces:
                raise ValueError(
                    f"split {name!r} has {split.identities} identities but a scene may hold {self.max_faces} "
                    "distinct faces (max_faces)"
                )
        if sum(s.n_images for s in self.splits.values()) * self.size**2 > 4e9:
            raise ValueError("the splits hold more than 4e9 pixels in all; render fewer or smaller scenes")
        return self

    @classmethod
    def tiny(cls, **changes: Any) -> SyntheticSceneSpec:
        """24 scenes of 96 px (train 16, val 4, test 4) for tests: about a second to render."""
        base: dict[str, Any] = {
            "size": 96,
            "max_faces": 4,
            "min_face_px": 8.0,
            "splits": {
                "train": {"n_images": 16, "identities": 24},
                "val": {"n_images": 4, "identities": 8},
                "test": {"n_images": 4, "identities": 8},
            },
        }
        return cls(**{**base, **changes})

    def identity_offset(self, split: str) -> int:
        """First identity id of ``split``'s pool (pools are consecutive ranges in ``splits`` order)."""
        names = list(self.splits)
        if split not in self.splits:
            raise DatasetError(f"unknown split {split!r}; the spec has {names}")
        return sum(self.splits[n].identities for n in names[: names.index(split)])

    def ranges(self) -> SamplingRanges:
        return SamplingRanges(blur_max=self.blur_max, noise_max=self.noise_max)

    def count_probs(self) -> np.ndarray:
        """P(a scene holds k faces), k = 0..max_faces."""
        w = self.count_decay ** np.arange(self.max_faces, dtype=np.float64)
        return np.r_[self.empty_fraction, (1 - self.empty_fraction) * w / w.sum()]

    def cache_key(self) -> str:
        payload = json.dumps(
            {"renderer": RENDERER_VERSION, "scenes": SCENES_VERSION, **self.model_dump()}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def difficulty_level(width_px: np.ndarray, occlusion: np.ndarray) -> np.ndarray:
    """WIDER-style level per face (int8): 0 easy, 1 medium, 2 hard.

    easy: width >= 40 px and occlusion < 0.3; medium (otherwise): width >= 20 px and
    occlusion < 0.6; hard: the rest. ``width_px`` is the clipped (annotated) box width.
    """
    w, occ = np.asarray(width_px), np.asarray(occlusion)
    level = np.full(w.shape, HARD, np.int8)
    level[(w >= MEDIUM_WIDTH) & (occ < MEDIUM_OCCLUSION)] = MEDIUM
    level[(w >= EASY_WIDTH) & (occ < EASY_OCCLUSION)] = EASY
    return level


# ------------------------------------------------------------------- sampling
def split_tag(name: str) -> int:
    """A stable 32-bit number per split name (its scenes' random stream)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)


@lru_cache(maxsize=4096)
def _identity(seed: int, identity: int) -> IdentityParams:
    return sample_identities(np.random.default_rng([seed, IDENTITY_STREAM, identity]), 1)


@dataclass
class SceneLayout:
    """Everything drawn for one scene before rendering."""

    ids: np.ndarray  # (n,) identity ids
    ident: IdentityParams | None  # n faces (None when n = 0)
    view: ImageParams | None
    centres: np.ndarray  # (n, 2) renderer pixels
    widths: np.ndarray  # (n,) nominal face widths in pixels
    scene_view: ImageParams  # 1 row: background, light, blur, noise of the scene
    clutter_rng_seed: int
    noise_seed: int


def sample_layout(spec: SyntheticSceneSpec, split: str, index: int) -> SceneLayout:
    """The random draws of scene ``index`` of ``split`` (a pure function of spec, split and index)."""
    rng = np.random.default_rng([spec.seed, SCENE_STREAM, split_tag(split), index])
    n = int(rng.choice(spec.max_faces + 1, p=spec.count_probs()))
    pool = spec.splits[split].identities
    ids = np.sort(rng.choice(pool, n, replace=False)) + spec.identity_offset(split)
    lo, hi = math.log(spec.min_face_px), math.log(spec.max_face_frac * spec.size)
    widths = np.exp(rng.uniform(lo, hi, n))
    centres = _place(rng, widths, spec.size, spec.border_overhang)
    scene_view = sample_images(rng, 1, spec.ranges())
    ident = view = None
    if n:
        ident = concat_rows([_identity(spec.seed, int(k)) for k in ids])
        view = sample_images(rng, n, spec.ranges())
        deg = np.pi / 180
        yaw = rng.uniform(-spec.max_yaw_deg, spec.max_yaw_deg, n) * deg
        pitch = rng.uniform(-spec.max_pitch_deg, spec.max_pitch_deg, n) * deg
        roll = rng.uniform(-spec.max_roll_deg, spec.max_roll_deg, n) * deg
        view.head_ypr = np.stack([yaw, pitch, roll], 1).astype(np.float32)
        # eyes look roughly where the head points (within the eye-in-head range)
        view.gaze = np.stack([pitch + rng.uniform(-0.3, 0.3, n), yaw + rng.uniform(-0.3, 0.3, n)], 1).astype(np.float32)
        for key in ("light_dir", "light_colour", "ambient"):  # one light for the whole scene
            setattr(view, key, np.repeat(getattr(scene_view, key), n, 0))
    seeds = rng.integers(0, 2**62, 2)
    return SceneLayout(ids, ident, view, centres, widths, scene_view, int(seeds[0]), int(seeds[1]))


PLACE_TRIES = 4  # centre draws per face before a heavily covered spot is accepted anyway
PLACE_MAX_COVER = 0.5  # estimated share of a face that nearer faces may cover


def _place(rng: np.random.Generator, widths: np.ndarray, size: int, overhang: float) -> np.ndarray:
    """Centres, nearest face first; a face mostly behind nearer ones is moved (a few tries).

    Faces are approximated by discs of their nominal width; a candidate centre whose
    disc is covered by more than ``PLACE_MAX_COVER`` (on a 7x7 grid of sample points)
    is drawn again. Partial occlusion stays common; faces drawn only to be hidden
    (wasted rendering, and dropped from the ground truth) become rare.
    """
    n = len(widths)
    centres = np.zeros((n, 2))
    g = np.linspace(-0.5, 0.5, 7)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    grid = grid[(grid**2).sum(1) <= 0.25]  # points of a unit-width disc
    placed: list[int] = []
    for i in np.argsort(-widths, kind="stable").tolist():
        over = overhang * widths[i]
        for _ in range(PLACE_TRIES):
            c = rng.uniform(-over, size + over, 2)
            pts = c + grid * widths[i]
            covered = np.zeros(len(pts), bool)
            for j in placed:
                covered |= ((pts - centres[j]) ** 2).sum(1) <= (widths[j] / 2) ** 2
            if covered.mean() <= PLACE_MAX_COVER:
                break
        centres[i] = c
        placed.append(i)
    return centres


# ------------------------------------------------------------------ rendering
@dataclass
class SceneRender:
    """One rendered scene: the image and its instance rows (all faces, before dropping)."""

    image: np.ndarray  # (H, W, 3) uint8
    faces: dict[str, np.ndarray]  # SCENE_SCHEMA columns, one row per annotated face
    n_hidden: int


# head-frame margins (mm) of the window a face is rendered in
NECK_FADE_MM = (15.0, 80.0)  # below the chin: the neck fades out between these


def _head_box_corners(ident: IdentityParams) -> torch.Tensor:
    """(1, 8, 3) corners of a head-frame box holding the head, hair volume, nose and faded neck."""
    ax, ay, az = (float(v) for v in ident.head_axes[0])
    cy = render.HEAD_CENTRE_Y
    xs = (-1.07 * ax - 3, 1.07 * ax + 3)
    ys = (cy - 4 - 1.05 * ay - 3, cy + ay + NECK_FADE_MM[1] + 2)
    zs = (-45.0, render.HEAD_CENTRE_Z_FRAC * az + 2 + 1.05 * az + 3)
    pts = [[x, y, z] for x in xs for y in ys for z in zs]
    return torch.tensor(pts, dtype=torch.float32)[None]


def _face_layer(
    ident: IdentityParams,
    view: ImageParams,
    trans: torch.Tensor,
    focal: float,
    size: int,
    box: np.ndarray,
) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """Render one face in a window around it: (x0, y0, rgb (h, w, 3), alpha (h, w)).

    The window is the projection of a head-frame box around the head, clipped to the
    union of the canvas and the face box (so the face's pixels outside the canvas are
    rendered too: they measure how much of it the border cuts). Rays are those of the
    canvas camera (the principal point is shifted by the window's origin), so a face
    looks exactly as on a full canvas. The neck fades out below the chin
    (``NECK_FADE_MM``), like a bust.
    """
    one = torch.ones(1)
    canvas = render.Camera(size, size, one * focal, one * (size / 2), one * (size / 2), torch.eye(3)[None])
    rot = faces.head_rotations(view)
    corners = _head_box_corners(ident) @ rot.transpose(1, 2) + trans[:, None]
    uv = canvas.project(corners)[0]
    x0 = max(math.floor(float(uv[:, 0].min())) - 1, min(0, math.floor(box[0])))
    x1 = min(math.ceil(float(uv[:, 0].max())) + 1, max(size, math.ceil(box[2])))
    y0 = max(math.floor(float(uv[:, 1].min())) - 1, min(0, math.floor(box[1])))
    y1 = min(math.ceil(float(uv[:, 1].max())) + 1, max(size, math.ceil(box[3])))
    w, h = max(x1 - x0, 1), max(y1 - y0, 1)
    cam = render.Camera(w, h, one * focal, one * (size / 2 - x0), one * (size / 2 - y0), torch.eye(3)[None])
    rgb, alpha = render.render_faces(ident, view, cam, trans, neck_fade=NECK_FADE_MM)
    return x0, y0, rgb[0], alpha[0]


def render_layout(spec: SyntheticSceneSpec, layout: SceneLayout) -> SceneRender:
    """Render one scene and measure each face's occlusion and landmark visibility."""
    size, f = spec.size, float(spec.size)
    bg = render.render_background(layout.scene_view, size, size)[0]
    if spec.clutter:
        bg = paint_clutter(bg, sample_clutter(np.random.default_rng(layout.clutter_rng_seed), spec.clutter))
    n = len(layout.ids)
    rows: dict[str, np.ndarray] = {k: np.zeros((0, *shape), dt) for k, (dt, shape) in SCENE_SCHEMA.items()}
    img = bg
    kept = 0
    if n:
        assert layout.ident is not None and layout.view is not None
        cam, trans = faces.scene_camera(layout.centres, layout.widths, size, size, f)
        ann = faces.annotate(layout.ident, layout.view, cam, trans)
        lms = ann["landmarks"].astype(np.float64)  # renderer pixels: pixel j spans [j, j + 1)
        box = ann["face_box"].astype(np.float64)
        box = np.concatenate([np.minimum(box[:, :2], lms.min(1)), np.maximum(box[:, 2:], lms.max(1))], 1)
        layers = [
            _face_layer(layout.ident.take([i]), layout.view.take([i]), trans[i : i + 1], f, size, box[i])
            for i in range(n)
        ]
        cover = torch.zeros(size, size)
        occlusion, truncation = np.zeros(n), np.zeros(n)
        visible = np.zeros((n, 5), bool)
        inside = ((lms >= 0.5) & (lms <= size - 0.5)).all(-1)  # on [0, size-1] in table coordinates
        near_first = np.argsort(-layout.widths, kind="stable")
        for i in near_first.tolist():
            x0, y0, _, a = layers[i]
            h, w = a.shape
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, size), min(y0 + h, size)
            xs = torch.arange(x0, x0 + w, dtype=torch.float64) + 0.5
            ys = torch.arange(y0, y0 + h, dtype=torch.float64) + 0.5
            in_box = ((ys >= box[i, 1]) & (ys <= box[i, 3]))[:, None] & ((xs >= box[i, 0]) & (xs <= box[i, 2]))[None]
            own = a.double() * in_box
            total = float(own.sum())
            on_canvas = own[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            seen = float((on_canvas * (1 - cover[cy0:cy1, cx0:cx1].double())).sum())
            occlusion[i] = 1 - seen / total if total > 0 else 1.0
            truncation[i] = 1 - float(on_canvas.sum()) / total if total > 0 else 1.0
            px = np.clip(np.floor(lms[i]).astype(int), 0, size - 1)
            visible[i] = inside[i] & (cover[px[:, 1], px[:, 0]].numpy() < 0.5)
            a_c = a[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            cover[cy0:cy1, cx0:cx1] = cover[cy0:cy1, cx0:cx1] + (1 - cover[cy0:cy1, cx0:cx1]) * a_c
        img = bg.clone()
        for i in near_first[::-1].tolist():  # far to near
            x0, y0, rgb, a = layers[i]
            h, w = a.shape
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, size), min(y0 + h, size)
            if cx1 <= cx0 or cy1 <= cy0:
                continue
            sl = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
            region = img[cy0:cy1, cx0:cx1]
            img[cy0:cy1, cx0:cx1] = region + (rgb[sl] - region) * a[sl].unsqueeze(-1)
        # to table coordinates (pixel centres at integers) and clipped to the canvas
        lm_t = (lms - 0.5).astype(np.float32)
        clipped = np.clip(box - 0.5, 0, size - 1).astype(np.float32)
        bw, bh = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        keep = (occlusion <= spec.drop_occlusion) & (bw >= 1) & (bh >= 1)
        keep_idx = np.flatnonzero(keep)  # in the order faces were drawn
        ypr = np.degrees(layout.view.head_ypr.astype(np.float64)).astype(np.float32)
        rows = {
            "boxes": clipped[keep_idx],
            "landmarks": lm_t[keep_idx],
            "visible": visible[keep_idx],
            "label": layout.ids[keep_idx].astype(np.int64),
            "occlusion": occlusion[keep_idx].astype(np.float32),
            "truncation": truncation[keep_idx].astype(np.float32),
            "yaw": ypr[keep_idx, 0],
            "pitch": ypr[keep_idx, 1],
            "roll": ypr[keep_idx, 2],
            "difficulty": difficulty_level(bw[keep_idx], occlusion[keep_idx]),
        }
        kept = len(keep_idx)
    gen = torch.Generator().manual_seed(layout.noise_seed)
    out = render.quantize(render.blur_and_noise(img[None], layout.scene_view, gen)).numpy()[0]
    return SceneRender(out, rows, n - kept)


def render_one(spec: SyntheticSceneSpec, split: str, index: int) -> SceneRender:
    """Scene ``index`` of ``split``, exactly as it appears in the split's dataset."""
    return render_layout(spec, sample_layout(spec, split, index))


# -------------------------------------------------------------------- datasets
Item = tuple[str, int]  # (split, scene index)


def _render_items(spec: SyntheticSceneSpec, items: Sequence[Item]) -> list[SceneRender]:
    """Render scenes with one torch thread (so the bytes never depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [render_one(spec, s, i) for s, i in items]
    finally:
        torch.set_num_threads(threads)


def _dataset(spec: SyntheticSceneSpec, split: str, scenes: Sequence[SceneRender]) -> ArrayDataset:
    counts = np.array([len(s.faces["label"]) for s in scenes], np.int64)
    offsets = np.zeros(len(scenes) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    columns = {
        k: np.concatenate([s.faces[k] for s in scenes]).astype(dt).reshape(-1, *shape)
        for k, (dt, shape) in SCENE_SCHEMA.items()
    }
    meta = {
        "name": "synthetic-scenes",
        "source": "backdoorlab renderer",
        "renderer_version": RENDERER_VERSION,
        "scenes_version": SCENES_VERSION,
        "split": split,
        "spec": spec.model_dump(),
    }
    images = np.stack([s.image for s in scenes]) if scenes else np.zeros((0, spec.size, spec.size, 3), np.uint8)
    dense = {"n_faces": counts, "n_hidden": np.array([s.n_hidden for s in scenes], np.int64)}
    return ArrayDataset(images, dense, meta, instances=InstanceTable(offsets, columns))


def render_split(
    spec: SyntheticSceneSpec,
    split: str,
    indices: Sequence[int] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ArrayDataset:
    """Scenes ``indices`` (default: all) of one split, in memory."""
    return synthesize_scenes(spec, [split], workers, progress, indices={split: indices})[split]


def synthesize_scenes(
    spec: SyntheticSceneSpec,
    splits: Sequence[str] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    indices: dict[str, Sequence[int] | None] | None = None,
) -> dict[str, ArrayDataset]:
    """Render the splits (default: all of the spec's) in memory: split name -> dataset.

    ``workers`` processes (default: one per core, up to 4, from ``PARALLEL_MIN_SCENES``
    scenes on; otherwise this process) render chunks of ``CHUNK_SCENES`` scenes with one
    thread each. The bytes do not depend on ``workers``. ``progress(done, total)`` is
    called after each chunk.
    """
    names = list(spec.splits) if splits is None else list(splits)
    for name in names:
        if name not in spec.splits:
            raise DatasetError(f"unknown split {name!r}; the spec has {list(spec.splits)}")
    picks = indices or {}
    items: list[Item] = []
    for name in names:
        idx = picks.get(name)
        items += [(name, int(i)) for i in (range(spec.splits[name].n_images) if idx is None else idx)]
    total = len(items)
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if total >= PARALLEL_MIN_SCENES else 1
    chunks = [items[s : s + CHUNK_SCENES] for s in range(0, total, CHUNK_SCENES)]
    done: list[SceneRender] = []
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            done += _render_items(spec, chunk)
            if progress:
                progress(len(done), total)
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=ctx) as ex:
            for part in ex.map(_render_items, [spec] * len(chunks), chunks):
                done += part
                if progress:
                    progress(len(done), total)
    out: dict[str, ArrayDataset] = {}
    at = 0
    for name in names:
        m = sum(1 for s, _ in items if s == name)
        out[name] = _dataset(spec, name, done[at : at + m])
        at += m
    return out


def scene_cache_folder(spec: SyntheticSceneSpec, split: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`load_or_synthesize_scenes` caches ``split``: ``<cache>/synthetic-scenes/<key>/<split>``."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "synthetic-scenes" / spec.cache_key() / split


def load_or_synthesize_scenes(
    spec: SyntheticSceneSpec,
    cache_dir: str | os.PathLike[str] | None = None,
    splits: Sequence[str] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, ArrayDataset]:
    """The cached splits of ``spec``, rendering (and caching) those not cached yet.

    Each split is its own sealed dataset folder (per-file SHA-256, fingerprint),
    verified on every load; a damaged or altered entry is rendered again, with a
    warning, never trusted. Only the missing splits are rendered.
    """
    names = list(spec.splits) if splits is None else list(splits)
    out: dict[str, ArrayDataset] = {}
    for name in names:
        if name not in spec.splits:
            raise DatasetError(f"unknown split {name!r}; the spec has {list(spec.splits)}")
        cached = load_cache_entry(scene_cache_folder(spec, name, cache_dir), stacklevel=3)
        if cached is not None:
            out[name] = cached
    missing = [n for n in names if n not in out]
    if missing:
        fresh = synthesize_scenes(spec, missing, workers=workers, progress=progress)
        for name in missing:
            out[name] = store_cache_entry(fresh[name], scene_cache_folder(spec, name, cache_dir))
    return {n: out[n] for n in names}
