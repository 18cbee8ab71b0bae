"""Plain fine-tuning on the defender's clean set: the simplest backdoor mitigation, and the baseline.

Why it is worth a class of its own: every other mitigator (fine-pruning, SecureGaze
unlearning) ends with the same fine-tuning, so comparing them with fine-tuning *alone*,
under the same schedule, tells how much their extra step (pruning, reversed-trigger
images) adds. Backdoors often survive it (the clean loss gives no gradient towards
forgetting a feature the clean data never activates), which is the point of measuring it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field
from torch import nn

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.defenses.base import Mitigator, Needs, resolve_task
from backdoorlab.defenses.registration import register_defence
from backdoorlab.defenses.settings import DefenceConfig
from backdoorlab.defenses.tuning import FineTuneSettings, fine_tune
from backdoorlab.errors import ConfigError

if TYPE_CHECKING:
    from backdoorlab.tasks.base import Task


class FineTuningConfig(DefenceConfig):
    """The settings of :class:`FineTuning`: the schedule (``tune``) and the smallest clean set."""

    renamed: ClassVar[dict[str, str]] = {"tune": "settings"}

    tune: FineTuneSettings = Field(default_factory=FineTuneSettings)
    min_clean: int = Field(64, ge=1)


@register_defence(FineTuningConfig)
class FineTuning(Mitigator):
    """Fine-tune a copy of the model on the clean set with :func:`~backdoorlab.defenses.tuning.fine_tune`.

    Args:
        settings: the fine-tuning schedule (default :class:`FineTuneSettings`: 10 epochs, lr 5e-4).
        min_clean: smallest clean set accepted.
        device: "auto", "cpu" or "cuda".
        task: the task of the models it repairs (a Task or a registered name); the runner sets it from the run.
    """

    name = "fine_tuning"
    # it only trains the whole model with the task's loss: any architecture will do (no features/head split)
    needs = Needs(clean_data=True, labels=True)

    def __init__(
        self,
        settings: FineTuneSettings | None = None,
        min_clean: int = 64,
        device: str = "auto",
        task: Task | str | None = None,
    ) -> None:
        if min_clean < 1:
            raise ConfigError(f"fine_tuning: min_clean must be >= 1, got {min_clean}")
        self.settings = settings if settings is not None else FineTuneSettings()
        self.min_clean, self.device, self.task = min_clean, device, resolve_task(task)
        #: what the last :meth:`repair` did (JSON), for the record of a repair
        self.last_report: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {"fine_tune": self.settings.params(), "min_clean": self.min_clean, "device": self.device}

    def repair(self, model: nn.Module, clean_data: ArrayDataset) -> nn.Module:
        task = self.require_task()
        self.check_needs(model=model, clean_data=clean_data, task=task)
        t0 = time.perf_counter()
        tuned = fine_tune(model, task, clean_data, self.settings, device=self.device)
        self.last_report = {"n_clean": len(clean_data), "seconds": time.perf_counter() - t0, "params": self.params()}
        return tuned
