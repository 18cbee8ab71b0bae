"""Neural Cleanse adapted to regression: it must find the toy backdoor, and behave as a Detector."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from backdoorlab.defenses import NeuralCleanse
from backdoorlab.defenses.base import calibrated_threshold
from backdoorlab.defenses.neural_cleanse import initial_targets
from backdoorlab.errors import BackdoorLabError, ConfigError
from backdoorlab.geometry import angular_error_deg
from backdoorlab.tasks.gaze import GazeCNN

from .toy_backdoor import TRIGGER, clean_split, target_rad, toy_model

# short but sufficient on the toy (measured: ~4.5 s per inspection on one loaded core)
FAST = {"steps": 120, "batch_size": 16, "restarts": 5, "device": "cpu"}
FAST_EXAMPLES = 4  # NeuralCleanse's default n_examples


def small_untrained() -> nn.Module:
    """For the tests of the plumbing: any model honouring the contract will do, and this one costs nothing."""
    torch.manual_seed(0)
    return GazeCNN(width=8, feature_dim=32).eval()


def test_backdoored_toy_scores_higher_and_its_target_and_trigger_are_found(tmp_path) -> None:
    """The one expensive test (two toys trained, two inspections): kept whole so that xdist runs it once."""
    clean_set = clean_split()
    x, _ = clean_set.batch(np.arange(64))
    for backdoored in (True, False):  # guard: the trigger drives only the backdoored toy to the target
        model = toy_model(backdoored)  # trained on first use: outside no_grad
        with torch.no_grad():
            out = model(TRIGGER(x))
        err = float(angular_error_deg(out, target_rad().expand_as(out)).mean())
        assert (err < 5.0) == backdoored, (backdoored, err)  # measured: about 2 and 34 degrees
    clean, bd = (NeuralCleanse(**FAST).inspect(toy_model(b), clean_set) for b in (False, True))

    assert bd.details["constraint_met"] and "target_deg" in bd.estimates
    # measured on AVX-512, AVX2 and portable kernels (ATEN_CPU_CAPABILITY=avx2 / default): clean 1.02-1.08 vs
    # backdoored 1.79-1.91, i.e. at least 0.71 apart (reversed mask 8.4-9.6% vs 1.2-1.6% of the image, 5.2-7.9x)
    assert bd.score > clean.score + 0.4
    assert bd.details["mask_l1"] < clean.details["mask_l1"] / 3
    assert bd.score >= calibrated_threshold([clean.score])  # a threshold fitted on the clean toy flags it
    est = torch.tensor(np.radians(bd.estimates["target_deg"]))
    assert float(angular_error_deg(est, target_rad().double())) < 5.0  # measured: 1.2-3.0 degrees

    # the reversed trigger sits on the real one: the stamped examples differ from the faces in that corner
    assert bd.examples is not None and bd.examples.shape == (FAST_EXAMPLES, 32, 32, 3)
    assert bd.examples.dtype == np.uint8
    x4 = x[:FAST_EXAMPLES].permute(0, 2, 3, 1)
    changed = (torch.from_numpy(bd.examples).float() / 255 - x4).abs().amax((0, 3)) > 0.2
    ys, xs = np.nonzero(changed.numpy())
    assert len(ys) and np.median(ys) >= 22 and np.median(xs) >= 22  # the square: rows/columns 25-28 (medians 25-26)

    # the verdict is a JSON record from which the detector can be rebuilt
    data = json.loads(bd.write(tmp_path / "v.json").read_text())
    assert data["method"] == "neural_cleanse" and data["score"] == pytest.approx(bd.score)
    assert set(data["details"]) >= {"mask_l1", "final_lambda", "constraint_met", "n_clean", "params", "restarts"}
    assert len(data["details"]["restarts"]) == FAST["restarts"] and data["details"]["n_clean"] == 64
    assert len(data["estimates"]["target_deg"]) == 2
    assert data["estimated_target_deg"] == data["estimates"]["target_deg"]  # the key the bench's cache reads
    params = NeuralCleanse(**FAST).params()
    assert data["details"]["params"] == params and NeuralCleanse(**data["details"]["params"]).params() == params


def test_deterministic_and_the_model_is_untouched() -> None:
    model = small_untrained()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    nc = NeuralCleanse(steps=15, restarts=2, batch_size=16, device="cpu", seed=3)
    a, b = nc.inspect(model, clean_split()), nc.inspect(model, clean_split())
    assert a.score == b.score and a.details["restarts"] == b.details["restarts"]
    assert np.array_equal(a.examples, b.examples)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training


def test_no_mask_meeting_the_constraint_scores_the_minimum() -> None:
    nc = NeuralCleanse(steps=5, restarts=1, tolerance_deg=1e-6, threshold=0.0, device="cpu")
    v = nc.inspect(small_untrained(), clean_split())
    assert v.score == 0.0 and not v.details["constraint_met"]
    assert v.estimates == {} and nc.last_trigger is None
    assert "estimated_target_deg" not in v.to_json()
    assert v.backdoored  # threshold 0: a score of exactly the threshold flags (score >= threshold)


def test_too_few_clean_samples_names_the_method() -> None:
    with pytest.raises(BackdoorLabError, match="NeuralCleanse needs at least 64 clean samples; got 20"):
        NeuralCleanse(device="cpu").inspect(small_untrained(), clean_split(20))


class _NoSplit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def test_model_without_the_feature_head_split_is_refused_before_any_work() -> None:
    model = _NoSplit()
    with pytest.raises(BackdoorLabError, match=r"NeuralCleanse: _NoSplit has no features\(x\)"):
        NeuralCleanse(device="cpu").inspect(model, clean_split())
    assert model.calls == 0


def test_model_for_other_images_is_refused_with_a_clear_message() -> None:
    with pytest.raises(BackdoorLabError, match=r"NeuralCleanse: the model cannot run on the clean images"):
        NeuralCleanse(device="cpu").inspect(GazeCNN(in_channels=1, width=8), clean_split())


@pytest.mark.parametrize(
    "bad", [{"steps": 0}, {"restarts": 0}, {"lr": -1.0}, {"tolerance_deg": 0.0}, {"lambda_factor": 1.0}]
)
def test_bad_settings_are_refused(bad) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        NeuralCleanse(**bad)


def test_initial_targets_start_at_the_mean_and_spread_out() -> None:
    outs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.1, 0.1]])
    inits = initial_targets(outs, 3)
    assert torch.allclose(inits[0], outs.mean(0))
    assert torch.equal(inits[1], outs[2])  # the farthest from the mean (0.02, 0.22)
    assert torch.equal(inits[2], outs[1])  # then the farthest from both chosen ones
    assert len(initial_targets(outs, 99)) == len(outs) + 1
