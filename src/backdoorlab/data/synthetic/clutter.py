"""Cluttered backgrounds for synthetic scenes: random flat shapes over the gradient.

Why: a face detector trained on faces over smooth gradients learns "anything that is
not smooth is a face". Real photos are full of edges, textures and skin-coloured
things that are not faces, so scene backgrounds get a random number of ellipses,
(rotated) rectangles, striped panels and skin-toned blobs (hard negatives with the
colour of a face and roughly its shape, but no eyes, brows or mouth).

Everything is drawn from a numpy generator the caller seeds, so a scene's background
is a pure function of its seed. The gaze crops never call this module: their
background (:func:`backdoorlab.data.synthetic.render.render_background`) is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from backdoorlab.data.synthetic.params import SKIN_TONES, _mix

Tensor = torch.Tensor

ELLIPSE, RECTANGLE, STRIPES, SKIN_BLOB = 0, 1, 2, 3
KIND_PROBS = (0.35, 0.3, 0.2, 0.15)


@dataclass
class ClutterParams:
    """``n`` shapes; positions and sizes are fractions of the canvas (x of its width, y of its height)."""

    kind: np.ndarray  # (n,) int: ELLIPSE, RECTANGLE, STRIPES, SKIN_BLOB
    centre: np.ndarray  # (n, 2) in [-0.1, 1.1]
    half_size: np.ndarray  # (n, 2) half axes / half sides
    angle: np.ndarray  # (n,) radians
    colour: np.ndarray  # (n, 3)
    colour2: np.ndarray  # (n, 3) second stripe colour
    period: np.ndarray  # (n,) stripe period, fraction of the canvas width
    shading: np.ndarray  # (n,) linear brightness ramp across the shape
    opacity: np.ndarray  # (n,)


def sample_clutter(rng: np.random.Generator, max_shapes: int) -> ClutterParams:
    """Between 0 and ``max_shapes`` shapes (uniform count), sizes log-uniform 4%..45% of the canvas."""
    n = int(rng.integers(0, max_shapes + 1)) if max_shapes > 0 else 0
    u = rng.uniform
    kind = rng.choice(len(KIND_PROBS), n, p=KIND_PROBS)
    half = np.exp(u(np.log(0.02), np.log(0.225), (n, 2)))
    blob = kind == SKIN_BLOB
    # skin blobs have a face's aspect (taller than wide)
    half[blob, 1] = half[blob, 0] * u(1.1, 1.5, int(blob.sum()))
    colour = u(0.03, 0.97, (n, 3))
    colour[blob] = _mix(SKIN_TONES, rng, int(blob.sum()), 0.08)
    return ClutterParams(
        kind=kind.astype(np.int64),
        centre=u(-0.1, 1.1, (n, 2)).astype(np.float32),
        half_size=half.astype(np.float32),
        angle=u(0, np.pi, n).astype(np.float32),
        colour=colour.astype(np.float32),
        colour2=u(0.03, 0.97, (n, 3)).astype(np.float32),
        period=np.exp(u(np.log(0.015), np.log(0.08), n)).astype(np.float32),
        shading=u(-0.25, 0.25, n).astype(np.float32),
        opacity=np.where(u(0, 1, n) < 0.7, 1.0, u(0.4, 0.9, n)).astype(np.float32),
    )


def paint_clutter(background: Tensor, clutter: ClutterParams) -> Tensor:
    """Paint the shapes, in order, over one (H, W, 3) background; edges anti-aliased to a pixel."""
    h, w, _ = background.shape
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    img = background
    for i in range(len(clutter.kind)):
        cx, cy = float(clutter.centre[i, 0]) * w, float(clutter.centre[i, 1]) * h
        a, b = float(clutter.half_size[i, 0]) * w, float(clutter.half_size[i, 1]) * h
        ang = float(clutter.angle[i])
        c, s = np.cos(ang), np.sin(ang)
        dx, dy = xs - cx, ys - cy
        u_ = c * dx + s * dy  # along the shape's first axis (pixels)
        v_ = -s * dx + c * dy
        kind = int(clutter.kind[i])
        if kind in (ELLIPSE, SKIN_BLOB):
            r = ((u_ / a) ** 2 + (v_ / b) ** 2).sqrt()
            sd = (1 - r) * min(a, b)  # ~ pixels inside the outline
        else:
            sd = torch.minimum(a - u_.abs(), b - v_.abs())
        cover = (sd + 0.5).clamp(0, 1) * float(clutter.opacity[i])
        col = torch.as_tensor(clutter.colour[i]).expand(h, w, 3)
        if kind == STRIPES:
            period = float(clutter.period[i]) * w
            wave = torch.sin(u_ * (2 * np.pi / period))
            # a square wave with soft (one-pixel) transitions
            mix = (wave * period / (2 * np.pi) + 0.5).clamp(0, 1)
            col = col + (torch.as_tensor(clutter.colour2[i]) - col) * mix.unsqueeze(-1)
        ramp = 1 + float(clutter.shading[i]) * (u_ / a).clamp(-1, 1)
        col = (col * ramp.unsqueeze(-1)).clamp(0, 1)
        img = img + (col - img) * cover.unsqueeze(-1)
    return img
