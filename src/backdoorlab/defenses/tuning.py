"""Fine-tuning a copy of a model on a defender's small clean set: the one loop every mitigator uses.

Why a helper and not a loop per defence: SecureGaze unlearning, plain fine-tuning and
fine-pruning all end by training the model a little on clean data (SecureGaze adds
reversed-trigger images with their true labels through ``batch_transform``). They go
through :func:`backdoorlab.training.train`, so seeding, schedules, devices and NaN
checks behave as in every other training in the toolkit.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import ConfigError
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
    freeze_batchnorm: bool = False  # keep BatchNorm running statistics (see TrainSettings)

    def __post_init__(self) -> None:
        ok = (
            isinstance(self.epochs, int) and self.epochs >= 1
            and isinstance(self.batch_size, int) and self.batch_size >= 1
            and isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0
            and isinstance(self.weight_decay, int | float) and math.isfinite(self.weight_decay)
            and self.weight_decay >= 0
            and isinstance(self.seed, int) and isinstance(self.freeze_batchnorm, bool)
        )  # fmt: skip
        if not ok:
            raise ConfigError(
                "fine-tuning settings: epochs and batch_size must be integers >= 1, lr > 0, weight_decay >= 0, "
                f"seed an integer and freeze_batchnorm true/false; got {self.params()}"
            )

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
            freeze_batchnorm=settings.freeze_batchnorm,
        ),
        device=pick_device(device),
        batch_transform=batch_transform,
    )
    return tuned.eval()
