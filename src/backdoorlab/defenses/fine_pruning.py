"""Fine-pruning (Liu et al., RAID 2018), adapted to the features/head split of backdoorlab models.

Liu et al. observed that a backdoor often lives in units the clean data leaves dormant:
the trigger switches them on, clean inputs do not. Pruning the units least active on
clean data therefore removes much of the backdoor at little clean cost, and the
fine-tuning that follows repairs the clean task and erodes what is left of it.

Adaptation: the original prunes channels of the last convolutional layer. Which layer
that is cannot be found generically in an arbitrary ``nn.Module``, but every model here
exposes the representation its output layers read, ``features(x)``: either one
(B, d) vector per image read by a linear ``head`` (the gaze models), or a list of
feature maps (B, C, H, W) read by per-map output layers called through ``heads(feats)``
(an anchor-based detector's class, box and landmark convolutions). The *readers* of
each feature tensor are found by running ``heads`` (or ``head``) once with forward
pre-hooks: every ``nn.Linear`` or ungrouped ``nn.Conv2d`` whose input *is* that tensor.
The units are the channels of the feature tensors; pruning unit j of a tensor means that
it no longer reaches the output: input channel j of every reader of that tensor is
zeroed. With several feature maps, each map loses ``prune_ratio`` of its own channels
(activation scales differ between maps, so one global ranking would empty one map).

Keeping the pruned units pruned during fine-tuning: for the fine-tuning each reader is
replaced by a :class:`MaskedLinear` or :class:`MaskedConv2d` (subclasses of the layer
they replace) that multiplies its weight by a fixed 0/1 mask. The gradient of a pruned
entry is then exactly zero, so neither the optimiser's momentum nor weight decay can
regrow it (the entries are zeroed first, and Adam's update of a zero with a zero gradient
is zero). Afterwards each reader becomes a plain layer holding ``weight * mask``: the
repaired model has exactly-zero input channels and the same ``state_dict`` keys as the
original (the mask is a non-persistent buffer), so it saves and loads like any model of
its class. Why not zero once and fine-tune unmasked: the gradient would regrow the
columns. Why not a forward hook or :mod:`torch.nn.utils.prune`: ``fine_tune``
deep-copies the model, and pruning's re-parametrised weight is not a graph leaf, which
``deepcopy`` refuses; a plain submodule with a buffer copies and moves between devices
like every other parameter.
"""

from __future__ import annotations

import copy
import math
import time
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import nn

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.defenses._inputs import model_device
from backdoorlab.defenses.base import Mitigator, Needs, resolve_task
from backdoorlab.defenses.registration import register_defence
from backdoorlab.defenses.settings import DefenceConfig
from backdoorlab.defenses.tuning import FineTuneSettings, fine_tune
from backdoorlab.errors import BackdoorLabError, ConfigError, ModelContractError
from backdoorlab.training import pick_device

if TYPE_CHECKING:
    from backdoorlab.tasks.base import Task

#: attribute set on a repaired model: the pruned feature units (sorted indices)
PRUNED_ATTR = "pruned_units"


class MaskedLinear(nn.Linear):
    """An ``nn.Linear`` whose weight is multiplied by a fixed 0/1 mask: masked entries get no gradient."""

    mask: torch.Tensor

    def __init__(self, linear: nn.Linear, mask: torch.Tensor) -> None:
        super().__init__(
            linear.in_features, linear.out_features, linear.bias is not None, linear.weight.device, linear.weight.dtype
        )
        with torch.no_grad():
            self.weight.copy_(linear.weight * mask)
            if linear.bias is not None:
                self.bias.copy_(linear.bias)
        # not persistent: the state_dict keys stay those of a plain nn.Linear
        self.register_buffer("mask", mask.to(linear.weight), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the masked weight baked in (masked entries exactly zero)."""
        out = nn.Linear(
            self.in_features, self.out_features, self.bias is not None, self.weight.device, self.weight.dtype
        )
        with torch.no_grad():
            out.weight.copy_(self.weight * self.mask)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out


class MaskedConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose weight is multiplied by a fixed 0/1 mask: masked entries get no gradient."""

    mask: torch.Tensor

    def __init__(self, conv: nn.Conv2d, mask: torch.Tensor) -> None:
        super().__init__(**_conv_args(conv))
        with torch.no_grad():
            self.weight.copy_(conv.weight * mask)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)
        self.register_buffer("mask", mask.to(conv.weight), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)

    def to_conv(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the masked weight baked in (masked entries exactly zero)."""
        out = nn.Conv2d(**_conv_args(self))
        with torch.no_grad():
            out.weight.copy_(self.weight * self.mask)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out


def _conv_args(conv: nn.Conv2d) -> dict[str, Any]:
    return {
        "in_channels": conv.in_channels, "out_channels": conv.out_channels, "kernel_size": conv.kernel_size,
        "stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation, "groups": conv.groups,
        "bias": conv.bias is not None, "padding_mode": conv.padding_mode, "device": conv.weight.device,
        "dtype": conv.weight.dtype,
    }  # fmt: skip


def feature_list(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """``model.features(x)`` as a list of tensors (one for a (B, d) representation)."""
    feats = model.features(x)  # type: ignore[operator]
    return [feats] if isinstance(feats, torch.Tensor) else list(feats)


def feature_readers(model: nn.Module, example: torch.Tensor) -> list[list[str]]:
    """Per feature tensor of ``model.features(example)``: the names of the layers that read it directly.

    Runs ``model.heads(feats)`` (or ``model.head(feats)``) once, with a forward pre-hook
    on every ``nn.Linear`` and ``nn.Conv2d``. Raises :class:`ModelContractError` when the
    model has no ``features`` method or no ``heads``/``head``, when a feature tensor is read
    by no such layer or by a grouped convolution, or when ``model(x)`` is not
    ``heads(features(x))`` (the pruning would then not reach the output).
    """
    name = type(model).__name__
    if not callable(getattr(model, "features", None)):
        raise ModelContractError(f"{name} has no features(x) method; fine-pruning prunes the features' units")
    head = getattr(model, "heads", None) if callable(getattr(model, "heads", None)) else getattr(model, "head", None)
    if not callable(head):
        raise ModelContractError(f"{name} has neither heads(features) nor a head module reading its features")
    was_training = model.training
    model.eval()
    hooks = []
    try:
        with torch.no_grad():
            feats = model.features(example)  # type: ignore[operator]
            levels = [feats] if isinstance(feats, torch.Tensor) else list(feats)
            readers: list[list[str]] = [[] for _ in levels]
            for mod_name, mod in model.named_modules():
                if isinstance(mod, nn.Linear | nn.Conv2d):

                    def seen(m: nn.Module, args: tuple[Any, ...], mod_name: str = mod_name) -> None:
                        for i, f in enumerate(levels):
                            if args and args[0] is f and mod_name not in readers[i]:
                                readers[i].append(mod_name)

                    hooks.append(mod.register_forward_pre_hook(seen))
            out = head(feats)
            for h in hooks:
                h.remove()
            hooks = []
            whole = model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not _same_outputs(whole, out):
        raise ModelContractError(f"{name}(x) differs from its head(s) applied to {name}.features(x)")
    for i, (f, names) in enumerate(zip(levels, readers, strict=True)):
        if not names:
            raise ModelContractError(f"{name}: feature tensor {i} {tuple(f.shape)} is read by no Linear or Conv2d")
        for n in names:
            m = model.get_submodule(n)
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise ModelContractError(f"{name}: feature tensor {i} is read by a grouped convolution ({n})")
    return readers


def _same_outputs(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_outputs(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same_outputs(x, y) for x, y in zip(a, b, strict=True))
    return False


def check_prunable(model: nn.Module, data: ArrayDataset, who: str) -> list[list[str]]:
    """:func:`feature_readers` on two clean images, with errors naming ``who``."""
    example, _ = data.batch(np.arange(min(len(data), 2)))
    try:
        return feature_readers(model, example.to(model_device(model)))
    except ModelContractError as exc:
        raise ModelContractError(f"{who}: {exc}") from exc
    except RuntimeError as exc:
        raise BackdoorLabError(
            f"{who}: the model cannot run on the clean images of shape {tuple(example.shape[1:])}: {exc}"
        ) from exc


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def mean_channel_activation(
    model: nn.Module, data: ArrayDataset, batch_size: int = 64, device: str | torch.device = "cpu"
) -> list[np.ndarray]:
    """Per feature tensor: the (C,) mean of each channel over ``data`` (images and positions), in eval mode."""
    dev = torch.device(device)
    totals: list[torch.Tensor] | None = None
    count = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for images, _ in data.iter_batches(batch_size):
                levels = feature_list(model, images.to(dev))
                sums = [f.double().transpose(0, 1).reshape(f.shape[1], -1).mean(1) * len(f) for f in levels]
                totals = sums if totals is None else [t + s for t, s in zip(totals, sums, strict=True)]
                count += len(images)
    finally:
        model.train(was_training)
    if totals is None:
        raise BackdoorLabError("cannot measure feature activations on an empty clean set")
    return [(t / count).cpu().numpy() for t in totals]


def mean_feature_activation(
    model: nn.Module, data: ArrayDataset, batch_size: int = 64, device: str | torch.device = "cpu"
) -> np.ndarray:
    """(d,) mean activation of every feature unit over ``data`` (the channels of all feature tensors, in order)."""
    return np.concatenate(mean_channel_activation(model, data, batch_size, device))


def least_active_units(mean_activation: np.ndarray, prune_ratio: float) -> np.ndarray:
    """Sorted indices of the ``round(prune_ratio * d)`` units with the smallest mean activation.

    Ties are broken by the lower index (a stable sort), so the choice is reproducible.
    """
    k = round(prune_ratio * len(mean_activation))
    return np.sort(np.argsort(mean_activation, kind="stable")[:k]).astype(np.int64)


class FinePruningConfig(DefenceConfig):
    """The settings of :class:`FinePruning`; the fine-tuning after pruning is the ``tune`` section."""

    renamed: ClassVar[dict[str, str]] = {"tune": "settings"}

    prune_ratio: float = Field(0.8, ge=0, lt=1)
    tune: FineTuneSettings = Field(default_factory=FineTuneSettings)
    batch_size: int = Field(64, ge=1)
    min_clean: int = Field(64, ge=1)


@register_defence(FinePruningConfig)
class FinePruning(Mitigator):
    """Prune the feature units least active on clean data, then fine-tune (pruned units stay pruned).

    Args:
        prune_ratio: fraction of the d feature units pruned, in [0, 1). Liu et al. prune
            until clean accuracy drops, which has no agreed analogue for a regression
            model, so the ratio is a setting. Default 0.8, from measurements on the tests'
            toy GazeCNNs: 75-89% of their feature units are dormant (mean activation 0) on
            clean faces, and a ratio below that fraction prunes only dormant units, which
            changes neither the clean error nor the backdoor; the method acts only once it
            cuts live units (on the 32-unit toy, 0.9 cut 5 live units and took the
            backdoor's success from 87% to 0% at +4.7 degrees of clean error, where 0.8 and
            plain fine-tuning left it at 88%; on 256-unit toys even 0.9 did not). Check
            ``last_report["n_live_pruned"]``: 0 means the repair was plain fine-tuning.
        settings: the fine-tuning schedule after pruning (default :class:`FineTuneSettings`).
        batch_size: clean images per forward pass when measuring activations.
        min_clean: smallest clean set accepted.
        device: "auto", "cpu" or "cuda".
        task: the task of the models it repairs (a Task or a registered name); the runner sets it from the run.
    """

    name = "fine_pruning"
    needs = Needs(clean_data=True, labels=True)  # and a prunable features/head(s) split (check_prunable)

    def __init__(
        self,
        prune_ratio: float = 0.8,
        settings: FineTuneSettings | None = None,
        batch_size: int = 64,
        min_clean: int = 64,
        device: str = "auto",
        task: Task | str | None = None,
    ) -> None:
        if not (isinstance(prune_ratio, int | float) and math.isfinite(prune_ratio) and 0 <= prune_ratio < 1):
            raise ConfigError(f"fine_pruning: prune_ratio must be in [0, 1), got {prune_ratio!r}")
        if batch_size < 1 or min_clean < 1:
            raise ConfigError(f"fine_pruning: batch_size and min_clean must be >= 1, got {batch_size}, {min_clean}")
        self.prune_ratio = float(prune_ratio)
        self.settings = settings if settings is not None else FineTuneSettings()
        self.batch_size, self.min_clean, self.device = batch_size, min_clean, device
        self.task = resolve_task(task)
        #: what the last :meth:`repair` did (JSON): pruned units, their activations, timing
        self.last_report: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {
            "prune_ratio": self.prune_ratio,
            "fine_tune": self.settings.params(),
            "batch_size": self.batch_size,
            "min_clean": self.min_clean,
            "device": self.device,
        }

    def check_needs(self, **given: Any) -> None:
        """The declared needs, then (given a model and clean data) the prunable split, before any work."""
        super().check_needs(**given)
        if given.get("model") is not None and given.get("clean_data") is not None:
            check_prunable(given["model"], given["clean_data"], type(self).__name__)

    def repair(self, model: nn.Module, clean_data: ArrayDataset) -> nn.Module:
        task = self.require_task()
        self.check_needs(model=model, clean_data=clean_data, task=task)
        t0 = time.perf_counter()
        readers = check_prunable(model, clean_data, type(self).__name__)
        pruned = copy.deepcopy(model)  # the caller's model is never re-parametrised
        dev = pick_device(self.device)
        pruned.to(dev)
        per_level = mean_channel_activation(pruned, clean_data, self.batch_size, dev)
        chosen = [least_active_units(a, self.prune_ratio) for a in per_level]
        offsets = np.cumsum([0, *[len(a) for a in per_level]])
        units = np.concatenate([c + o for c, o in zip(chosen, offsets, strict=False)]).astype(np.int64)
        activation = np.concatenate(per_level)
        for names, cut in zip(readers, chosen, strict=True):
            for name in names:
                layer = pruned.get_submodule(name)
                mask = torch.ones_like(layer.weight)
                mask[:, torch.from_numpy(cut).to(mask.device)] = 0  # input channel (column) j of the reader
                masked = MaskedLinear(layer, mask) if isinstance(layer, nn.Linear) else MaskedConv2d(layer, mask)
                _replace(pruned, name, masked)
        tuned = fine_tune(pruned, task, clean_data, self.settings, device=self.device)
        for names in readers:
            for name in names:
                layer = tuned.get_submodule(name)
                _replace(tuned, name, layer.to_linear() if isinstance(layer, MaskedLinear) else layer.to_conv())  # type: ignore[operator]
        setattr(tuned, PRUNED_ATTR, units.tolist())
        self.last_report = {
            "pruned_units": units.tolist(),
            "n_units": len(activation),
            "units_per_feature": [len(a) for a in per_level],
            # units with a zero mean activation on the clean set (dead ReLUs): pruning them changes nothing
            "n_dormant": int(np.sum(activation <= 0)),
            "n_live_pruned": int(np.sum(activation[units] > 0)),
            "mean_activation": activation.tolist(),
            "n_clean": len(clean_data),
            "seconds": time.perf_counter() - t0,
            "params": self.params(),
        }
        return tuned
