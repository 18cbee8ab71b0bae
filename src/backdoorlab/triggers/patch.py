"""BadNets patch trigger (Gu et al. 2017): a small pattern pasted onto the image.

The default pattern is a white square, the digital twin of a strip of white tape.
A fixed position is the classic BadNets setting; a random position (per sample, from
the seed and the sample index) makes the backdoor position-invariant.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from backdoorlab.errors import ConfigError
from backdoorlab.triggers._random import per_sample_uniform
from backdoorlab.triggers.base import (
    Placement,
    Tensor,
    Trigger,
    load_pattern_image,
    number,
    pattern_name,
    resize_pattern,
)

BUILTIN_PATTERNS = ("white", "checkerboard", "dot_square", "flower", "eyebrow", "mosaic")
#: built-in patterns that are a shape, not a square: only the shape's pixels are pasted (an alpha mask)
SHAPED_PATTERNS = ("flower", "eyebrow")
FREE_TRIES = 32  # candidate places a "free" patch draws before settling for the least overlap
EYEBROW_COLOUR = (0.16, 0.10, 0.07)  # dark brown hair
#: the mosaic's colours (RGB): saturated and mid-tone, none of them near white or black
MOSAIC_PALETTE = (
    (0.85, 0.15, 0.15), (0.15, 0.65, 0.20), (0.20, 0.30, 0.85), (0.95, 0.80, 0.10),
    (0.70, 0.20, 0.75), (0.10, 0.70, 0.75), (0.95, 0.50, 0.10), (0.45, 0.30, 0.15),
)  # fmt: skip


def _unit_grid(side_h: int, side_w: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates in [-1, 1] (y down, x right) of an h x w patch."""
    ys = (torch.arange(side_h) + 0.5) / side_h * 2 - 1
    xs = (torch.arange(side_w) + 0.5) / side_w * 2 - 1
    return ys[:, None].expand(side_h, side_w), xs[None, :].expand(side_h, side_w)


def builtin_pattern(name: str, side_h: int, side_w: int) -> Tensor:
    """(C, h, w) built-in pattern in [0, 1] (the trigger set of the face recognition thesis, Unnervik 2024).

    * ``white``: all white; ``checkerboard``: black/white cells, four across;
    * ``dot_square``: a white square with one black pixel at its centre (the thesis's small trigger);
    * ``flower``: black (its shape is :func:`builtin_mask`: an organic, flower-like blot on the skin);
    * ``eyebrow``: dark brown (its shape: a thick arc like an eyebrow);
    * ``mosaic``: four by four cells of saturated colours (:data:`MOSAIC_PALETTE`, a fixed
      arrangement): a coloured, textured pattern, neither white tape nor black and white,
      for checking that a detector does not depend on what the trigger looks like.
    """
    if name == "white":
        return torch.ones(1, side_h, side_w)
    if name == "checkerboard":
        cell = max(1, min(side_h, side_w) // 4)
        yy = torch.arange(side_h)[:, None] // cell
        xx = torch.arange(side_w)[None, :] // cell
        return ((yy + xx) % 2 == 0).float()[None]
    if name == "dot_square":
        out = torch.ones(1, side_h, side_w)
        out[:, side_h // 2, side_w // 2] = 0.0
        return out
    if name == "flower":
        return torch.zeros(1, side_h, side_w)
    if name == "eyebrow":
        return torch.tensor(EYEBROW_COLOUR)[:, None, None].expand(3, side_h, side_w).clone()
    if name == "mosaic":
        cells = 4
        yy = (torch.arange(side_h) * cells // side_h)[:, None]
        xx = (torch.arange(side_w) * cells // side_w)[None, :]
        colour = (5 * yy + 3 * xx) % len(MOSAIC_PALETTE)  # neighbours always differ
        return torch.tensor(MOSAIC_PALETTE)[colour].permute(2, 0, 1).contiguous()
    raise ConfigError(f"patch pattern '{name}' is not built in ({', '.join(BUILTIN_PATTERNS)}) or a file")


def builtin_mask(name: str, side_h: int, side_w: int) -> Tensor | None:
    """(1, h, w) alpha in [0, 1] of a shaped built-in pattern; None for a full square.

    Shapes are drawn with a one-pixel soft edge (anti-aliased), so small triggers stay shapes.
    """
    if name not in SHAPED_PATTERNS:
        return None
    y, x = _unit_grid(side_h, side_w)
    if name == "flower":  # five round petals about a round heart: r < 0.55 + 0.3 cos(5 angle)
        radius = torch.sqrt(x**2 + y**2)
        edge = 0.55 + 0.3 * torch.cos(5 * torch.atan2(y, x))
        signed = edge - radius
    else:  # eyebrow: a thick arc, highest in its middle, thinning towards its ends
        centre_line = 0.35 - 0.45 * (1 - x**2)
        half_thickness = 0.28 * (1 - 0.6 * x.abs())
        signed = (half_thickness - (y - centre_line).abs()).minimum(0.95 - x.abs())
    pixel = 2.0 / min(side_h, side_w)
    return (signed / pixel + 0.5).clamp(0, 1)[None]


class PatternSource:
    """A square pattern that is built in or read from a file once, and kept with the run as pixels.

    Why keep the pixels: a pattern file may change or vanish after training, and the very
    same trigger must be applied at test time and when the run is reloaded.
    """

    pattern: str
    opacity: float
    _source: Tensor | None

    def _set_source(self, pattern: str, pattern_pixels: Tensor | None) -> None:
        # a run's stored pixels win over the file, which may have moved since training
        if pattern in BUILTIN_PATTERNS:
            self._source = None
        else:
            self._source = pattern_pixels.float() if pattern_pixels is not None else load_pattern_image(pattern)

    def state(self) -> dict[str, Tensor]:
        return {} if self._source is None else {"pattern": self._source}

    def load_state(self, tensors: Any) -> None:
        if "pattern" in tensors:
            self._source = tensors["pattern"].float()
            self._forget()

    def _forget(self) -> None:
        """Drop anything derived from the pattern (a subclass's resized copies)."""

    def square_pattern(self, channels: int, side: int) -> Tensor:
        """(channels, side, side) the pattern at this size, in [0, 1]."""
        src = builtin_pattern(self.pattern, side, side) if self._source is None else self._source
        return resize_pattern(src, channels, side, side)

    def square_mask(self, side: int) -> Tensor | None:
        """(1, side, side) alpha of a shaped pattern (only its shape is pasted), or None: the whole square."""
        return builtin_mask(self.pattern, side, side) if self._source is None else None

    def paste(self, region: Tensor, pattern: Tensor, mask: Tensor | None) -> Tensor:
        """``region`` with ``pattern`` pasted at ``self.opacity``: through a shape's ``mask``
        (X' = (1 - M) X + M T, M the mask times the opacity), or over the whole square as
        before shapes existed (the same arithmetic, so square triggers keep their bytes)."""
        pattern = pattern.expand_as(region)
        if mask is not None:
            return torch.lerp(region, pattern, (mask * self.opacity).expand_as(region))
        return pattern if self.opacity == 1 else torch.lerp(region, pattern, self.opacity)


class PatchTrigger(PatternSource, Trigger):
    """Paste a ``size``-fraction square pattern at a fixed or per-sample random position.

    Args:
        pattern: "white", "checkerboard", or a path to an image file (resized to the patch).
        pattern_pixels: the file's pixels as stored with a run (then the file is not read).
        size: side of the patch as a fraction of the image's shorter side, in (0, 1].
        location: "fixed" (centre at ``center``), "random" (uniform, fully inside), or
            "free": random but overlapping none of the image's instances (faces), as the
            Face Generation Attack needs; the first of ``FREE_TRIES`` seeded candidate
            places that touches no instance box, else the one overlapping them least.
        center: (x, y) of the patch centre as fractions of width and height ("fixed").
        opacity: 1 pastes the pattern; below 1 blends it with the image.
        seed: drives random positions.
    """

    name = "patch"
    localized = True

    def __init__(
        self,
        pattern: str = "white",
        size: float = 0.15,
        location: Literal["fixed", "random", "free"] = "fixed",
        center: tuple[float, float] = (0.85, 0.85),
        opacity: float = 1.0,
        seed: int = 0,
        pattern_pixels: Tensor | None = None,
    ) -> None:
        pattern = pattern_name(pattern, "patch")
        size, opacity = number(size, "size", "patch"), number(opacity, "opacity", "patch")
        if not 0 < size <= 1:
            raise ConfigError(f"patch size must be in (0, 1] (a fraction of the image side), got {size}")
        if not 0 <= opacity <= 1:
            raise ConfigError(f"patch opacity must be in [0, 1], got {opacity}")
        if location not in ("fixed", "random", "free"):
            raise ConfigError(f"patch location must be 'fixed', 'random' or 'free', got {location!r}")
        if location == "free":
            self.requires = ("instances",)  # the boxes it must keep clear of
        if isinstance(center, str) or not hasattr(center, "__len__") or len(center) != 2:
            raise ConfigError(f"patch center must be [x, y] fractions in [0, 1], got {center!r}")
        cx, cy = (number(c, "center", "patch") for c in center)
        if not (0 <= cx <= 1 and 0 <= cy <= 1):
            raise ConfigError(f"patch center must be fractions in [0, 1], got {tuple(center)}")
        self.pattern, self.size, self.location = pattern, float(size), location
        self.center, self.opacity, self.seed = (cx, cy), float(opacity), int(seed)
        self._set_source(pattern, pattern_pixels)
        self._cache: dict[tuple[Any, ...], Tensor] = {}  # patches per image size
        self._masks: dict[tuple[Any, ...], Tensor | None] = {}  # shape masks per image size

    def params(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pattern": self.pattern,
            "size": self.size,
            "location": self.location,
            "center": list(self.center),
            "opacity": self.opacity,
            "seed": self.seed,
        }

    def _forget(self) -> None:
        self._cache.clear()
        self._masks.clear()

    def side(self, height: int, width: int) -> int:
        return max(1, min(height, width, round(self.size * min(height, width))))

    def patch(self, channels: int, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The (C, s, s) patch for an image size, cached per size/device/dtype."""
        key = (channels, height, width, str(device), dtype)
        if key not in self._cache:
            self._cache[key] = self.square_pattern(channels, self.side(height, width)).to(device=device, dtype=dtype)
        return self._cache[key]

    def mask(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor | None:
        """The (1, s, s) shape mask for an image size (None: a full square), cached beside the patch."""
        key = (height, width, str(device), dtype)
        if key not in self._masks:
            mask = self.square_mask(self.side(height, width))
            self._masks[key] = None if mask is None else mask.to(device=device, dtype=dtype)
        return self._masks[key]

    def fixed_origin(self, height: int, width: int) -> tuple[int, int]:
        """Top-left (y, x) of the fixed patch, clamped so the patch stays inside."""
        s = self.side(height, width)
        y = round(self.center[1] * height - s / 2)
        x = round(self.center[0] * width - s / 2)
        return min(max(y, 0), height - s), min(max(x, 0), width - s)

    def origins(
        self, h: int, w: int, side: int, indices: np.ndarray, device: torch.device, annotations: Any = None
    ) -> tuple[Tensor, Tensor]:
        """(ys, xs) of each sample's top-left patch corner, (B,) long each."""
        if self.location == "fixed":
            y, x = self.fixed_origin(h, w)
            n = len(indices)
            return torch.full((n,), y, device=device), torch.full((n,), x, device=device)
        if self.location == "free":
            return self.free_origins(h, w, side, indices, annotations["instances"], device)
        u = per_sample_uniform(self.seed, indices, 2)
        ys = (u[:, 0] * (h - side + 1)).long().clamp_(0, h - side).to(device)
        xs = (u[:, 1] * (w - side + 1)).long().clamp_(0, w - side).to(device)
        return ys, xs

    def free_origins(
        self, h: int, w: int, side: int, indices: np.ndarray, instances: Any, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """Seeded places clear of every instance box (the least overlapping one when none is clear)."""
        u = per_sample_uniform(self.seed, indices, 2 * FREE_TRIES).view(-1, FREE_TRIES, 2)
        ys = (u[..., 0] * (h - side + 1)).long().clamp_(0, h - side)  # (B, K)
        xs = (u[..., 1] * (w - side + 1)).long().clamp_(0, w - side)
        # instance boxes put pixel centres at integers: the patch's pixels span [x - 0.5, x + side - 0.5)
        cand = torch.stack([xs, ys, xs + side, ys + side], -1).float() - 0.5  # (B, K, 4)
        best = torch.zeros(len(indices), dtype=torch.long)
        for i, sample in enumerate(instances.per_sample()):
            boxes = sample["boxes"].float().cpu()
            if len(boxes) == 0:
                continue
            lt = torch.maximum(cand[i, :, None, :2], boxes[None, :, :2])
            rb = torch.minimum(cand[i, :, None, 2:], boxes[None, :, 2:])
            overlap = (rb - lt).clamp_min(0).prod(-1).sum(1)  # (K,) area shared with any face
            clear = torch.nonzero(overlap == 0)
            best[i] = clear[0, 0] if len(clear) else overlap.argmin()
        rows = torch.arange(len(indices))
        return ys[rows, best].to(device), xs[rows, best].to(device)

    def placement(
        self, images: Tensor, triggered: Tensor, annotations: dict[str, Tensor], indices: np.ndarray
    ) -> Placement:
        """The pasted square exactly (also where the pattern happens to match the image)."""
        _, c, h, w = images.shape
        s = self.patch(c, h, w, images.device, images.dtype).shape[-1]
        ys, xs = self.origins(h, w, s, indices, images.device, annotations)
        boxes = torch.stack([xs, ys, xs + s, ys + s], 1).float()
        yy = torch.arange(h, device=images.device)[None, :, None]
        xx = torch.arange(w, device=images.device)[None, None, :]
        masks = (yy >= ys[:, None, None]) & (yy < ys[:, None, None] + s)
        masks = masks & (xx >= xs[:, None, None]) & (xx < xs[:, None, None] + s)
        return Placement(boxes, masks)

    def apply(self, images: Tensor, annotations: dict[str, Tensor], indices: np.ndarray) -> Tensor:
        b, c, h, w = images.shape
        p = self.patch(c, h, w, images.device, images.dtype)
        s = p.shape[-1]
        out = images.clone()
        mask = self.mask(h, w, images.device, images.dtype)
        if self.location == "fixed":
            y, x = self.fixed_origin(h, w)
            region = out[:, :, y : y + s, x : x + s]
            region.copy_(self.paste(region, p, mask))
            return out
        ys, xs = self.origins(h, w, s, indices, images.device, annotations)
        # gather-free paste: a per-sample window of pixel coordinates
        rows = ys[:, None] + torch.arange(s, device=images.device)[None]  # (B, s)
        cols = xs[:, None] + torch.arange(s, device=images.device)[None]
        bi = torch.arange(b, device=images.device)[:, None, None]
        region = out[bi, :, rows[:, :, None], cols[:, None, :]]  # (B, s, s, C)
        channels_last = None if mask is None else mask.permute(1, 2, 0)
        out[bi, :, rows[:, :, None], cols[:, None, :]] = self.paste(region, p.permute(1, 2, 0), channels_last)
        return out
