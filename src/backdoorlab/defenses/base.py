"""The three shapes of a defence, and the verdict a detector returns.

scikit-learn-like on purpose: a defence is an object whose constructor holds all its
settings (visible, documented, serialisable with :meth:`Defence.params`), and one
method does the work. There are three shapes because defenders hold different things:

- per model, from a small clean set: ``Detector.inspect(model, clean_data) -> Verdict``
  and ``Mitigator.repair(model, clean_data) -> model`` (trigger
  reverse-engineering, Neural Cleanse, fine-pruning);
- over a population, from clean *reference models*' weights and no data:
  ``PopulationDetector.fit(reference_models) -> self``, then ``inspect(model) -> Verdict``;
- at run time, on the inputs a deployed model sees: ``RuntimeMonitor.fit(...)``,
  ``score(inputs) -> one score per input``, ``calibrate(clean, false_alarm_rate)``,
  ``flag(inputs)``.

Each defence class declares what it needs (:class:`~backdoorlab.defenses.needs.Needs`)
and registers itself by method name in ``backdoorlab.registry.DEFENCES``
(:func:`~backdoorlab.defenses.registration.register_defence`). Defences only see what a
defender has, never the poisoned training data or the trigger. Nothing here names a task.
"""

from __future__ import annotations

import dataclasses
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from torch import nn

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.defenses.needs import Needs, require_clean_samples
from backdoorlab.errors import BackdoorLabError

__all__ = [
    "Defence", "Detector", "Mitigator", "Needs", "PopulationDetector", "RuntimeMonitor", "Verdict",
    "calibrated_threshold", "require_clean_samples", "resolve_task",
]  # fmt: skip

if TYPE_CHECKING:
    from typing import Self

    from backdoorlab.tasks.base import Task

#: estimates also written at the top level of verdict.json under the name they had before
#: ``estimates`` existed, so that readers of older verdicts (the bench's verdict cache) keep working
LEGACY_ESTIMATE_KEYS = {"target_deg": "estimated_target_deg"}


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays and tuples turned into JSON types (recursively)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class Verdict:
    """What a detector concludes about one model.

    ``score`` is oriented so that higher means more likely backdoored; the model is
    flagged when ``score >= threshold``. ``estimates`` holds what the method could
    reverse-engineer about the attack, keyed by a task-specific name (a gaze detector's
    ``{"target_deg": [pitch, yaw]}``); empty when it yields nothing.
    """

    method: str
    backdoored: bool
    score: float
    threshold: float
    seconds: float
    estimates: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    examples: np.ndarray | None = None  # uint8 (M, H, W, C) reversed-trigger images, not serialised

    def to_json(self) -> dict[str, Any]:
        out = jsonable({k: v for k, v in dataclasses.asdict(self).items() if k != "examples"})
        for key, legacy in LEGACY_ESTIMATE_KEYS.items():
            if out["estimates"].get(key) is not None:
                out[legacy] = out["estimates"][key]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Verdict:
        """A verdict from its JSON record, older ones (top-level ``estimated_target_deg``) included."""
        estimates = dict(data.get("estimates") or {})
        for key, legacy in LEGACY_ESTIMATE_KEYS.items():
            if data.get(legacy) is not None:
                estimates.setdefault(key, data[legacy])
        fields = {f.name for f in dataclasses.fields(cls)} - {"estimates", "examples"}
        return cls(**{k: v for k, v in data.items() if k in fields}, estimates=estimates)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the verdict JSON atomically (a reader never sees half a verdict)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True))
        tmp.replace(out)
        return out


class Defence(ABC):
    """What every shape shares: a method name, a shape, a declaration of needs, and its settings."""

    #: the method name it registers under (``backdoorlab detect --method NAME``)
    name: ClassVar[str] = "defence"
    #: the shape, in words ("detection", "mitigation", ...): error messages and the registry use it
    shape: ClassVar[str] = "defence"
    needs: ClassVar[Needs] = Needs()

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Every constructor setting (JSON), for the record of a detection or repair."""

    def check_needs(self, **given: Any) -> None:
        """:meth:`Needs.check` of this class's declaration, naming this defence (see its arguments)."""
        self.needs.check(type(self).__name__, min_clean=getattr(self, "min_clean", 1), **given)


class Detector(Defence):
    """Scores one model from a clean set; ``threshold`` (an attribute) turns the score into a decision."""

    shape = "detection"
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
    """Repairs one model from a clean set. Mitigators that train use ``task`` (the model's task) for the loss."""

    shape = "mitigation"
    #: the task of the models it repairs (a :class:`~backdoorlab.tasks.base.Task`); the runner sets it from
    #: the run when the constructor was not given one
    task: Task | None = None

    @abstractmethod
    def repair(self, model: nn.Module, clean_data: ArrayDataset) -> nn.Module:
        """A copy of ``model`` with the backdoor removed or weakened (``model`` is untouched)."""

    def require_task(self) -> Task:
        """The task to fine-tune with, or one error saying how to give it."""
        if self.task is None:
            raise BackdoorLabError(
                f"{type(self).__name__} needs the task of the model it repairs: pass task=... (a Task or a name "
                "registered in backdoorlab.registry.TASKS)"
            )
        return self.task


class PopulationDetector(Defence):
    """Learns what clean models' weights look like from reference models, then scores one model by its weights.

    Why a shape of its own: it needs reference models, and no clean data (weight-anomaly
    detection, e.g. PCA + GMM over clean models' layers). ``fit`` returns ``self``
    (scikit-learn style); ``inspect`` before ``fit`` is an error.
    """

    shape = "population detection"
    needs = Needs(clean_data=False, references=True)
    threshold: float

    @abstractmethod
    def fit(self, reference_models: Sequence[nn.Module]) -> Self:
        """Learn the clean population from ``reference_models`` (known to be clean); return ``self``."""

    @abstractmethod
    def inspect(self, model: nn.Module) -> Verdict:
        """Decide whether ``model`` carries a backdoor from its weights (after :meth:`fit`)."""


class RuntimeMonitor(Defence):
    """Scores the inputs a deployed model sees (higher = more likely triggered) and flags the unusual ones.

    Why calibrated at a false-alarm rate: a guard in front of a face system is tuned by
    how many genuine users it may stop, so the threshold is set on clean inputs such that
    at most ``false_alarm_rate`` of them are flagged (:meth:`calibrate`).
    """

    shape = "runtime monitoring"
    threshold: float | None = None

    @abstractmethod
    def fit(self, *clean_inputs: Any) -> Self:
        """Learn what clean inputs look like (a monitor may need several views, e.g. images and outputs)."""

    @abstractmethod
    def score(self, inputs: Any) -> np.ndarray:
        """One float score per input, shape (N,)."""

    def calibrate(self, clean: Any, false_alarm_rate: float) -> float:
        """Set and return ``threshold`` so that at most ``false_alarm_rate`` of the clean inputs are flagged.

        ``clean`` is either the clean inputs' scores (a 1-D float numpy array) or the clean
        inputs themselves (anything else), which are scored with :meth:`score` first.
        """
        is_scores = isinstance(clean, np.ndarray) and clean.ndim == 1 and np.issubdtype(clean.dtype, np.floating)
        self.threshold = calibrated_threshold(clean if is_scores else self.score(clean), false_alarm_rate)
        return self.threshold

    def flag(self, inputs: Any) -> np.ndarray:
        """(N,) bool: ``score >= threshold`` (after :meth:`calibrate`)."""
        if self.threshold is None:
            raise BackdoorLabError(f"{type(self).__name__}.flag needs a threshold: call calibrate(...) first")
        return np.asarray(self.score(inputs)) >= self.threshold


def calibrated_threshold(clean_scores: Sequence[float] | np.ndarray, max_fpr: float = 0.1) -> float:
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


def resolve_task(task: Task | str | None) -> Task | None:
    """A Task from a Task, a name registered in ``backdoorlab.registry.TASKS``, or None."""
    if task is None or not isinstance(task, str):
        return task
    from backdoorlab.registry import TASKS

    return TASKS.get(task)()
