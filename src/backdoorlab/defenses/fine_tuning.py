"""Plain fine-tuning on the defender's clean set: the simplest backdoor mitigation, and the baseline.

Why it is worth a class of its own: every other mitigator (fine-pruning, SecureGaze
unlearning) ends with the same fine-tuning, so comparing them with fine-tuning *alone*,
under the same schedule, tells how much their extra step (pruning, reversed-trigger
images) adds. Backdoors often survive it (the clean loss gives no gradient towards
forgetting a feature the clean data never activates), which is the point of measuring it.
"""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.defenses._inputs import check_defence_inputs
from backdoorlab.defenses.base import Mitigator
from backdoorlab.defenses.tuning import FineTuneSettings, fine_tune
from backdoorlab.errors import ConfigError


class FineTuning(Mitigator):
    """Fine-tune a copy of the model on the clean set with :func:`~backdoorlab.defenses.tuning.fine_tune`.

    Args:
        settings: the fine-tuning schedule (default :class:`FineTuneSettings`: 10 epochs, lr 5e-4).
        min_clean: smallest clean set accepted.
        device: "auto", "cpu" or "cuda".
    """

    name = "fine_tuning"

    def __init__(self, settings: FineTuneSettings | None = None, min_clean: int = 64, device: str = "auto") -> None:
        if min_clean < 1:
            raise ConfigError(f"fine_tuning: min_clean must be >= 1, got {min_clean}")
        self.settings = settings if settings is not None else FineTuneSettings()
        self.min_clean, self.device = min_clean, device
        #: what the last :meth:`repair` did (JSON), for the record of a repair
        self.last_report: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {"fine_tune": self.settings.params(), "min_clean": self.min_clean, "device": self.device}

    def repair(self, model: nn.Module, clean_data: ArrayDataset) -> nn.Module:
        check_defence_inputs(model, clean_data, "FineTuning", self.min_clean, need_gaze=True)
        t0 = time.perf_counter()
        tuned = fine_tune(model, clean_data, self.settings, device=self.device)
        self.last_report = {"n_clean": len(clean_data), "seconds": time.perf_counter() - t0, "params": self.params()}
        return tuned
