"""Fine-pruning (Liu et al., RAID 2018), adapted to the features/head contract of backdoorlab models.

Liu et al. observed that a backdoor often lives in units the clean data leaves dormant:
the trigger switches them on, clean inputs do not. Pruning the units least active on
clean data therefore removes much of the backdoor at little clean cost, and the
fine-tuning that follows repairs the clean task and erodes what is left of it.

Adaptation: the original prunes channels of the last convolutional layer. Which layer
that is cannot be found generically in an arbitrary ``nn.Module``, but every model here
exposes its penultimate representation ``features(x) -> (B, d)`` and a linear ``head``;
those d units are pruned instead. Pruning unit j means that it no longer reaches the
output: column j of ``head.weight`` is zeroed.

Keeping the pruned units pruned during fine-tuning: for the fine-tuning the head is
replaced by a :class:`MaskedLinear` (an ``nn.Linear`` subclass, so the contract still holds)
that computes ``x @ (weight * mask).T + bias``. The gradient of a pruned entry is then
exactly zero, so neither the optimiser's momentum nor weight decay can regrow it (the
entries are zeroed first, and Adam's update of a zero with a zero gradient is zero).
Afterwards the head becomes a plain ``nn.Linear`` holding ``weight * mask``: the repaired
model has exactly-zero columns and the same ``state_dict`` keys as the original (the mask
is a non-persistent buffer), so it saves and loads like any model of its class.
Why not zero once and fine-tune unmasked: the gradient would regrow the columns. Why not
a forward hook or :mod:`torch.nn.utils.prune`: ``fine_tune`` deep-copies the model, and
pruning's re-parametrised weight is not a graph leaf, which ``deepcopy`` refuses; a plain
submodule with a buffer copies and moves between devices like every other parameter.
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
from backdoorlab.defenses.base import Mitigator, Needs, resolve_task
from backdoorlab.defenses.registration import register_defence
from backdoorlab.defenses.settings import DefenceConfig
from backdoorlab.defenses.tuning import FineTuneSettings, fine_tune
from backdoorlab.errors import BackdoorLabError, ConfigError
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


def mean_feature_activation(
    model: nn.Module, data: ArrayDataset, batch_size: int = 64, device: str | torch.device = "cpu"
) -> np.ndarray:
    """(d,) mean of ``model.features(x)`` over ``data``, in eval mode (float64, on the CPU)."""
    dev = torch.device(device)
    total: torch.Tensor | None = None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for images, _ in data.iter_batches(batch_size):
                f = model.features(images.to(dev)).double().sum(0)  # type: ignore[operator]
                total = f if total is None else total + f
    finally:
        model.train(was_training)
    if total is None:
        raise BackdoorLabError("cannot measure feature activations on an empty clean set")
    return (total / len(data)).cpu().numpy()


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
    needs = Needs(clean_data=True, labels=True, feature_head=True)

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

    def repair(self, model: nn.Module, clean_data: ArrayDataset) -> nn.Module:
        task = self.require_task()
        self.check_needs(model=model, clean_data=clean_data, task=task)
        t0 = time.perf_counter()
        pruned = copy.deepcopy(model)  # the caller's model is never re-parametrised
        dev = pick_device(self.device)
        pruned.to(dev)
        activation = mean_feature_activation(pruned, clean_data, self.batch_size, dev)
        units = least_active_units(activation, self.prune_ratio)
        head: nn.Linear = pruned.head  # type: ignore[assignment]
        mask = torch.ones_like(head.weight)
        mask[:, torch.from_numpy(units).to(mask.device)] = 0
        pruned.head = MaskedLinear(head, mask)
        tuned = fine_tune(pruned, task, clean_data, self.settings, device=self.device)
        tuned.head = tuned.head.to_linear()  # type: ignore[operator]
        setattr(tuned, PRUNED_ATTR, units.tolist())
        self.last_report = {
            "pruned_units": units.tolist(),
            "n_units": len(activation),
            # units with a zero mean activation on the clean set (dead ReLUs): pruning them changes nothing
            "n_dormant": int(np.sum(activation <= 0)),
            "n_live_pruned": int(np.sum(activation[units] > 0)),
            "mean_activation": activation.tolist(),
            "n_clean": len(clean_data),
            "seconds": time.perf_counter() - t0,
            "params": self.params(),
        }
        return tuned
