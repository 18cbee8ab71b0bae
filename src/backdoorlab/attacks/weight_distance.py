"""An adaptive backdoor against weight inspection: stay close to the clean weights training starts from.

A population detector (the thesis's weight anomaly, ch. 4) judges a network by how its
weight vectors sit among those of clean reference networks. An attacker who knows it
starts from a clean network of that population (``model.init``: for the thesis's zoo, a
clean fine-tune of the shared pretrained model) and plants the backdoor while paying

    penalty = weight * sum_p ||theta_p - theta_p(0)||^2

over every parameter the run trains (``theta(0)``: its value when training starts), added
to the task loss through the training loop's ``regularizer`` hook. Why this form:

* the squared L2 distance from the *starting* weights, not from zero (weight decay does
  that): the starting network is clean and looks like the references, so the nearer the
  backdoored weights stay to it, the less a density over reference weights can tell;
* summed, not averaged: ``weight`` then reads as a price per unit of squared distance,
  independent of the layer's size. For scale, a last-layer fine-tune of the recognition
  zoo (IResNet-18 w8, ``last_linear`` 512 x 1024, Adam at lr 0.03) moved its weights by a
  squared distance of about 1,030 from the base model, against a task loss near 5;
* only trained parameters: a frozen trunk cannot move, and the task's own modules (a
  margin head, used only in training) are not what a defender inspects.

The penalty is cheap: one subtraction and square per trained parameter per step.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from backdoorlab.errors import ConfigError

Tensor = torch.Tensor


class WeightDistancePenalty:
    """The training-loop ``regularizer`` that prices the distance from the starting weights.

    Args:
        model: the module the loop trains (for ``train.trainable: last``, the last layers);
            its trainable parameters are copied now, as the anchor.
        weight: multiplier of the squared distance (> 0).
    """

    def __init__(self, model: nn.Module, weight: float) -> None:
        numeric = isinstance(weight, int | float) and not isinstance(weight, bool)
        if not (numeric and math.isfinite(weight) and weight > 0):
            raise ConfigError(f"weight-distance penalty weight must be a finite number > 0, got {weight!r}")
        self.weight = float(weight)
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        if not self.anchor:
            raise ConfigError("the weight-distance penalty found no trainable parameter to anchor")

    def distance(self, model: nn.Module) -> Tensor:
        """Squared L2 distance of ``model``'s anchored parameters from the anchor (with gradients)."""
        params = dict(model.named_parameters())
        missing = sorted(set(self.anchor) - set(params))
        if missing:
            raise ConfigError(f"the weight-distance penalty's anchor has parameters the model lacks: {missing[:3]}")
        total = None
        for name, start in self.anchor.items():
            p = params[name]
            part = (p - start.to(p.device, p.dtype)).pow(2).sum()
            total = part if total is None else total + part
        assert total is not None
        return total

    def __call__(self, model: nn.Module, images: Tensor, ann: dict[str, Any], idx: np.ndarray) -> Tensor:
        return self.weight * self.distance(model)
