"""Backdoor attack metrics on gaze regression (definitions in ``backdoorlab.metrics.attack``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from backdoorlab.geometry import angular_error_deg
from backdoorlab.metrics import attack_metrics, target_spread_deg

FAST = settings(max_examples=60, deadline=None)

pitch_st = st.floats(-1.5, 1.5)
yaw_st = st.floats(-3.1, 3.1)


def pitchyaw_batch(n: int) -> st.SearchStrategy[np.ndarray]:
    return st.tuples(arrays(np.float64, n, elements=pitch_st), arrays(np.float64, n, elements=yaw_st)).map(
        lambda t: np.stack(t, -1)
    )


def yaw_deg(*degrees: float) -> np.ndarray:
    """(N, 2) gaze on the horizon (pitch 0): angles between them are yaw differences."""
    return np.array([[0.0, math.radians(d)] for d in degrees])


# ----------------------------------------------------------------- hand-computed cases
def test_prediction_at_target_is_a_full_success() -> None:
    true = yaw_deg(0.0, -30.0)
    target = yaw_deg(20.0, 20.0)
    m = attack_metrics(target.copy(), true, target)
    assert m["attack_error_deg"] == pytest.approx(0.0, abs=1e-6)
    assert m["attack_error_median_deg"] == pytest.approx(0.0, abs=1e-6)
    assert m["attack_success_rate"] == 1.0
    assert m["triggered_true_error_deg"] == pytest.approx((20.0 + 50.0) / 2)
    assert m["n_triggered"] == 2
    assert m["n_excluded_near_target"] == 0
    assert m["asr_tolerance_deg"] == 5.0


def test_ignoring_the_trigger_scores_zero_once_near_target_samples_are_excluded() -> None:
    # the third sample's true gaze is 2 deg from the target: a model that ignores the
    # trigger would "hit" it, so it is excluded rather than counted as a success
    true = yaw_deg(0.0, -10.0, 18.0)
    target = yaw_deg(20.0, 20.0, 20.0)
    m = attack_metrics(true.copy(), true, target)
    assert m["triggered_true_error_deg"] == pytest.approx(0.0, abs=1e-6)
    assert m["attack_success_rate"] == 0.0
    assert m["n_excluded_near_target"] == 1
    assert m["n_triggered"] == 2
    assert m["attack_error_deg"] == pytest.approx((20.0 + 30.0) / 2)


def test_known_angles() -> None:
    true = yaw_deg(0.0, 0.0)
    target = yaw_deg(20.0, 20.0)
    pred = yaw_deg(17.0, 10.0)
    m = attack_metrics(pred, true, target, tolerance_deg=5.0)
    assert m["attack_error_deg"] == pytest.approx((3.0 + 10.0) / 2)
    assert m["attack_error_median_deg"] == pytest.approx(6.5)
    assert m["triggered_true_error_deg"] == pytest.approx((17.0 + 10.0) / 2)
    assert m["attack_success_rate"] == 0.5
    # a wider tolerance turns the second prediction into a success too
    assert attack_metrics(pred, true, target, tolerance_deg=10.5)["attack_success_rate"] == 1.0


def test_pitch_and_yaw_combine_as_a_3d_angle() -> None:
    # looking straight ahead vs 90 deg up: 90 deg whatever the yaw of the second
    true = np.array([[0.0, 0.0]])
    target = np.array([[math.pi / 2 - 1e-9, 1.0]])
    m = attack_metrics(true.copy(), true, target)
    assert m["attack_error_deg"] == pytest.approx(90.0, abs=1e-6)


def test_exclusion_is_inclusive_at_the_tolerance() -> None:
    true = yaw_deg(0.0, 0.0, 15.0)
    target = np.array([0.0, math.radians(20.0)])
    tol = float(angular_error_deg(true[2], target))  # exactly 5 deg up to rounding
    m = attack_metrics(true.copy(), true, target, tolerance_deg=tol)
    assert m["n_excluded_near_target"] == 1
    assert m["n_triggered"] == 2


def test_single_target_broadcasts() -> None:
    rng = np.random.default_rng(0)
    true = rng.uniform(-0.5, 0.5, (20, 2))
    pred = rng.uniform(-0.5, 0.5, (20, 2))
    target = np.array([0.3, -0.4])
    assert attack_metrics(pred, true, target) == attack_metrics(pred, true, np.tile(target, (20, 1)))


def test_accepts_tensors_and_lists() -> None:
    true = yaw_deg(0.0, 0.0)
    target = [0.0, math.radians(20.0)]
    pred = yaw_deg(17.0, 10.0)
    expected = attack_metrics(pred, true, np.array(target))
    got = attack_metrics(torch.tensor(pred, dtype=torch.float32, requires_grad=True), torch.tensor(true), target)
    assert got["attack_error_deg"] == pytest.approx(expected["attack_error_deg"], abs=1e-4)
    assert isinstance(got["n_triggered"], int) and isinstance(got["attack_error_deg"], float)


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("pred_shape", "true_shape", "target_shape", "named"),
    [
        ((3, 2), (4, 2), (2,), ["(3, 2)", "(4, 2)"]),
        ((3,), (3,), (2,), ["(3,)"]),
        ((3, 3), (3, 3), (2,), ["(3, 3)"]),
        ((3, 2), (3, 2), (4, 2), ["(4, 2)"]),
        ((3, 2), (3, 2), (3,), ["(3,)"]),
    ],
)
def test_bad_shapes_are_named(
    pred_shape: tuple[int, ...], true_shape: tuple[int, ...], target_shape: tuple[int, ...], named: list[str]
) -> None:
    with pytest.raises(ValueError) as info:
        attack_metrics(np.zeros(pred_shape), np.zeros(true_shape), np.ones(target_shape))
    for shape in named:
        assert shape in str(info.value)


@pytest.mark.parametrize("tol", [0.0, -1.0, math.nan, math.inf])
def test_bad_tolerance(tol: float) -> None:
    with pytest.raises(ValueError, match="tolerance_deg"):
        attack_metrics(yaw_deg(0.0), yaw_deg(0.0), yaw_deg(30.0), tolerance_deg=tol)


def test_all_excluded_is_an_error() -> None:
    true = yaw_deg(18.0, 19.0, 21.0)
    with pytest.raises(ValueError, match="all 3 samples"):
        attack_metrics(true.copy(), true, yaw_deg(20.0)[0])


def test_empty_and_non_finite_inputs() -> None:
    with pytest.raises(ValueError, match="no samples"):
        attack_metrics(np.zeros((0, 2)), np.zeros((0, 2)), np.ones(2))
    pred = yaw_deg(0.0, 1.0)
    pred[1, 0] = math.nan
    with pytest.raises(ValueError, match="pred_triggered"):
        attack_metrics(pred, yaw_deg(0.0, 1.0), yaw_deg(30.0)[0])


# ----------------------------------------------------------------- properties
@st.composite
def attack_case(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    n = draw(st.integers(1, 8))
    pred, true = draw(pitchyaw_batch(n)), draw(pitchyaw_batch(n))
    target = draw(st.one_of(pitchyaw_batch(n), pitchyaw_batch(1).map(lambda t: t[0])))
    return pred, true, target, draw(st.floats(0.5, 30.0))


@FAST
@given(attack_case())
def test_metric_ranges_and_triangle_inequality(case: tuple[np.ndarray, np.ndarray, np.ndarray, float]) -> None:
    pred, true, target, tol = case
    target_n = np.broadcast_to(target, pred.shape)
    true_to_target = angular_error_deg(true, target_n)
    kept = true_to_target > tol
    assume(kept.any())
    m = attack_metrics(pred, true, target, tolerance_deg=tol)

    assert m["n_triggered"] == int(kept.sum())
    assert m["n_triggered"] + m["n_excluded_near_target"] == len(pred)
    assert 0.0 <= m["attack_success_rate"] <= 1.0
    assert 0.0 <= m["attack_error_deg"] <= 180.0
    assert 0.0 <= m["attack_error_median_deg"] <= 180.0
    assert 0.0 <= m["triggered_true_error_deg"] <= 180.0
    # on means: |mean(AE_i - DAE_i)| <= mean |AE_i - DAE_i| <= mean angle(true_i, target_i)
    slack = 1e-5
    assert abs(m["attack_error_deg"] - m["triggered_true_error_deg"]) <= true_to_target[kept].mean() + slack

    # per sample, scoring one sample at a time: the metrics are that sample's angles
    successes = 0
    for i in np.flatnonzero(kept):
        one = attack_metrics(pred[i : i + 1], true[i : i + 1], target_n[i : i + 1], tolerance_deg=tol)
        assert abs(one["attack_error_deg"] - one["triggered_true_error_deg"]) <= true_to_target[i] + slack
        successes += one["attack_success_rate"]
    assert m["attack_success_rate"] == pytest.approx(successes / kept.sum())


# ----------------------------------------------------------------- collapse statistic
def test_spread_of_identical_predictions_is_zero() -> None:
    assert target_spread_deg(np.tile([0.2, -0.7], (5, 1))) == pytest.approx(0.0, abs=1e-9)
    assert target_spread_deg(np.array([[0.2, -0.7]])) == pytest.approx(0.0, abs=1e-9)


def test_spread_of_symmetric_pair() -> None:
    assert target_spread_deg(yaw_deg(-10.0, 10.0)) == pytest.approx(10.0)


def test_spread_uses_directions_not_averaged_angles() -> None:
    # yaw +-(pi - 0.1) are 0.2 rad apart across the wrap-around; averaging the yaws
    # would put the mean direction behind both of them
    pred = np.array([[0.0, math.pi - 0.1], [0.0, -math.pi + 0.1]])
    assert target_spread_deg(pred) == pytest.approx(math.degrees(0.1))


def test_spread_resolves_tiny_spreads() -> None:
    eps = 1e-6  # degrees
    assert target_spread_deg(yaw_deg(-eps, eps)) == pytest.approx(eps, rel=1e-3)


def test_collapsed_outputs_spread_less_than_clean_ones() -> None:
    rng = np.random.default_rng(1)
    clean = rng.uniform(-0.6, 0.6, (100, 2))
    collapsed = np.array([0.3, 0.4]) + rng.normal(0.0, 0.005, (100, 2))
    assert target_spread_deg(collapsed) < 1.0 < 10.0 < target_spread_deg(clean)


def test_spread_errors() -> None:
    with pytest.raises(ValueError, match=r"\(3,\)"):
        target_spread_deg(np.zeros(3))
    with pytest.raises(ValueError, match="N >= 1"):
        target_spread_deg(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="cancel out"):
        target_spread_deg(yaw_deg(0.0, 180.0))
