"""An adaptive backdoor: train the backdoor while hiding its feature-space signature.

The signature (SecureGaze, SenSys 2025; DRMGuard): split the model into features F and
a linear head H. On triggered inputs F(x) of all samples points the same way relative
to H, so the angle ``theta_j`` between F(x) and each head row ``w_j`` varies far less
across triggered samples than across clean ones (a zoo GazeCNN with a patch backdoor:
Var ratio about 0.001). A detector built on that signature is only convincing if it
also holds up against an attacker who knows it, so this module gives the attacker a
penalty on it, added to the task loss through the training loop's ``regularizer``
hook::

    penalty = weight * sum_j relu(1 - Var_triggered(theta_j) / Var_clean(theta_j).detach())

per training batch, where "clean" are the batch's clean rows and "triggered" are its
poisoned rows plus triggered copies of its clean rows. Why this form:

* triggered copies, not only the poisoned rows: a batch of 64 holds about 6 poisoned
  rows at a 10% rate, and a variance ratio over 6 samples is mostly noise. Penalising
  that noise (hinged, so it always pushes the same way) inflated every angle's spread
  and stalled training: measured on the zoo's patch attack, clean error 21 deg and ASR
  0.47 at weight 0.01 (0.02 at weight 1), where the paired estimate below gives ASR
  0.84 at weight 0.01 with the signature gone (ratio 1.3). With copies, clean and
  triggered angles come from the same images, so the ratio is about 1 until the
  backdoor forms and the penalty acts only on the backdoor;
* eval mode for the penalty's passes: those are the features a detector sees, and
  BatchNorm running statistics are left alone (a train-mode pass would normalise away
  what the trigger shares across a batch of triggered images);
* the clean variance is detached: it is the reference, not something to shrink;
* the ratio is hinged at 1: once triggered angles spread as widely as clean ones there
  is nothing left to hide, and the term stops pulling;
* the ratio, not its logarithm: the term stays in ``[0, outputs * weight]``, whereas
  ``-log`` grows without bound (and its gradient like 1/Var_triggered) as the
  triggered variance collapses.

Scale of ``weight``: the gradient of the ratio goes like 1/Var_clean(theta), and clean
angles of a GazeCNN spread by only a few hundredths of a radian (Var about 1e-3), so at
initialisation the penalty's gradient is 30-150x the L1 task loss's at weight 1. Useful
weights are therefore around 1e-3 to 1e-2, not 1.

Batches with fewer than two clean rows contribute nothing. Noise-mode rows (WaNet's
cross samples) are left out of both groups. The penalty costs one forward pass with
gradients (triggered rows) and one without (clean rows) per step: about 1.6-1.8x the
time of plain training.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from backdoorlab.attacks.poisoning import PoisonPlan
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import ConfigError
from backdoorlab.triggers.base import Trigger

Tensor = torch.Tensor

COS_CLAMP = 1e-6  # acos has an infinite slope at +-1: keep the cosine inside (-1, 1)
VAR_EPS = 1e-12


def feature_head_angles(features: Tensor, head: nn.Linear | Tensor) -> Tensor:
    """(B, outputs) angles in radians between each feature vector and each head weight row.

    ``features`` is ``model.features(x)`` (B, d); ``head`` is ``model.head`` or its (outputs, d)
    weight. The cosine is clamped to ``[-1 + 1e-6, 1 - 1e-6]`` so gradients stay finite at
    (anti)parallel vectors; a zero feature vector has cosine 0 (angle pi/2).
    """
    weight = head.weight if isinstance(head, nn.Linear) else head
    if features.ndim != 2 or weight.ndim != 2 or features.shape[1] != weight.shape[1]:
        raise ValueError(
            f"features {tuple(features.shape)} and head weight {tuple(weight.shape)} must be (B, d) and (outputs, d)"
        )
    f = nn.functional.normalize(features, dim=1)
    w = nn.functional.normalize(weight.to(features.dtype), dim=1)
    return torch.acos((f @ w.T).clamp(-1 + COS_CLAMP, 1 - COS_CLAMP))


def angle_variance_penalty(angles: Tensor, triggered: Tensor) -> Tensor:
    """``sum_j relu(1 - Var_triggered(theta_j) / Var_clean(theta_j).detach())`` (unweighted).

    ``angles`` is (B, outputs), ``triggered`` a (B,) bool mask (the other rows are the clean
    reference). Zero (still a tensor on the angles' device) when either group has fewer
    than two rows.
    """
    triggered = triggered.to(angles.device, torch.bool)
    n_t = int(triggered.sum())
    if n_t < 2 or len(triggered) - n_t < 2:
        return angles.new_zeros(())
    var_t = angles[triggered].var(dim=0)
    var_c = angles[~triggered].var(dim=0).detach()
    return torch.relu(1 - var_t / (var_c + VAR_EPS)).sum()


class FeatureSignaturePenalty:
    """The training-loop ``regularizer`` of an adaptive attack (see the module docstring).

    Args:
        plan: which training samples are poisoned (and which are noise-mode samples);
            a batch's rows are looked up by their dataset indices.
        trigger: the attack's trigger, applied to copies of the batch's clean rows.
        weight: multiplier of the penalty (> 0).
    """

    def __init__(self, plan: PoisonPlan, trigger: Trigger, weight: float) -> None:
        if not (isinstance(weight, int | float) and np.isfinite(weight) and weight > 0):
            raise ConfigError(f"adaptive penalty weight must be a finite number > 0, got {weight!r}")
        self.poison_mask, cross_mask = plan.masks()
        self.clean_mask = ~self.poison_mask & ~cross_mask
        self.trigger = trigger
        self.weight = float(weight)

    def __call__(self, model: nn.Module, images: Tensor, ann: dict[str, Tensor], idx: np.ndarray) -> Tensor:
        idx = np.asarray(idx)
        clean_rows, poison_rows = np.flatnonzero(self.clean_mask[idx]), np.flatnonzero(self.poison_mask[idx])
        if len(clean_rows) < 2:
            return images.new_zeros(())
        clean = images[torch.from_numpy(clean_rows).to(images.device)]
        copies = self.trigger(clean, {k: v[torch.from_numpy(clean_rows)] for k, v in ann.items()}, idx[clean_rows])
        triggered = torch.cat([images[torch.from_numpy(poison_rows).to(images.device)], copies])
        was_training = model.training
        model.eval()  # the features a detector sees; and no BatchNorm statistics change
        try:
            with torch.no_grad():
                theta_clean = feature_head_angles(model.features(clean), model.head)  # type: ignore[arg-type]
            theta_trig = feature_head_angles(model.features(triggered), model.head)  # type: ignore[arg-type]
        finally:
            model.train(was_training)
        mask = torch.cat([torch.zeros(len(clean), dtype=torch.bool), torch.ones(len(triggered), dtype=torch.bool)])
        return self.weight * angle_variance_penalty(torch.cat([theta_clean, theta_trig]), mask)


@torch.no_grad()
def angle_variance_ratio(
    model: nn.Module, data: ArrayDataset, trigger: Trigger, device: torch.device | str = "cpu", batch_size: int = 256
) -> np.ndarray:
    """Per output j: ``Var(theta_j)`` over ``data`` with the trigger applied, over ``Var(theta_j)`` without.

    The signature a detector looks for, measured in eval mode: far below 1 means the
    backdoor's features are visible, about 1 or more means they are hidden.
    """
    was_training = model.training
    model.eval()
    clean, triggered = [], []
    try:
        for start in range(0, len(data), batch_size):
            idx = np.arange(start, min(start + batch_size, len(data)))
            images, ann = data.batch(idx)
            for x, out in ((images, clean), (trigger(images, ann, idx), triggered)):
                out.append(feature_head_angles(model.features(x.to(device)), model.head).double().cpu())  # type: ignore[arg-type]
    finally:
        model.train(was_training)
    var_clean, var_trig = torch.cat(clean).var(dim=0), torch.cat(triggered).var(dim=0)
    return (var_trig / var_clean.clamp_min(VAR_EPS)).numpy()
