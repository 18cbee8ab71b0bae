"""RetinaFace (Deng et al., CVPR 2020), written here for small square canvases.

The single-stage face detector in four parts, each a module a defence can hook:

``body``
    the backbone: :class:`MobileNetV1` at width 0.25 (RetinaFace's "mobilenet0.25",
    the default) or :class:`ResNetBackbone` (ResNet-18 layout). It returns the three
    maps C3, C4, C5 at strides 8, 16 and 32.
``fpn``
    :class:`FPN`: a 1x1 lateral convolution per level, nearest-neighbour top-down
    upsampling added into the finer level, and a 3x3 merge convolution on the two
    finer levels (P3, P4, P5, all ``fpn_channels`` wide).
``ssh``
    one :class:`SSH` context module per level (``ssh[0]`` at stride 8 ... ``ssh[2]``
    at stride 32): parallel 3x3, 5x5 and 7x7 receptive fields built from stacked 3x3
    convolutions, concatenated to ``fpn_channels``.
``class_heads`` / ``box_heads`` / ``landmark_heads``
    per level, a 1x1 convolution to ``anchors_per_cell`` x (2, 4, 10) channels.

:meth:`RetinaFace.features` returns the three SSH outputs (the heads' inputs, the
usual place to hook or prune), :meth:`RetinaFace.heads` turns them into the outputs.

Outputs are in *encoded* form (see :mod:`backdoorlab.tasks.face_detection.anchors`) over all
anchors, concatenated level by level (stride 8 first); within a level the order is
row-major over the feature map cells, then the cell's anchors in the order of
``AnchorSpec.min_sizes`` -- the order of :func:`~backdoorlab.tasks.face_detection.anchors.make_priors`.

Activations: RetinaFace uses leaky ReLU (slope 0.1) throughout the MobileNet and,
when the FPN is at most 64 channels wide, in the FPN and SSH too (plain ReLU above);
that rule is kept here (``leaky=None`` picks it). Initialisation is PyTorch's default
for every layer, so the weights depend only on the torch seed at construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: backbone name -> (class, constructor keyword arguments); see :func:`build_backbone`
BACKBONES: dict[str, tuple[type[nn.Module], dict[str, float | int]]] = {}


def _conv_bn(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: float | None = 0.0
) -> nn.Sequential:
    """Conv (no bias) + BatchNorm, then leaky ReLU with slope ``act`` (0 = ReLU) unless ``act`` is None."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(nn.LeakyReLU(act, inplace=True) if act > 0 else nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _depthwise_separable(cin: int, cout: int, stride: int, act: float) -> nn.Sequential:
    """MobileNet block: 3x3 depthwise (carries the stride) then 1x1 pointwise, each with BN + activation."""
    return nn.Sequential(_conv_bn(cin, cin, 3, stride, groups=cin, act=act), _conv_bn(cin, cout, 1, act=act))


class MobileNetV1(nn.Module):
    """MobileNet-V1 trunk (Howard et al. 2017) cut into the three stages RetinaFace reads.

    Channels are the standard MobileNet ones times ``width`` (at 0.25: stem 8, then
    16-32-32-64-64 | 128 x6 | 256 x2). Stage 1 ends at stride 8 (C3, 64 channels at
    0.25), stage 2 at stride 16 (C4, 128), stage 3 at stride 32 (C5, 256). The
    classifier part of MobileNet (global pooling, fully connected) is not built.
    """

    def __init__(self, width: float = 0.25, leaky: float = 0.1) -> None:
        super().__init__()

        def ch(c: int) -> int:
            return max(8, round(c * width))

        self.stage1 = nn.Sequential(
            _conv_bn(3, ch(32), 3, 2, act=leaky),
            _depthwise_separable(ch(32), ch(64), 1, leaky),
            _depthwise_separable(ch(64), ch(128), 2, leaky),
            _depthwise_separable(ch(128), ch(128), 1, leaky),
            _depthwise_separable(ch(128), ch(256), 2, leaky),
            _depthwise_separable(ch(256), ch(256), 1, leaky),
        )
        self.stage2 = nn.Sequential(
            _depthwise_separable(ch(256), ch(512), 2, leaky),
            *[_depthwise_separable(ch(512), ch(512), 1, leaky) for _ in range(5)],
        )
        self.stage3 = nn.Sequential(
            _depthwise_separable(ch(512), ch(1024), 2, leaky),
            _depthwise_separable(ch(1024), ch(1024), 1, leaky),
        )
        #: channels of C3, C4, C5
        self.out_channels = (ch(256), ch(512), ch(1024))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        c5 = self.stage3(c4)
        return [c3, c4, c5]


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, act=None)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else _conv_bn(cin, cout, 1, stride, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNetBackbone(nn.Module):
    """ResNet-18 layout (He et al. 2016): 7x7/2 stem, 3x3/2 max pool, four stages of ``blocks`` BasicBlocks.

    Stage widths are ``base_width`` x (1, 2, 4, 8) (64-128-256-512 at the default, the
    standard ResNet-18); stages 2, 3 and 4 end at strides 8, 16 and 32 and are returned
    as C3, C4, C5. The published RetinaFace uses ResNet-50 the same way; ResNet-18 keeps
    the CPU cost in reach (see docs/retinaface.md for the measured figures).
    """

    def __init__(self, base_width: int = 64, blocks: tuple[int, int, int, int] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, base_width, 7, 2), nn.MaxPool2d(3, 2, 1))
        stages = []
        cin = base_width
        for i, n in enumerate(blocks):
            cout = base_width * 2**i
            stride = 1 if i == 0 else 2
            rest = [_BasicBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(_BasicBlock(cin, cout, stride), *rest))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = (base_width * 2, base_width * 4, base_width * 8)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


BACKBONES["mobilenet0.25"] = (MobileNetV1, {"width": 0.25})
BACKBONES["resnet18"] = (ResNetBackbone, {"base_width": 64})


def build_backbone(name: str) -> nn.Module:
    """A fresh backbone by name (one of :data:`BACKBONES`); it has ``out_channels`` (C3, C4, C5)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown RetinaFace backbone {name!r}; known: {sorted(BACKBONES)}")
    cls, kwargs = BACKBONES[name]
    return cls(**kwargs)


class FPN(nn.Module):
    """Feature pyramid (Lin et al. 2017) over three levels, as RetinaFace builds it.

    ``lateral[i]``: 1x1 conv + BN + activation from C(i+3) to ``channels``. Top-down:
    P5 = lateral(C5); P4 = merge[1](lateral(C4) + up(P5)); P3 = merge[0](lateral(C3) +
    up(P4)), where ``up`` is nearest-neighbour resizing to the finer map's size (so odd
    sizes work) and ``merge`` a 3x3 conv + BN + activation.
    """

    def __init__(self, in_channels: tuple[int, int, int], channels: int, leaky: float) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(_conv_bn(c, channels, 1, act=leaky) for c in in_channels)
        self.merge = nn.ModuleList(_conv_bn(channels, channels, 3, act=leaky) for _ in range(2))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [m(f) for m, f in zip(self.lateral, feats, strict=True)]
        p5 = lat[2]
        p4 = self.merge[1](lat[1] + F.interpolate(p5, size=lat[1].shape[-2:], mode="nearest"))
        p3 = self.merge[0](lat[0] + F.interpolate(p4, size=lat[0].shape[-2:], mode="nearest"))
        return [p3, p4, p5]


class SSH(nn.Module):
    """SSH context module (Najibi et al. 2017) as RetinaFace uses it.

    Three branches with 3x3, 5x5 and 7x7 receptive fields, the larger two sharing their
    first 3x3 convolution: ``conv3`` (channels/2), ``conv5_1`` -> ``conv5_2``
    (channels/4) and ``conv5_1`` -> ``conv7_2`` -> ``conv7_3`` (channels/4). The branch
    outputs (BN, no activation) are concatenated and passed through a ReLU.
    """

    def __init__(self, cin: int, cout: int, leaky: float) -> None:
        super().__init__()
        if cout % 4:
            raise ValueError(f"SSH output channels must be divisible by 4, got {cout}")
        self.conv3 = _conv_bn(cin, cout // 2, act=None)
        self.conv5_1 = _conv_bn(cin, cout // 4, act=leaky)
        self.conv5_2 = _conv_bn(cout // 4, cout // 4, act=None)
        self.conv7_2 = _conv_bn(cout // 4, cout // 4, act=leaky)
        self.conv7_3 = _conv_bn(cout // 4, cout // 4, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.conv3(x)
        t = self.conv5_1(x)
        b5 = self.conv5_2(t)
        b7 = self.conv7_3(self.conv7_2(t))
        return F.relu(torch.cat([b3, b5, b7], 1))


def _flatten_head(out: torch.Tensor, per_anchor: int) -> torch.Tensor:
    """(B, anchors*k, H, W) -> (B, H*W*anchors, k): cells row-major, then the cell's anchors."""
    b = out.shape[0]
    return out.permute(0, 2, 3, 1).reshape(b, -1, per_anchor)


class RetinaFace(nn.Module):
    """RetinaFace: backbone -> FPN -> SSH per level -> class / box / landmark heads per level.

    Args:
        backbone: ``"mobilenet0.25"`` (RetinaFace's light model, ~0.4 M parameters in
            all) or ``"resnet18"``.
        fpn_channels: width of the FPN, SSH and head inputs; None picks RetinaFace's
            choice for the backbone family (64 for MobileNet, as published) or 128 for
            ResNet-18 (the published ResNet-50 uses 256 over C3 = 512 channels; ResNet-18's
            C3 is 128). Must be divisible by 4 (the SSH split).
        anchors_per_cell: anchors at each feature-map cell; must equal the number of
            ``min_sizes`` per level of the :class:`AnchorSpec` the outputs are decoded with.
        leaky: slope of the FPN/SSH leaky ReLU; None follows RetinaFace (0.1 when
            ``fpn_channels <= 64``, else 0 i.e. ReLU).

    ``forward(x)`` takes (B, 3, H, W) images in [0, 1] and returns ``{"logits": (B, A, 2),
    "boxes": (B, A, 4), "landmarks": (B, A, 10)}`` (encoded; class 1 is "face"), A being
    the number of priors of an H x W canvas. Hookable parts: ``body``, ``fpn``,
    ``ssh[i]``, ``class_heads[i]``, ``box_heads[i]``, ``landmark_heads[i]`` (i = 0, 1, 2
    for strides 8, 16, 32).
    """

    def __init__(
        self,
        backbone: str = "mobilenet0.25",
        fpn_channels: int | None = None,
        anchors_per_cell: int = 2,
        leaky: float | None = None,
    ) -> None:
        super().__init__()
        if fpn_channels is None:
            fpn_channels = 64 if backbone.startswith("mobilenet") else 128
        if leaky is None:
            leaky = 0.1 if fpn_channels <= 64 else 0.0
        if anchors_per_cell < 1:
            raise ValueError(f"anchors_per_cell must be >= 1, got {anchors_per_cell}")
        self.backbone_name = backbone
        self.fpn_channels = fpn_channels
        self.anchors_per_cell = anchors_per_cell
        self.body = build_backbone(backbone)
        self.fpn = FPN(self.body.out_channels, fpn_channels, leaky)
        self.ssh = nn.ModuleList(SSH(fpn_channels, fpn_channels, leaky) for _ in range(3))
        k = anchors_per_cell
        self.class_heads = nn.ModuleList(nn.Conv2d(fpn_channels, k * 2, 1) for _ in range(3))
        self.box_heads = nn.ModuleList(nn.Conv2d(fpn_channels, k * 4, 1) for _ in range(3))
        self.landmark_heads = nn.ModuleList(nn.Conv2d(fpn_channels, k * 10, 1) for _ in range(3))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The three SSH outputs (B, fpn_channels, H/s, W/s) for s = 8, 16, 32: what the heads read."""
        return [m(p) for m, p in zip(self.ssh, self.fpn(self.body(x)), strict=True)]

    def heads(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-level head outputs, flattened and concatenated level by level (see the module docstring)."""
        return {
            "logits": torch.cat([_flatten_head(h(f), 2) for h, f in zip(self.class_heads, feats, strict=True)], 1),
            "boxes": torch.cat([_flatten_head(h(f), 4) for h, f in zip(self.box_heads, feats, strict=True)], 1),
            "landmarks": torch.cat(
                [_flatten_head(h(f), 10) for h, f in zip(self.landmark_heads, feats, strict=True)], 1
            ),
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.features(x))
