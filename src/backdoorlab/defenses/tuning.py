"""Fine-tuning a copy of a model on a defender's small clean set: the one loop every mitigator uses.

Why a helper and not a loop per defence: SecureGaze unlearning, plain fine-tuning and
fine-pruning all end by training the model a little on clean data (SecureGaze adds
reversed-trigger images with their true labels through ``batch_transform``). They go
through :func:`backdoorlab.training.train`, so seeding, schedules, devices and NaN
checks behave as in every other training in the toolkit.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.tasks.gaze import GazeTask
from backdoorlab.training import BatchTransform, TrainSettings, pick_device, train


@dataclass
class FineTuneSettings:
    """A short, gentle schedule: the model is already trained, only the backdoor should move.

    The defaults (10 epochs at lr 5e-4 with a cosine decay) suit a few hundred 64x64
    clean faces, i.e. the <= 5% of a training set a defender is assumed to hold.
    """

    epochs: int = 10
    lr: float = 5e-4
    batch_size: int = 32
    weight_decay: float = 1e-4
    seed: int = 0

    def params(self) -> dict[str, Any]:
        return asdict(self)


def fine_tune(
    model: nn.Module,
    data: ArrayDataset,
    settings: FineTuneSettings,
    device: str = "auto",
    batch_transform: BatchTransform | None = None,
) -> nn.Module:
    """A fine-tuned copy of ``model`` (the original is untouched), in eval mode, on ``device``."""
    tuned = copy.deepcopy(model)
    for p in tuned.parameters():
        p.requires_grad_(True)
    train(
        tuned,
        GazeTask(),
        data,
        TrainSettings(
            epochs=settings.epochs,
            batch_size=min(settings.batch_size, len(data)),
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            warmup_epochs=0.0,
            seed=settings.seed,
            progress=False,
        ),
        device=pick_device(device),
        batch_transform=batch_transform,
    )
    return tuned.eval()
