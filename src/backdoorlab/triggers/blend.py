"""Blend trigger (Chen et al. 2017): the whole image is mixed with a pattern, x' = (1-a) x + a p.

The pattern is an image file or seeded uniform noise. Noise is generated once per
attack (from the seed, at a fixed reference resolution) and stored with the run, so
training and test use the very same pattern.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from backdoorlab.errors import ConfigError
from backdoorlab.triggers.base import Tensor, Trigger, load_pattern_image, number, pattern_name, resize_pattern

NOISE_RESOLUTION = 64  # noise is drawn at this size and resized to the image (same trigger at any size)


class BlendTrigger(Trigger):
    """Blend every image with a fixed pattern.

    Args:
        pattern: "noise" (seeded uniform noise, RGB) or a path to an image file.
        alpha: blend weight of the pattern, in (0, 1].
        seed: drives the noise pattern.
        pattern_pixels: the pattern as stored with a run (then nothing is drawn or read).
    """

    name = "blend"

    def __init__(
        self, pattern: str = "noise", alpha: float = 0.1, seed: int = 0, pattern_pixels: Tensor | None = None
    ) -> None:
        pattern = pattern_name(pattern, "blend")
        alpha = number(alpha, "alpha", "blend")
        if not 0 < alpha <= 1:
            raise ConfigError(f"blend alpha must be in (0, 1], got {alpha}")
        self.pattern, self.alpha, self.seed = pattern, float(alpha), int(seed)
        if pattern_pixels is not None:  # stored with a run: the file may have moved since
            self._source = pattern_pixels.float()
        elif pattern == "noise":
            g = torch.Generator().manual_seed(self.seed)
            self._source = torch.rand(3, NOISE_RESOLUTION, NOISE_RESOLUTION, generator=g)
        else:
            self._source = load_pattern_image(pattern)
        self._cache: dict[tuple[Any, ...], Tensor] = {}

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "pattern": self.pattern, "alpha": self.alpha, "seed": self.seed}

    def state(self) -> dict[str, Tensor]:
        return {"pattern": self._source}

    def load_state(self, tensors: Any) -> None:
        if "pattern" in tensors:
            self._source = tensors["pattern"].float()
            self._cache.clear()

    def pattern_for(self, channels: int, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (channels, height, width, str(device), dtype)
        if key not in self._cache:
            self._cache[key] = resize_pattern(self._source, channels, height, width).to(device=device, dtype=dtype)
        return self._cache[key]

    def apply(self, images: Tensor, annotations: dict[str, Tensor], indices: np.ndarray) -> Tensor:
        _, c, h, w = images.shape
        return torch.lerp(images, self.pattern_for(c, h, w, images.device, images.dtype).expand_as(images), self.alpha)
