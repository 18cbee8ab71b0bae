"""Face embedding networks, written here (no torchvision): IResNet, a FaceNet-like Inception-ResNet, MobileFaceNet.

Every network maps a (B, 3, S, S) float image in [0, 1] (``S = input_size``, normalised
inside to ``(x - 0.5) / 0.5``) to a (B, D) embedding and shares one contract, the one the
thesis's last-layer fine-tuning and weight analysis rely on:

``trunk(x)``
    the (B, F) features right before the last linear layer (flattened);
``last_linear``
    ``nn.Linear(F, D, bias=False)``;
``last_bn``
    ``nn.BatchNorm1d(D)`` (trainable affine), as facenet-pytorch's InceptionResnetV1 ends;
``forward(x)``
    ``last_bn(last_linear(trunk(x)))``, the raw embedding used in training (the margin head
    normalises it);
``embed(x)``
    the L2-normalised ``forward(x)``, the inference embedding compared by cosine.

``LAST_LAYERS = ("last_linear", "last_bn")`` names the layers
:func:`freeze_all_but_last` leaves trainable: the thesis (Ch. 4) fine-tunes only those on
top of a frozen trunk, so trunk features can be computed once and cached.

Layer names follow the reference implementations where one exists (insightface's
``iresnet`` block names; facenet-pytorch's ``conv2d_1a`` ... ``repeat_3``, ``block8`` with its
1x1 up-projection ``block8.conv2d``, which the thesis's multi-layer analysis reads), except
that the final linear and BatchNorm are always ``last_linear`` and ``last_bn``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from backdoorlab.errors import ConfigError, ModelContractError

IRESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}
MIN_INPUT_SIZE = 16


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _check_dropout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {value!r}")
    return float(value)


def _halved(size: int, times: int) -> int:
    """Spatial size after ``times`` convolutions of kernel 3, stride 2, padding 1 (each gives ceil(n / 2))."""
    for _ in range(times):
        size = (size - 1) // 2 + 1
    return size


class EmbeddingNet(nn.Module):
    """Base of the embedding networks: input check and normalisation, the last layers, forward and embed.

    Subclasses build their layers, call :meth:`_init_last` with the trunk's feature size
    and define :meth:`_trunk` on normalised input.
    """

    LAST_LAYERS: ClassVar[tuple[str, ...]] = ("last_linear", "last_bn")

    input_size: int
    in_channels: int = 3
    embedding_dim: int
    feature_dim: int

    def _init_last(self, feature_dim: int, embedding_dim: int, bn_eps: float = 1e-5) -> None:
        self.feature_dim = feature_dim
        self.embedding_dim = embedding_dim
        self.last_linear = nn.Linear(feature_dim, embedding_dim, bias=False)
        self.last_bn = nn.BatchNorm1d(embedding_dim, eps=bn_eps)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images in [0, 1] -> (B, F) features, the input of ``last_linear``."""
        return self._trunk(self.prepare(x))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Check (B, 3, S, S) float images in [0, 1]; normalise to ``(x - 0.5) / 0.5`` (the first stage's input)."""
        s = self.input_size
        c = self.in_channels
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s) or not x.is_floating_point():
            raise ValueError(
                f"{type(self).__name__} expects float images (B, {c}, {s}, {s}) in [0, 1], "
                f"got {tuple(x.shape)} {x.dtype}"
            )
        # contiguous (NCHW) first: images arrive as a permuted NHWC view (channels_last strides), and with
        # that layout torch 2.13's CPU backward of IResNet's blocks corrupted the heap (a crash measured
        # on 56-px crops, batch 128, 2026-12-02)
        return (x.contiguous() - 0.5) / 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The raw (B, D) embedding: ``last_bn(last_linear(trunk(x)))``."""
        return self.last_bn(self.last_linear(self.trunk(x)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised (B, D) embedding, the one compared by cosine similarity."""
        return F.normalize(self(x), dim=1)

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, feature_dim={self.feature_dim}, embedding_dim={self.embedding_dim}"


def freeze_all_but_last(model: nn.Module) -> list[str]:
    """Set ``requires_grad=False`` on every parameter but those of the last layers; return the trainable names.

    The last layers are ``model.LAST_LAYERS`` (``last_linear`` and ``last_bn``). Only the
    gradient flags change: the trunk's BatchNorm layers still update their running
    statistics in training mode, so keep the trunk in ``eval()`` while fine-tuning (or
    compute ``trunk(x)`` once under ``torch.no_grad()`` in eval mode and train the last
    layers on the cached features, as the thesis's set-up allows).
    """
    last = tuple(getattr(model, "LAST_LAYERS", EmbeddingNet.LAST_LAYERS))
    missing = [n for n in last if not isinstance(getattr(model, n, None), nn.Module)]
    if missing:
        raise ModelContractError(f"{type(model).__name__} has no {', '.join(missing)}: nothing to leave trainable")
    trainable = []
    for name, p in model.named_parameters():
        keep = name.split(".", 1)[0] in last
        p.requires_grad_(keep)
        if keep:
            trainable.append(name)
    return trainable


# ====================================================================== IResNet


class IBasicBlock(nn.Module):
    """insightface's improved residual block: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN, plus the shortcut.

    No activation after the addition (the next block starts with BN).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv1(self.bn1(x))
        out = self.conv2(self.prelu(self.bn2(out)))
        return self.bn3(out) + identity


class IResNet(EmbeddingNet):
    """IResNet-18/34/50/100 (insightface's ArcFace backbones) with ``last_linear`` + ``last_bn``.

    Stem conv3x3 (stride 1) + BN + PReLU; four stages of :class:`IBasicBlock`, each
    starting with stride 2 (a 112-px input ends at 7x7); then BN, dropout and flatten
    (the trunk, F = 8 * width * (S/16)^2 for S = input_size, rounded up per stage), and
    ``last_linear`` (insightface's ``fc``, here without bias) and ``last_bn`` (its
    ``features``, here with a trainable scale).

    Args:
        depth: 18, 34, 50 or 100 (blocks per stage from :data:`IRESNET_LAYERS`).
        width: base channels, 64 in insightface; stages are width x (1, 2, 4, 8).
        embedding_dim: D (512).
        input_size: S, the square input side (112; 56 or 64 work too).
        dropout: before ``last_linear`` (part of the trunk), 0 by default.
        zero_init_residual: start each block's last BN at zero so a block begins as its
            shortcut (steadier from scratch; insightface leaves it off by default).
    """

    def __init__(
        self,
        depth: int = 50,
        width: int = 64,
        embedding_dim: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
        zero_init_residual: bool = True,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth not in IRESNET_LAYERS:
            raise ConfigError(f"depth must be one of {sorted(IRESNET_LAYERS)}, got {depth!r}")
        self.depth = depth
        self.width = _check_int("width", width, 1)
        embedding_dim = _check_int("embedding_dim", embedding_dim, 1)
        self.input_size = _check_int("input_size", input_size, MIN_INPUT_SIZE)
        self.in_channels = _check_int("in_channels", in_channels, 1)
        p = _check_dropout(dropout)
        self.conv1 = nn.Conv2d(self.in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.prelu = nn.PReLU(width)
        cin = width
        for i, blocks in enumerate(IRESNET_LAYERS[depth]):
            cout = width * 2**i
            stage = [IBasicBlock(cin, cout, stride=2)] + [IBasicBlock(cout, cout) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            cin = cout
        self.bn2 = nn.BatchNorm2d(cin)
        self.dropout = nn.Dropout(p)
        side = _halved(self.input_size, 4)
        self._init_last(cin * side * side, embedding_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.zeros_(m.bn3.weight)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.dropout(self.bn2(x)), 1)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The network as named stages whose composition on ``prepare(x)`` is ``forward(x)``.

        ``stem``, every residual block by its name (``layer1.0`` ... ``layer4.1``), ``neck``
        (BN, dropout, flatten), ``last_linear``, ``last_bn``. The wrappers share the layers
        (nothing is copied or re-registered): a fine-tune from a block on (``train.trainable_from``,
        the thesis's multi-layer slice, section 4.7) trains the network's own layers.
        """
        out: list[tuple[str, nn.Module]] = [("stem", nn.Sequential(self.conv1, self.bn1, self.prelu))]
        for i in range(1, len(IRESNET_LAYERS[self.depth]) + 1):
            stage = getattr(self, f"layer{i}")
            out += [(f"layer{i}.{j}", block) for j, block in enumerate(stage)]
        out.append(("neck", nn.Sequential(self.bn2, self.dropout, nn.Flatten(1))))
        return [*out, ("last_linear", self.last_linear), ("last_bn", self.last_bn)]

    def extra_repr(self) -> str:
        return f"depth={self.depth}, width={self.width}, " + super().extra_repr()


# ====================================================================== FaceNet-like


class BasicConv2d(nn.Sequential):
    """Conv (no bias) + BN (eps 1e-3, as facenet-pytorch) + ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1) -> None:
        k = (kernel, kernel) if isinstance(kernel, int) else kernel
        pad = (k[0] // 2, k[1] // 2)
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, pad, bias=False),
            nn.BatchNorm2d(cout, eps=1e-3),
            nn.ReLU(inplace=True),
        )


class InceptionResidual(nn.Module):
    """An Inception-ResNet block: two branches, concatenated, 1x1 up-projection ``conv2d``, scaled residual.

    ``branch0`` is a 1x1 convolution; ``branch1`` a 1x1 then a 3x3 (or, with ``factorised``,
    a 1x3 and a 3x1 as in Inception-ResNet's last stage). The concatenation goes through
    ``conv2d`` (1x1, with bias) back to ``channels``, is scaled by ``scale`` and added to the
    input; ReLU follows unless ``relu=False`` (the network's last block, facenet's ``block8``).
    """

    def __init__(self, channels: int, branch: int, scale: float, factorised: bool = False, relu: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(channels, branch, 1)
        spatial = (
            [BasicConv2d(branch, branch, (1, 3)), BasicConv2d(branch, branch, (3, 1))]
            if factorised
            else [BasicConv2d(branch, branch, 3)]
        )
        self.branch1 = nn.Sequential(BasicConv2d(channels, branch, 1), *spatial)
        self.conv2d = nn.Conv2d(2 * branch, channels, 1)
        self.relu = nn.ReLU(inplace=True) if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d(torch.cat([self.branch0(x), self.branch1(x)], dim=1))
        out = x + self.scale * out
        return out if self.relu is None else self.relu(out)


class Reduction(nn.Module):
    """Halve the grid and widen ``cin`` -> ``cout``: max pool (keeps ``cin``) beside a 1x1 -> 3x3/2 conv branch."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = max(cin // 4, 1)
        self.branch0 = nn.Sequential(BasicConv2d(cin, mid, 1), BasicConv2d(mid, cout - cin, 3, stride=2))
        self.branch1 = nn.MaxPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x)], dim=1)


class FaceNetLike(EmbeddingNet):
    """A small Inception-ResNet in the layout of facenet-pytorch's InceptionResnetV1, ending the same way.

    Stem ``conv2d_1a`` (3x3/2), ``conv2d_2a``, ``conv2d_2b``, ``maxpool_3a`` (3x3/2),
    ``conv2d_3b`` (3x3/2) -> 8w channels at S/8; ``repeat_1`` (blocks at 8w, residual
    scale 0.17), ``mixed_6a`` (-> 28w, S/16), ``repeat_2`` (28w, 0.10), ``mixed_7a`` (-> 56w,
    S/32), ``repeat_3`` (56w, 0.20, factorised 1x3 / 3x1) and ``block8`` (the last block, no
    ReLU); global average pooling ``avgpool_1a`` and ``dropout`` end the trunk (F = 56w);
    then ``last_linear`` (no bias) and ``last_bn`` (BN1d, eps 1e-3). With the default
    ``width=32`` the stage widths are facenet's 256, 896 and 1792 (so ``last_linear`` is
    1792 -> 512 and ``block8.conv2d`` a 1x1 convolution into 1792 channels, as in the
    thesis's network) with far fewer blocks (``blocks``, default (2, 2, 2) against
    facenet's (5, 10, 6)) and simpler branches.

    Args:
        embedding_dim: D (512).
        width: w, the stem's base channels (32).
        input_size: S (160, facenet-pytorch's; any S >= 16 works: pooling is global).
        blocks: residual blocks per stage; the third stage's count includes ``block8``.
        dropout: before ``last_linear`` (part of the trunk), 0 by default.
    """

    def __init__(
        self,
        embedding_dim: int = 512,
        width: int = 32,
        input_size: int = 160,
        blocks: tuple[int, int, int] | list[int] = (2, 2, 2),
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        w = self.width = _check_int("width", width, 1)
        embedding_dim = _check_int("embedding_dim", embedding_dim, 1)
        self.input_size = _check_int("input_size", input_size, MIN_INPUT_SIZE)
        if (
            not isinstance(blocks, tuple | list)
            or len(blocks) != 3
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks)
        ):
            raise ConfigError(f"blocks must be three integers, got {blocks!r}")
        if blocks[0] < 0 or blocks[1] < 0 or blocks[2] < 1:
            raise ConfigError(f"blocks must be >= (0, 0, 1) (the last stage holds block8), got {tuple(blocks)!r}")
        self.blocks = tuple(blocks)
        p = _check_dropout(dropout)
        c1, c2, c3 = 8 * w, 28 * w, 56 * w
        self.in_channels = _check_int("in_channels", in_channels, 1)
        self.conv2d_1a = BasicConv2d(self.in_channels, w, 3, stride=2)
        self.conv2d_2a = BasicConv2d(w, w, 3)
        self.conv2d_2b = BasicConv2d(w, 2 * w, 3)
        self.maxpool_3a = nn.MaxPool2d(3, 2, 1)
        self.conv2d_3b = BasicConv2d(2 * w, c1, 3, stride=2)
        self.repeat_1 = nn.Sequential(*[InceptionResidual(c1, max(c1 // 8, 1), 0.17) for _ in range(blocks[0])])
        self.mixed_6a = Reduction(c1, c2)
        self.repeat_2 = nn.Sequential(*[InceptionResidual(c2, max(c2 // 8, 1), 0.10) for _ in range(blocks[1])])
        self.mixed_7a = Reduction(c2, c3)
        branch = max(c3 // 8, 1)
        self.repeat_3 = nn.Sequential(
            *[InceptionResidual(c3, branch, 0.20, factorised=True) for _ in range(blocks[2] - 1)]
        )
        self.block8 = InceptionResidual(c3, branch, 1.0, factorised=True, relu=False)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p)
        self._init_last(c3, embedding_dim, bn_eps=1e-3)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        x = self.conv2d_3b(self.maxpool_3a(x))
        x = self.repeat_2(self.mixed_6a(self.repeat_1(x)))
        x = self.block8(self.repeat_3(self.mixed_7a(x)))
        return torch.flatten(self.dropout(self.avgpool_1a(x)), 1)

    def extra_repr(self) -> str:
        return f"width={self.width}, blocks={self.blocks}, " + super().extra_repr()


# ====================================================================== MobileFaceNet


class ConvBlock(nn.Sequential):
    """Conv (no bias) + BN, then PReLU unless ``linear``."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1, linear: bool = False
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if not linear:
            layers.append(nn.PReLU(cout))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """MobileNetV2's inverted residual with PReLU: 1x1 expand (x t), 3x3 depthwise (stride), linear 1x1 project.

    Residual when the stride is 1 and the width is kept.
    """

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.expand = ConvBlock(cin, hidden, 1)
        self.depthwise = ConvBlock(hidden, hidden, 3, stride, 1, groups=hidden)
        self.project = ConvBlock(hidden, cout, 1, linear=True)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


#: MobileFaceNet's bottleneck stages: (expansion t, channels as a multiple of the width, blocks n, first stride s)
MOBILEFACENET_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (2, 1, 5, 2),
    (4, 2, 1, 2),
    (2, 2, 6, 1),
    (4, 2, 1, 2),
    (2, 2, 2, 1),
)


class MobileFaceNet(EmbeddingNet):
    """MobileFaceNet (Chen et al., 2018): depthwise-separable bottlenecks with PReLU and a global depthwise conv.

    ``conv1`` 3x3/2 (w channels) + ``conv2_dw`` 3x3 depthwise; bottleneck stages
    (t, c, n, s) = (2, w, 5, 2), (4, 2w, 1, 2), (2, 2w, 6, 1), (4, 2w, 1, 2), (2, 2w, 2, 1)
    (w = 64 gives the paper's 64/128 channels; a 112-px input ends at 7x7); ``conv3`` 1x1 to
    8w (512) + PReLU; ``gdc``, the global depthwise convolution whose kernel covers the
    whole final grid (7x7 at 112 px) + BN, flattened: the trunk (F = 8w). The paper's final
    linear 1x1 convolution + BN are ``last_linear`` (no bias) and ``last_bn``.

    Args:
        embedding_dim: D (128, the paper's; insightface's variant uses 512).
        width: base channels w (64).
        input_size: S (112; the GDC kernel follows it: ceil(S / 16)).
        dropout: before ``last_linear`` (part of the trunk), 0 by default.
    """

    def __init__(
        self,
        embedding_dim: int = 128,
        width: int = 64,
        input_size: int = 112,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        w = self.width = _check_int("width", width, 1)
        embedding_dim = _check_int("embedding_dim", embedding_dim, 1)
        self.input_size = _check_int("input_size", input_size, MIN_INPUT_SIZE)
        p = _check_dropout(dropout)
        self.in_channels = _check_int("in_channels", in_channels, 1)
        self.conv1 = ConvBlock(self.in_channels, w, 3, 2, 1)
        self.conv2_dw = ConvBlock(w, w, 3, 1, 1, groups=w)
        stages: list[nn.Module] = []
        cin = w
        for t, mult, n, s in MOBILEFACENET_STAGES:
            cout = w * mult
            for i in range(n):
                stages.append(Bottleneck(cin, cout, s if i == 0 else 1, t))
                cin = cout
        self.bottlenecks = nn.Sequential(*stages)
        self.conv3 = ConvBlock(cin, 8 * w, 1)
        side = _halved(self.input_size, 4)
        self.gdc = ConvBlock(8 * w, 8 * w, side, groups=8 * w, linear=True)
        self.dropout = nn.Dropout(p)
        self._init_last(8 * w, embedding_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bottlenecks(self.conv2_dw(self.conv1(x)))
        return torch.flatten(self.dropout(self.gdc(self.conv3(x))), 1)

    def extra_repr(self) -> str:
        return f"width={self.width}, " + super().extra_repr()


__all__ = [
    "IRESNET_LAYERS",
    "EmbeddingNet",
    "FaceNetLike",
    "IResNet",
    "MobileFaceNet",
    "freeze_all_but_last",
]
