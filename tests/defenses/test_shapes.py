"""The three shapes' base behaviour, on tiny fakes: population detectors, runtime monitors and their needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve
from torch import nn

from backdoorlab.defenses.base import Needs, PopulationDetector, RuntimeMonitor, Verdict
from backdoorlab.defenses.conformance import check_population_detector, check_runtime_monitor
from backdoorlab.errors import BackdoorLabError, DatasetError, ModelContractError
from backdoorlab.tasks.gaze import GazeCNN, GazeTask

from .toy_backdoor import clean_split


class WeightNorm(PopulationDetector):
    """Flags a model whose weight norm is far (in reference standard deviations) from the references' mean."""

    name = "weight_norm"

    def __init__(self, threshold: float = 3.0) -> None:
        self.threshold = threshold
        self.mean_: float | None = None

    def params(self) -> dict[str, Any]:
        return {"threshold": self.threshold}

    @staticmethod
    def _norm(model: nn.Module) -> float:
        return float(sum(p.detach().double().norm() ** 2 for p in model.parameters()) ** 0.5)

    def fit(self, reference_models: Sequence[nn.Module]) -> WeightNorm:
        self.check_needs(references=reference_models)
        norms = np.array([self._norm(m) for m in reference_models])
        self.mean_, self.std_ = float(norms.mean()), float(norms.std() + 1e-9)
        return self

    def inspect(self, model: nn.Module) -> Verdict:
        if self.mean_ is None:
            raise BackdoorLabError("WeightNorm.inspect before fit")
        score = abs(self._norm(model) - self.mean_) / self.std_
        return Verdict(self.name, score >= self.threshold, score, self.threshold, 0.0)


class Brightness(RuntimeMonitor):
    """Scores an image by how far its mean brightness is from the clean inputs' (a patch trigger brightens)."""

    name = "brightness"

    def fit(self, *clean_inputs: Any) -> Brightness:
        (images,) = clean_inputs
        self.mean_ = float(images.mean())
        return self

    def params(self) -> dict[str, Any]:
        return {}

    def score(self, inputs: Any) -> np.ndarray:
        return np.abs(inputs.mean((1, 2, 3)).double().numpy() - self.mean_)


def scaled(model: nn.Module, factor: float) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)
    return model


def gaze_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return GazeCNN(width=4, feature_dim=8).eval()


def test_population_detector_fits_on_references_and_flags_the_outlier() -> None:
    references = [gaze_cnn(s) for s in range(6)]
    outlier = scaled(gaze_cnn(99), 3.0)
    det = WeightNorm()
    check_population_detector(det, references, [outlier, gaze_cnn(7)])
    assert det.fit(references) is det
    assert det.inspect(outlier).backdoored and not det.inspect(gaze_cnn(7)).backdoored
    with pytest.raises(BackdoorLabError, match="WeightNorm needs reference models known to be clean; got none"):
        WeightNorm().fit([])


def test_runtime_monitor_calibrates_at_the_false_alarm_rate_as_roc_curve_counts() -> None:
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(200, 3, 8, 8, generator=gen) * 0.6
    triggered = clean[:50].clone()
    triggered[..., :3, :3] = 1.0
    mon = Brightness().fit(clean[:100])
    check_runtime_monitor(mon, clean[100:], triggered, 0.1)
    clean_scores, bad_scores = mon.score(clean[100:]), mon.score(triggered)
    labels = np.r_[np.zeros(len(clean_scores)), np.ones(len(bad_scores))]
    fpr, _, _ = roc_curve(labels, np.r_[clean_scores, bad_scores], drop_intermediate=False)
    for rate in (0.0, 0.01, 0.05, 0.1, 0.25, 0.5):
        threshold = mon.calibrate(clean[100:], rate)  # from the inputs...
        assert mon.calibrate(clean_scores, rate) == threshold  # ...or from their scores: the same threshold
        flagged = float(np.mean(clean_scores >= threshold))  # a direct count
        assert flagged <= rate
        # no threshold flags more clean inputs while staying within the rate (roc_curve's operating points)
        assert flagged == pytest.approx(fpr[fpr <= rate + 1e-12].max())
        assert np.array_equal(mon.flag(clean[100:]), clean_scores >= threshold)
    assert mon.flag(triggered).mean() > 0.9  # the brightened patch is caught at a 50% false-alarm budget too


def test_runtime_monitor_refuses_to_flag_before_calibration() -> None:
    mon = Brightness().fit(torch.rand(4, 3, 8, 8))
    with pytest.raises(BackdoorLabError, match=r"calibrate\(\.\.\.\) first"):
        mon.flag(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="max_fpr"):
        mon.calibrate(np.array([0.1, 0.2]), 1.0)


def test_needs_refuse_with_one_message_naming_the_defence_and_the_missing_piece() -> None:
    data = clean_split(64)
    gaze_only = Needs(tasks=("gaze",))

    class Detection(GazeTask):
        name = "detection"
        required_annotations = ("boxes",)

    with pytest.raises(BackdoorLabError, match=r"^X works on gaze models only; this model's task is 'detection'$"):
        gaze_only.check("X", task=Detection())
    gaze_only.check("X", task=GazeTask(), clean_data=data)
    with pytest.raises(BackdoorLabError, match=r"^X needs at least 65 clean samples; got 64$"):
        Needs().check("X", clean_data=data, min_clean=65)
    with pytest.raises(DatasetError, match=r"^X: .*lacks annotation\(s\) \['boxes'\]"):
        Needs(labels=True).check("X", clean_data=data, task=Detection())
    with pytest.raises(BackdoorLabError, match=r"^X needs the model's task"):
        Needs(labels=True).check("X", clean_data=data)
    with pytest.raises(ModelContractError, match=r"^X: Sequential has no features"):
        Needs(feature_head=True).check("X", clean_data=data, model=nn.Sequential(nn.Flatten(), nn.Linear(3072, 2)))
    Needs(feature_head=True, labels=True).check("X", clean_data=data, model=gaze_cnn(0), task=GazeTask())
    Needs().check("X", clean_data=data, model=nn.Sequential())  # the contract is checked only when declared
