"""Conformance checks every defence must pass (scikit-learn's ``check_estimator``, for the three shapes).

Why: the zoo, the bench and the guard service treat defences as interchangeable
objects of a shape; a defence that returns something else from ``fit``, flags against
its own threshold, or whose typed settings disagree with its constructor breaks them
far from its own code. The tests run these over every registered defence and over the
tests' fakes of the shapes without a built-in method yet.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from backdoorlab.defenses.base import Defence, PopulationDetector, RuntimeMonitor, Verdict
from backdoorlab.defenses.needs import Needs
from backdoorlab.defenses.settings import DefenceConfig


def check_defence_class(cls: type[Defence], config: type[DefenceConfig]) -> None:
    """A registered class: named, shaped, declares its needs, and its settings model builds it with its own defaults."""
    assert isinstance(cls.name, str) and cls.name and cls.shape != Defence.shape, cls
    assert isinstance(cls.needs, Needs), f"{cls.__name__}.needs must be a Needs"
    assert config.defence is cls, f"{config.__name__} is not tied to {cls.__name__}"
    built = config().build()
    assert type(built) is cls
    assert json.dumps(built.params(), sort_keys=True) == json.dumps(cls().params(), sort_keys=True), (
        f"{config.__name__}'s defaults differ from {cls.__name__}'s"
    )


def _check_verdict(v: Verdict, det: Any) -> None:
    assert isinstance(v, Verdict) and v.method == det.name
    assert v.backdoored == (v.score >= v.threshold) and v.threshold == det.threshold
    json.dumps(v.to_json())


def check_population_detector(
    det: PopulationDetector, references: Sequence[nn.Module], models: Sequence[nn.Module]
) -> None:
    """``fit`` returns the detector; verdicts follow the threshold, are JSON and repeat; models stay untouched."""
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (*references, *models)]
    assert det.fit(references) is det, "fit must return self"
    json.dumps(det.params())
    for model in models:
        first, again = det.inspect(model), det.inspect(model)
        _check_verdict(first, det)
        assert first.score == again.score, "inspect must be deterministic"
    after = [m.state_dict() for m in (*references, *models)]
    assert all(a[k].equal(b[k]) for a, b in zip(before, after, strict=True) for k in a), "models changed"


def check_runtime_monitor(mon: RuntimeMonitor, clean: Any, other: Any, false_alarm_rate: float) -> None:
    """Scores are one finite float per input and repeat; calibration keeps its rate; ``flag`` follows the threshold."""
    scores = mon.score(clean)
    assert isinstance(scores, np.ndarray) and scores.shape == (len(clean),) and np.all(np.isfinite(scores))
    assert np.array_equal(scores, mon.score(clean)), "score must be deterministic"
    threshold = mon.calibrate(clean, false_alarm_rate)
    assert threshold == mon.threshold and float(np.mean(scores >= threshold)) <= false_alarm_rate
    flags = mon.flag(other)
    assert flags.dtype == bool and np.array_equal(flags, mon.score(other) >= threshold)
    json.dumps(mon.params())
