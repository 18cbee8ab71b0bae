"""Fine-tuning a copy of a model on a defender's small clean set: the one loop every mitigator uses.

Why a helper and not a loop per defence: unlearning a reversed trigger, plain
fine-tuning and fine-pruning all end by training the model a little on clean data
(unlearning adds reversed-trigger images with their true labels through
``batch_transform``). They go
through :func:`backdoorlab.training.train`, so seeding, schedules, devices and NaN
checks behave as in every other training in the toolkit.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from pydantic import Field
from torch import nn

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.defenses.settings import StrictSettings
from backdoorlab.training import BatchTransform, TrainSettings, pick_device, train

if TYPE_CHECKING:
    from backdoorlab.tasks.base import Task


class FineTuneSettings(StrictSettings):
    """A short, gentle schedule: the model is already trained, only the backdoor should move.

    The defaults (10 epochs at lr 5e-4 with a cosine decay) suit a few hundred 64x64
    clean faces, i.e. the <= 5% of a training set a defender is assumed to hold. In a
    mitigator's config this is the nested ``tune:`` section.
    """

    epochs: int = Field(10, ge=1)
    lr: float = Field(5e-4, gt=0, allow_inf_nan=False)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(1e-4, ge=0, allow_inf_nan=False)
    seed: int = 0
    freeze_batchnorm: bool = Field(False, description="keep BatchNorm running statistics (see TrainSettings)")


def fine_tune(
    model: nn.Module,
    task: Task,
    data: ArrayDataset,
    settings: FineTuneSettings,
    device: str = "auto",
    batch_transform: BatchTransform | None = None,
) -> nn.Module:
    """A copy of ``model`` fine-tuned on ``task`` (the original is untouched), in eval mode, on ``device``."""
    tuned = copy.deepcopy(model)
    for p in tuned.parameters():
        p.requires_grad_(True)
    train(
        tuned,
        task,
        data,
        TrainSettings(
            epochs=settings.epochs,
            batch_size=min(settings.batch_size, len(data)),
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            warmup_epochs=0.0,
            seed=settings.seed,
            progress=False,
            freeze_batchnorm=settings.freeze_batchnorm,
        ),
        device=pick_device(device),
        batch_transform=batch_transform,
    )
    return tuned.eval()
