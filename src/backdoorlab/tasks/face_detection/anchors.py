"""Anchors (priors) for RetinaFace on a small square canvas, and the SSD box/landmark coding.

Priors are ``(cx, cy, w, h)`` **in pixels** of the input canvas, in the pixel convention
of :mod:`backdoorlab.data.instances` (pixel centres at integer coordinates, so the image
spans ``[-0.5, W - 0.5]``): the prior of cell ``(i, j)`` at stride ``s`` is centred at
``((j + 0.5) * s - 0.5, (i + 0.5) * s - 0.5)``, the centre of the ``s x s`` block of
pixels it covers. Pixels (not RetinaFace's [0, 1] fractions) because the ground truth
comes in pixels and the coding below is scale-free: offsets are divided by the prior's
size, so the encoded targets are the same in either unit.

Coding (SSD / RetinaFace), with variances ``(v0, v1) = (0.1, 0.2)``::

    t_xy = (centre_gt - centre_prior) / (v0 * wh_prior)
    t_wh = log(wh_gt / wh_prior) / v1
    t_lm = (landmark_gt - centre_prior) / (v0 * wh_prior)     # each of the 5 points

and the inverse for decoding. The variances only rescale the targets to about unit
spread so that one smooth-L1 suits centres, sizes and landmarks alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Variances = tuple[float, float]
VARIANCES: Variances = (0.1, 0.2)


@dataclass(frozen=True)
class AnchorSpec:
    """Where the priors are: one level per stride, square priors of ``min_sizes[level]`` pixels per cell.

    Default for the 192 x 192 canvas, whose faces span about 10 to 170 pixels.
    RetinaFace's 640-px setting puts priors of 2 and 4 strides at each level
    ([[16, 32], [64, 128], [256, 512]] at strides 8/16/32). Scaled by 192/640 these would
    be [[5, 10], [19, 38], [77, 154]]: a 5-px prior is below the smallest face and the
    gap from 38 to 77 px leaves mid-sized faces poorly covered. Instead the six sizes
    [[10, 20], [32, 64], [96, 160]] run roughly geometrically (ratios 2, 1.6, 2, 1.5,
    1.7) from the smallest to the largest face, so a face of any side in 10..170 px has
    a prior within a factor of ~1.4 of it (IoU >= 0.5 when centred on it), and a face
    anywhere on the canvas (aspect up to 1.3) has a prior with IoU >= 0.2, the
    matching's keep threshold, so none is dropped
    (tests/face_detection/test_anchors.py checks both). Each level keeps priors of at least
    ~1.25 strides, so neighbouring priors of the same size overlap and every face
    centre is near one. 192 px gives 24x24, 12x12 and 6x6 cells: 1512 priors.

    For another canvas size, :meth:`for_canvas` scales the sizes (faces are assumed to
    occupy the same fraction of the canvas); :func:`make_priors` itself uses the pixel
    sizes as given at any size.
    """

    strides: tuple[int, ...] = (8, 16, 32)
    min_sizes: tuple[tuple[float, ...], ...] = ((10, 20), (32, 64), (96, 160))
    variances: Variances = VARIANCES

    def __post_init__(self) -> None:
        if len(self.strides) != len(self.min_sizes):
            raise ValueError(f"{len(self.strides)} strides but {len(self.min_sizes)} lists of min_sizes")
        counts = {len(m) for m in self.min_sizes}
        if len(counts) != 1 or 0 in counts:
            raise ValueError(f"every level needs the same, non-zero number of min_sizes, got {self.min_sizes}")

    @property
    def anchors_per_cell(self) -> int:
        return len(self.min_sizes[0])

    @classmethod
    def for_canvas(cls, size: int, reference: int = 192) -> AnchorSpec:
        """The default spec with its sizes scaled by ``size / reference`` (same strides and variances)."""
        f = size / reference
        return cls(min_sizes=tuple(tuple(m * f for m in level) for level in cls.min_sizes))

    def num_priors(self, height: int, width: int) -> int:
        """A, the number of priors of a ``height x width`` input."""
        return sum(math.ceil(height / s) * math.ceil(width / s) for s in self.strides) * self.anchors_per_cell


def make_priors(spec: AnchorSpec, height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(A, 4) priors ``(cx, cy, w, h)`` in pixels, in the order of the model's outputs.

    Level by level (stride 8 first); within a level cells row-major (``ceil(H/s)`` rows
    of ``ceil(W/s)`` cells, the feature map of a stride-``s`` network), then the cell's
    priors in the order of ``spec.min_sizes[level]``.
    """
    parts = []
    for stride, sizes in zip(spec.strides, spec.min_sizes, strict=True):
        fh, fw = math.ceil(height / stride), math.ceil(width / stride)
        cy = (torch.arange(fh, dtype=torch.float32, device=device) + 0.5) * stride - 0.5
        cx = (torch.arange(fw, dtype=torch.float32, device=device) + 0.5) * stride - 0.5
        yy, xx = torch.meshgrid(cy, cx, indexing="ij")
        k = len(sizes)
        centres = torch.stack([xx, yy], -1).reshape(-1, 1, 2).expand(-1, k, 2)
        wh = torch.tensor(sizes, dtype=torch.float32, device=device).reshape(1, k, 1).expand(fh * fw, k, 2)
        parts.append(torch.cat([centres, wh], -1).reshape(-1, 4))
    return torch.cat(parts)


def priors_to_corners(priors: torch.Tensor) -> torch.Tensor:
    """(..., 4) ``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``."""
    half = priors[..., 2:] / 2
    return torch.cat([priors[..., :2] - half, priors[..., :2] + half], -1)


def encode(matched_boxes: torch.Tensor, priors: torch.Tensor, variances: Variances = VARIANCES) -> torch.Tensor:
    """(..., 4) corner boxes matched to (..., 4) priors -> (..., 4) regression targets (see the module docstring).

    Boxes must have positive width and height (the log of a size).
    """
    centre = (matched_boxes[..., :2] + matched_boxes[..., 2:]) / 2
    wh = matched_boxes[..., 2:] - matched_boxes[..., :2]
    t_xy = (centre - priors[..., :2]) / (variances[0] * priors[..., 2:])
    t_wh = torch.log(wh / priors[..., 2:]) / variances[1]
    return torch.cat([t_xy, t_wh], -1)


def decode(deltas: torch.Tensor, priors: torch.Tensor, variances: Variances = VARIANCES) -> torch.Tensor:
    """Inverse of :func:`encode`: (..., 4) regression outputs + priors -> (..., 4) corner boxes in pixels."""
    centre = priors[..., :2] + deltas[..., :2] * variances[0] * priors[..., 2:]
    wh = priors[..., 2:] * torch.exp(deltas[..., 2:] * variances[1])
    return torch.cat([centre - wh / 2, centre + wh / 2], -1)


def encode_landmarks(
    matched_landmarks: torch.Tensor, priors: torch.Tensor, variances: Variances = VARIANCES
) -> torch.Tensor:
    """(..., 5, 2) landmark pixels matched to (..., 4) priors -> (..., 10) targets ``x0, y0, x1, y1, ...``."""
    p = priors[..., None, :]
    t = (matched_landmarks - p[..., :2]) / (variances[0] * p[..., 2:])
    return t.flatten(-2)


def decode_landmarks(deltas: torch.Tensor, priors: torch.Tensor, variances: Variances = VARIANCES) -> torch.Tensor:
    """Inverse of :func:`encode_landmarks`: (..., 10) outputs + priors -> (..., 5, 2) landmark pixels."""
    p = priors[..., None, :]
    d = deltas.unflatten(-1, (5, 2))
    return p[..., :2] + d * variances[0] * p[..., 2:]
