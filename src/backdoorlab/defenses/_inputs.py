"""Model checks shared by the defences: where a model lives, and whether it honours the features/head split.

Why a shared check that runs first: every defence optimises or trains for seconds to
minutes; a model without the features/head split or a model that cannot even run on
the clean images must fail at once, with a message that names the defence, not after
(or in the middle of) that work with a raw torch error.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import BackdoorLabError, ModelContractError
from backdoorlab.models import check_feature_head_contract


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s weights live (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def check_feature_head(model: nn.Module, data: ArrayDataset, who: str) -> None:
    """Raise naming ``who`` unless ``model`` splits into features + linear head and runs on ``data``'s images.

    Checked on two clean images, which also proves the model accepts images of this size
    and channel count. ``model`` is not changed.
    """
    example, _ = data.batch(np.arange(min(len(data), 2)))
    try:
        check_feature_head_contract(model, example.to(model_device(model)))
    except ModelContractError as exc:
        raise ModelContractError(f"{who}: {exc}") from exc
    except RuntimeError as exc:  # e.g. a channel or size mismatch inside the model
        raise BackdoorLabError(
            f"{who}: the model cannot run on the clean images of shape {tuple(example.shape[1:])}: {exc}"
        ) from exc
