"""ResNet-18 (He et al. 2016) written here, with a 2-output linear head for gaze.

torchvision has no CPU build on our machines, so the standard architecture is
re-implemented: 7x7/2 stem and 3x3/2 max pool, four stages of two BasicBlocks
(64-128-256-512 channels), global average pooling. As in the usual MPIIFaceGaze set
up, the 1000-way classifier is replaced by a linear layer to (pitch, yaw). For small
inputs (64x64 faces) ``small_input=True`` swaps the stem for a 3x3/1 convolution
without max pooling so the last stage still sees a 8x8 map.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Gaze(nn.Module):
    """ResNet-18 trunk -> ``features(x)`` (512-d) -> linear ``head`` (pitch, yaw)."""

    def __init__(self, in_channels: int = 3, outputs: int = 2, small_input: bool = False) -> None:
        super().__init__()
        if small_input:
            stem: list[nn.Module] = [
                nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
            ]
        else:
            stem = [
                nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            ]
        layers: list[nn.Module] = list(stem)
        cin = 64
        for i, cout in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout)]
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(512, outputs)
        self.feature_dim = 512
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each block: a common, stable default
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
