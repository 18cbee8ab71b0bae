"""Short video clips of the synthetic scenes: the same faces moving smoothly, with exact per-frame ground truth.

A clip starts from scene ``index`` of a split (:func:`~.scenes.sample_layout`, so frame 0
is that scene's layout, rendered afresh) and moves every face by its own constant
velocity in the image, a slow change of scale (nearer or farther), and slow constant
yaw and roll rates; the background, clutter, light and identities stay. Per frame the
scene is rendered by :func:`~.scenes.render_layout`, so each frame's instance table has
the same columns and exactness as a still scene (``label``, the identity id, is the
same face in every frame: the ground-truth track). Camera noise is drawn afresh per
frame (a video's sensor noise), deterministically.

Determinism: the motion of clip ``index`` of split ``name`` is drawn from
``default_rng([seed, 12, tag(name), index])``; a clip depends only on the spec, the
split, the index and :class:`ClipMotion`.

Why this exists: Le Roux et al. saw the LSA's rotated landmarks *flicker* on video of a
person wearing the trigger (the backdoor fires in some frames, not in others, as the
face moves). :mod:`backdoorlab.defenses.face_monitors.flicker` scores that jitter;
these clips are where it is measured (``docs/defences/face_model_level.md``).
A trigger is applied to chosen frames with :func:`trigger_frames` (any callable with
the trigger interface ``trigger(images, annotations, indices)``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from backdoorlab.data.arrays import ArrayDataset, tensor_to_images
from backdoorlab.data.synthetic.scenes import (
    SceneLayout,
    SyntheticSceneSpec,
    _dataset,
    render_layout,
    sample_layout,
    split_tag,
)

CLIP_STREAM = 12


class ClipMotion(BaseModel):
    """How fast faces may move (each face draws its rates uniformly within these bounds, per clip)."""

    model_config = ConfigDict(extra="forbid")

    n_frames: int = Field(16, ge=2, le=1000)
    max_speed: float = Field(0.01, ge=0, le=0.2, description="image translation per frame, fraction of the canvas")
    max_scale_rate: float = Field(0.01, ge=0, le=0.1, description="relative change of face width per frame")
    max_yaw_rate_deg: float = Field(2.0, ge=0, le=20, description="yaw change per frame (degrees)")
    max_roll_rate_deg: float = Field(1.5, ge=0, le=20, description="roll change per frame (degrees)")


def clip_layouts(spec: SyntheticSceneSpec, split: str, index: int, motion: ClipMotion) -> list[SceneLayout]:
    """The per-frame layouts of clip ``index``: frame 0 is the scene's own layout."""
    base = sample_layout(spec, split, index)
    n = len(base.ids)
    rng = np.random.default_rng([spec.seed, CLIP_STREAM, split_tag(split), index])
    velocity = rng.uniform(-1, 1, (n, 2)) * motion.max_speed * spec.size
    scale_rate = rng.uniform(-1, 1, n) * motion.max_scale_rate
    rates = np.zeros((n, 3))
    rates[:, 0] = np.radians(rng.uniform(-1, 1, n) * motion.max_yaw_rate_deg)
    rates[:, 2] = np.radians(rng.uniform(-1, 1, n) * motion.max_roll_rate_deg)
    noise = rng.integers(0, 2**62, motion.n_frames)
    limits = np.radians([spec.max_yaw_deg, spec.max_pitch_deg, spec.max_roll_deg])
    frames = []
    for t in range(motion.n_frames):
        view = None
        if base.view is not None:
            view = dataclasses.replace(base.view.take(np.arange(n)))
            ypr = base.view.head_ypr.astype(np.float64) + rates * t
            view.head_ypr = np.clip(ypr, -limits, limits).astype(np.float32)
        frames.append(
            dataclasses.replace(
                base,
                view=view,
                centres=base.centres + velocity * t,
                widths=base.widths * (1 + scale_rate) ** t,
                noise_seed=int(noise[t]),
            )
        )
    return frames


def render_scene_clip(
    spec: SyntheticSceneSpec, index: int, split: str = "test", motion: ClipMotion | None = None
) -> ArrayDataset:
    """Clip ``index`` of ``split``: one frame per sample, the scenes' instance table (``label`` = track id).

    The dense column ``frame`` numbers the frames; ``meta`` records the spec, split,
    index and motion.
    """
    motion = motion or ClipMotion()
    renders = [render_layout(spec, layout) for layout in clip_layouts(spec, split, index, motion)]
    clip = _dataset(spec, split, renders)
    meta = {**clip.meta, "clip": {"split": split, "index": index, "motion": motion.model_dump()}}
    dense = {**clip.annotations, "frame": np.arange(len(renders), dtype=np.int64)}
    return ArrayDataset(clip.images, dense, meta, instances=clip.instances)


def render_scene_clips(
    spec: SyntheticSceneSpec, indices: Sequence[int], split: str = "test", motion: ClipMotion | None = None
) -> list[ArrayDataset]:
    """Several clips (:func:`render_scene_clip`), rendered with one torch thread (bytes independent of threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [render_scene_clip(spec, int(i), split, motion) for i in indices]
    finally:
        torch.set_num_threads(threads)


def trigger_frames(
    clip: ArrayDataset, trigger: Callable[..., torch.Tensor], frames: Sequence[int] | np.ndarray | None = None
) -> ArrayDataset:
    """The clip with ``trigger(images, annotations, indices)`` applied to ``frames`` (default: all).

    The trigger reads each frame's own instances (a face-anchored patch follows its
    face); the dense column ``triggered`` says which frames carry it. Ground truth is
    unchanged (the clean truth: what a detector should still say).
    """
    chosen = np.arange(len(clip)) if frames is None else np.unique(np.asarray(frames, np.int64))
    images = np.array(clip.images, copy=True)
    if len(chosen):
        batch, ann = clip.batch(chosen)
        out: Any = trigger(batch, ann, chosen)
        images[chosen] = tensor_to_images(out.detach().cpu())
    triggered = np.zeros(len(clip), bool)
    triggered[chosen] = True
    return ArrayDataset(images, {**clip.annotations, "triggered": triggered}, clip.meta, instances=clip.instances)
