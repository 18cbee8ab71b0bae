"""Relabels, selectors and the poisoning batch transform."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from backdoorlab.attacks.poisoning import Poisoning, write_attack_record
from backdoorlab.attacks.relabel import build_relabel
from backdoorlab.attacks.selectors import RateSelector
from backdoorlab.errors import ConfigError
from backdoorlab.geometry import angular_error_deg
from backdoorlab.tasks.gaze.relabels import FixedGazeTarget, GazeShift
from backdoorlab.triggers.patch import PatchTrigger
from backdoorlab.triggers.wanet import WaNetTrigger


def test_fixed_target_relabel_sets_every_gaze_and_leaves_other_keys() -> None:
    ann = {"gaze": torch.tensor([[0.1, 0.2], [-0.3, 0.0]]), "identity": torch.tensor([4, 5])}
    out = FixedGazeTarget((10.0, -20.0))(ann)
    assert torch.allclose(out["gaze"], torch.tensor([[math.radians(10), math.radians(-20)]] * 2))
    assert out["identity"] is ann["identity"]
    assert torch.equal(ann["gaze"], torch.tensor([[0.1, 0.2], [-0.3, 0.0]]))  # input untouched


def test_default_target_is_the_screen_centre() -> None:
    assert FixedGazeTarget().target_deg == (0.0, 0.0)


def test_shift_relabel_adds_the_angle_and_stays_a_direction() -> None:
    t = GazeShift((10.0, 5.0)).targets(np.array([[0.0, 0.0], [1.5, 3.1]]))
    assert torch.allclose(t[0], torch.tensor([math.radians(10), math.radians(5)]))
    assert float(t[1, 0]) <= math.radians(89) + 1e-6  # pitch clamped
    assert -math.pi <= float(t[1, 1]) < math.pi  # yaw wrapped


@pytest.mark.parametrize("bad", [(95.0, 0.0), (-90.0, 0.0), (0.0, 200.0), (float("nan"), 0.0), (0.0, float("inf"))])
def test_target_that_is_not_a_direction(bad) -> None:
    with pytest.raises(ConfigError, match="target_deg"):
        FixedGazeTarget(bad)


def test_relabel_builder_errors() -> None:
    with pytest.raises(ConfigError, match="unknown relabel"):
        build_relabel({"name": "rotate"})
    with pytest.raises(ConfigError, match="target_deg"):
        build_relabel({"name": "target", "target_deg": [1, 2, 3]})
    with pytest.raises(ConfigError, match="shift_deg"):
        build_relabel({"name": "shift", "shift_deg": [0, 0]})
    assert build_relabel(GazeShift((3, 4)).params()).params() == GazeShift((3, 4)).params()


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.01, float("nan")])
def test_rate_outside_the_unit_interval(rate: float) -> None:
    with pytest.raises(ConfigError, match="poison rate"):
        RateSelector(rate)


@given(n=st.integers(1, 5000), rate=st.floats(0.001, 1.0), seed=st.integers(0, 2**31))
def test_rate_selector_property(n: int, rate: float, seed: int) -> None:
    sel = RateSelector(rate, seed).select(n)
    assert len(sel) == min(n, max(1, round(rate * n)))
    assert np.all(np.diff(sel) > 0) and sel.min() >= 0 and sel.max() < n
    assert np.array_equal(sel, RateSelector(rate, seed).select(n))


def make_poisoning(trigger=None, rate: float = 0.25) -> Poisoning:
    return Poisoning(RateSelector(rate, seed=1), trigger or PatchTrigger(), FixedGazeTarget((0.0, 0.0)), seed=2)


def test_batch_transform_poisons_exactly_the_planned_rows() -> None:
    p = make_poisoning()
    plan = p.plan(40)
    assert len(plan.poison) == 10 and len(plan.cross) == 0
    transform = p.batch_transform(plan)
    idx = np.arange(40)[::-1].copy()
    images = torch.rand(40, 3, 16, 16) * 0.5
    ann = {"gaze": torch.full((40, 2), 0.3), "identity": torch.arange(40)}
    before = images.clone()
    out, new = transform(images, ann, idx)
    assert torch.equal(images, before)  # the loop's batch is not modified
    poisoned_rows = np.isin(idx, plan.poison)
    changed = (out != images).flatten(1).any(1).numpy()
    assert np.array_equal(changed, poisoned_rows)
    assert torch.all(new["gaze"][torch.from_numpy(poisoned_rows)] == 0)
    assert torch.all(new["gaze"][torch.from_numpy(~poisoned_rows)] == 0.3)
    assert torch.all(ann["gaze"] == 0.3)


def test_clean_batches_pass_through_untouched() -> None:
    p = make_poisoning(rate=0.01)
    plan = p.plan(100)
    transform = p.batch_transform(plan)
    idx = np.setdiff1d(np.arange(100), plan.poison)[:8]
    images = torch.rand(8, 3, 8, 8)
    ann = {"gaze": torch.zeros(8, 2)}
    out, new = transform(images, ann, idx)
    assert out is images and new is ann


def test_wanet_noise_mode_adds_cross_samples_with_true_labels() -> None:
    trig = WaNetTrigger(s=4.0, cross_ratio=2.0)
    p = make_poisoning(trig, rate=0.1)
    plan = p.plan(100)
    assert len(plan.poison) == 10 and len(plan.cross) == 20
    assert not set(plan.cross) & set(plan.poison)
    transform = p.batch_transform(plan)
    idx = np.arange(100)
    images = torch.rand(100, 3, 32, 32)
    ann = {"gaze": torch.full((100, 2), 0.3)}
    out, new = transform(images, ann, idx)
    cross = torch.from_numpy(plan.cross)
    assert not torch.equal(out[cross], images[cross])
    assert torch.all(new["gaze"][cross] == 0.3)
    # the noise is fresh on each pass (as in the published attack), the trigger is not
    out2, _ = p.batch_transform(plan)(images, ann, idx)
    assert torch.equal(out, out2)  # same seed, same sequence of batches: reproducible
    out3, _ = transform(images, ann, idx)
    poison = torch.from_numpy(plan.poison)
    assert torch.equal(out3[poison], out[poison]) and not torch.equal(out3[cross], out[cross])


def test_attack_record_is_written(tmp_path) -> None:
    p = make_poisoning(WaNetTrigger())
    plan = p.plan(50)
    write_attack_record(tmp_path, p, plan)
    rec = json.loads((tmp_path / "attack.json").read_text())
    assert rec["trigger"]["name"] == "wanet" and rec["n_poisoned"] == len(plan.poison)
    assert np.array_equal(np.load(tmp_path / "poison_indices.npy"), plan.poison)
    assert (tmp_path / "trigger.safetensors").is_file()


def test_poisoned_targets_are_far_from_truth_for_metrics() -> None:
    true = np.radians([[10.0, 0.0]])
    target = FixedGazeTarget((0.0, 0.0)).targets(true).numpy()
    assert float(angular_error_deg(true, target)[0]) == pytest.approx(10.0, abs=1e-4)
