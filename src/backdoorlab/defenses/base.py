"""Detector / Mitigator interfaces and the verdict every detector returns.

scikit-learn-like on purpose: a defence is an object whose constructor holds all its
settings (visible, documented, serialisable with :meth:`Defence.params`), and one
method does the work: ``Detector.inspect(model, clean_data) -> Verdict`` or
``Mitigator.repair(model, clean_data) -> model``. Defences only see what a defender
has: the model (any ``nn.Module`` honouring the features/head contract) and a small
clean dataset, never the poisoned training data or the trigger.
"""

from __future__ import annotations

import dataclasses
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import BackdoorLabError


@dataclass
class Verdict:
    """What a detector concludes about one model.

    ``score`` is oriented so that higher means more likely backdoored; the model is
    flagged when ``score >= threshold``. ``estimated_target_deg`` is the (pitch, yaw)
    the reverse-engineered trigger drives the model to, when the method yields one.
    """

    method: str
    backdoored: bool
    score: float
    threshold: float
    seconds: float
    estimated_target_deg: tuple[float, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    examples: np.ndarray | None = None  # uint8 (M, H, W, C) reversed-trigger images, not serialised

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "examples"}
        if self.estimated_target_deg is not None:
            out["estimated_target_deg"] = [float(v) for v in self.estimated_target_deg]
        return out

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the verdict JSON atomically (a reader never sees half a verdict)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True))
        tmp.replace(out)
        return out


class Defence(ABC):
    name: str = "defence"

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Every constructor setting (JSON), for the record of a detection or repair."""


class Detector(Defence):
    """Scores a model; ``threshold`` (an attribute) turns the score into a decision."""

    threshold: float

    @abstractmethod
    def inspect(self, model: nn.Module, clean_data: ArrayDataset) -> Verdict:
        """Decide whether ``model`` carries a backdoor, from clean data only."""

    def fit(self, reference_models: Sequence[nn.Module], clean_data: ArrayDataset, max_fpr: float = 0.1) -> float:
        """Calibrate ``threshold`` on models known to be clean; return it.

        Why: a score's scale depends on the architecture and the data, so a fixed
        threshold travels badly. The threshold is set just above the reference scores
        so that at most ``max_fpr`` of the references would be flagged (with few
        references, that is just above the highest).
        """
        if not reference_models:
            raise BackdoorLabError(f"{self.name}.fit needs at least one reference clean model")
        scores = [self.inspect(m, clean_data).score for m in reference_models]
        self.threshold = calibrated_threshold(scores, max_fpr)
        return self.threshold


class Mitigator(Defence):
    @abstractmethod
    def repair(self, model: nn.Module, clean_data: ArrayDataset) -> nn.Module:
        """A copy of ``model`` with the backdoor removed or weakened (``model`` is untouched)."""


def calibrated_threshold(clean_scores: Sequence[float], max_fpr: float = 0.1) -> float:
    """The smallest threshold (``score >= threshold`` flags) leaving at most ``max_fpr`` of ``clean_scores`` flagged.

    The threshold sits halfway between the highest clean score that must stay unflagged
    and the next one up; when every reference must stay unflagged, 5% of the reference
    spread above the highest, so a new clean model scoring a hair above the references is
    not flagged by rounding.
    """
    if not 0.0 <= max_fpr < 1.0:
        raise ValueError(f"max_fpr must be in [0, 1); got {max_fpr}")
    s = np.sort(np.asarray(clean_scores, np.float64))
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise BackdoorLabError(f"cannot calibrate a threshold from scores {list(clean_scores)}")
    allowed = int(np.floor(max_fpr * s.size + 1e-9))  # references that may be flagged
    keep = s[: s.size - allowed]  # these must stay below the threshold
    top = keep[-1]
    if allowed:
        return float((top + s[s.size - allowed]) / 2) if s[s.size - allowed] > top else float(np.nextafter(top, np.inf))
    spread = float(s[-1] - s[0]) if s.size > 1 else abs(float(top))
    return float(top + 0.05 * max(spread, 1e-6))


def require_clean_samples(data: ArrayDataset, minimum: int, who: str) -> None:
    """Refuse a clean set too small for a defence to mean anything."""
    if len(data) < minimum:
        raise BackdoorLabError(f"{who} needs at least {minimum} clean samples; got {len(data)}")
