"""What a training batch is while it is in flight, and the hooks that may rewrite it.

A batch is ``(images, annotations)``: float images ``(B, C, H, W)`` in [0, 1] and a
mapping of annotation columns (tensors, and an instance table under ``"instances"``
when the dataset has one), plus the dataset indices of its samples. Poisoning, input
masking and adaptive attacks plug into the one training loop through these hooks; they
live here, below both the loop and the attacks, so neither has to import the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

# (images, annotations, sample indices) -> (images, annotations), e.g. poisoning the selected rows
BatchTransform = Callable[[torch.Tensor, dict[str, Any], np.ndarray], tuple[torch.Tensor, dict[str, Any]]]
# (model, images on the device, annotations after batch_transform, sample indices) -> scalar added to the loss
Regularizer = Callable[[nn.Module, torch.Tensor, dict[str, Any], np.ndarray], torch.Tensor]


def summed(*regularizers: Regularizer | None) -> Regularizer | None:
    """One regularizer adding up the given ones (``None`` entries skipped; ``None`` when none is left).

    Why: an attacker may hide from several detectors at once (the feature signature and the
    weight distance); the loop takes one hook.
    """
    present = [r for r in regularizers if r is not None]
    if len(present) <= 1:
        return present[0] if present else None

    def total(model: nn.Module, images: torch.Tensor, ann: dict[str, Any], idx: np.ndarray) -> torch.Tensor:
        out = present[0](model, images, ann, idx)
        for regularizer in present[1:]:
            out = out + regularizer(model, images, ann, idx)
        return out

    return total
