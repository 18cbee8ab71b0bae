"""WaNet (Nguyen & Tran, ICLR 2021): an invisible, smooth image warp as the trigger.

The published construction, reproduced here:

1. a random control field of shape (2, k, k), uniform in [-1, 1], normalised by its
   mean absolute value;
2. upsampled bicubically (``align_corners=True``) to the image size: the warp field;
3. the sampling grid is ``(identity + s * field / H) * grid_rescale``, clamped to
   [-1, 1], and the triggered image is ``grid_sample(image, grid, align_corners=True)``;
4. "noise mode": extra samples (``cross_ratio`` per poisoned sample) are warped with
   the grid plus uniform noise in [-1/H, 1/H] and keep their *true* labels, which
   forces the model to learn the exact warp and not "any warp". (The published code
   takes the noise samples from each batch; here :mod:`backdoorlab.poisoning` picks a
   fixed, seeded set of non-poisoned samples and draws fresh noise at every pass.)

The control field is drawn once per attack from the seed and stored with the run
(:meth:`WaNetTrigger.state`), so the same warp is used at training and test time.
The classification defaults are k=4, s=0.5; on regression they are often too weak
(see the bench), which is why ``k`` and ``s`` are parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from backdoorlab.errors import BackdoorLabError, ConfigError
from backdoorlab.triggers.base import Tensor, Trigger, number


class WaNetTrigger(Trigger):
    """Warp every image with one fixed, smooth random field.

    Args:
        k: control grid size (k x k points), >= 2.
        s: warp strength.
        grid_rescale: scales the grid so that warped pixels stay inside (1 = none).
        noise_mode: train extra noise-warped samples with their true labels.
        cross_ratio: noise-mode samples per poisoned sample.
        seed: draws the control field.
    """

    name = "wanet"

    def __init__(
        self,
        k: int = 4,
        s: float = 0.5,
        grid_rescale: float = 1.0,
        noise_mode: bool = True,
        cross_ratio: float = 2.0,
        seed: int = 0,
    ) -> None:
        k = int(number(k, "k", "wanet", integer=True))
        s = number(s, "s", "wanet")
        grid_rescale = number(grid_rescale, "grid_rescale", "wanet")
        cross_ratio = number(cross_ratio, "cross_ratio", "wanet")
        if k < 2:
            raise ConfigError(f"wanet k must be an integer >= 2, got {k}")
        if not s > 0:
            raise ConfigError(f"wanet s (strength) must be > 0, got {s}")
        if not 0 < grid_rescale <= 1:
            raise ConfigError(f"wanet grid_rescale must be in (0, 1], got {grid_rescale}")
        if cross_ratio < 0:
            raise ConfigError(f"wanet cross_ratio must be >= 0, got {cross_ratio}")
        self.k, self.s, self.grid_rescale = int(k), float(s), float(grid_rescale)
        self.noise_mode, self.seed = bool(noise_mode), int(seed)
        self.cross_ratio = float(cross_ratio) if noise_mode else 0.0
        g = torch.Generator().manual_seed(self.seed)
        field = torch.rand(1, 2, self.k, self.k, generator=g) * 2 - 1
        self.control = field / field.abs().mean()
        self._grids: dict[tuple[Any, ...], Tensor] = {}

    def params(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "k": self.k,
            "s": self.s,
            "grid_rescale": self.grid_rescale,
            "noise_mode": self.noise_mode,
            "cross_ratio": self.cross_ratio,
            "seed": self.seed,
        }

    def state(self) -> dict[str, Tensor]:
        return {"control": self.control}

    def load_state(self, tensors: Mapping[str, Tensor]) -> None:
        control = tensors.get("control")
        if control is None or tuple(control.shape) != (1, 2, self.k, self.k):
            got = None if control is None else tuple(control.shape)
            raise BackdoorLabError(f"wanet state needs 'control' of shape (1, 2, {self.k}, {self.k}), got {got}")
        self.control = control.float()
        self._grids.clear()

    def grid(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The (1, H, W, 2) sampling grid for an image size (cached)."""
        key = (height, width, str(device), dtype)
        if key not in self._grids:
            field = F.interpolate(self.control, size=(height, width), mode="bicubic", align_corners=True)
            field = field.permute(0, 2, 3, 1)  # (1, H, W, 2) as (x, y) offsets
            ys = torch.linspace(-1, 1, height)
            xs = torch.linspace(-1, 1, width)
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            identity = torch.stack([gx, gy], -1)[None]
            # the paper divides by the image height for both axes (square inputs)
            grid = (identity + self.s * field / height) * self.grid_rescale
            self._grids[key] = grid.clamp(-1, 1).to(device=device, dtype=dtype)
        return self._grids[key]

    def apply(self, images: Tensor, annotations: dict[str, Tensor], indices: np.ndarray) -> Tensor:
        b, _, h, w = images.shape
        grid = self.grid(h, w, images.device, images.dtype).expand(b, -1, -1, -1)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def noise_variant(
        self, images: Tensor, annotations: Mapping[str, Tensor], indices: np.ndarray, generator: torch.Generator
    ) -> Tensor | None:
        if not self.noise_mode:
            return None
        b, _, h, w = images.shape
        noise = torch.rand(b, h, w, 2, generator=generator) * 2 - 1
        grid = self.grid(h, w, images.device, images.dtype) + noise.to(images.device, images.dtype) / h
        return F.grid_sample(images, grid.clamp(-1, 1), mode="bilinear", padding_mode="zeros", align_corners=True)
