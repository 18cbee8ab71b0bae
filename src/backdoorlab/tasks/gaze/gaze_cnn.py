"""GazeCNN: a small, fast convolutional gaze regressor for eye crops and face crops.

Why this shape: on a laptop CPU the budget is tens of millions of multiply-adds per
image, so the network downsamples early with strided convolutions, and keeps the
spatial layout to the end (an adaptive pool to a fixed grid, then a fully connected
layer) because gaze is *where* the iris sits, which global average pooling would blur.
The same network accepts 36x60 eyes and 64x64 (or larger) faces.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class GazeCNN(nn.Module):
    """Conv trunk -> ``features(x)`` (a ``feature_dim`` vector) -> linear ``head`` (pitch, yaw)."""

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 32,
        feature_dim: int = 256,
        pool: tuple[int, int] = (4, 4),
        outputs: int = 2,
    ) -> None:
        super().__init__()
        w = width
        self.trunk = nn.Sequential(
            conv_bn(in_channels, w // 2),
            conv_bn(w // 2, w, stride=2),
            conv_bn(w, w),
            conv_bn(w, 2 * w, stride=2),
            conv_bn(2 * w, 2 * w),
            conv_bn(2 * w, 4 * w, stride=2),
            conv_bn(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(pool),
        )
        self.neck = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * w * pool[0] * pool[1], feature_dim), nn.ReLU(inplace=True)
        )
        self.head = nn.Linear(feature_dim, outputs)
        self.feature_dim = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation F(x); defences split the model here."""
        return self.neck(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
