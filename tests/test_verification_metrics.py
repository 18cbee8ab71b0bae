"""Face-verification metrics: hand-computed cases with ties, agreement with scikit-learn's ROC and DET curves,
the threshold-at-FMR rule, the EER, the summary and the errors."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import det_curve, roc_curve

from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics.verification import (
    DetPoints,
    OperatingPoint,
    det_points,
    eer,
    fmr,
    fnmr,
    tar_at_fmr,
    threshold_at_fmr,
    verification_summary,
)

FAST = settings(max_examples=60, deadline=None)
# Scores on a coarse grid (k / 50) so genuine and impostor scores tie often, within and across the two arrays.
SCORES = st.lists(st.integers(0, 50), min_size=1, max_size=200).map(lambda v: np.round(np.asarray(v) / 50, 2))
TARGETS = st.one_of(st.sampled_from([1e-4, 1e-3, 1e-2, 0.1, 0.2, 0.25, 0.29, 1 / 3, 0.5, 1.0]), st.floats(1e-4, 1.0))


def sk_inputs(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.concatenate([np.ones(genuine.size, int), np.zeros(impostor.size, int)])
    return y, np.concatenate([genuine, impostor])


def above(x: float) -> float:
    return float(np.nextafter(x, np.inf))


# ------------------------------------------------------------------------------ hand-computed, ties
GEN = [0.5, 0.7, 0.7, 0.9]
IMP = [0.1, 0.5, 0.5, 0.7]


def test_fmr_fnmr_accept_a_score_equal_to_the_threshold() -> None:
    assert fmr(IMP, 0.5) == 3 / 4  # 0.5, 0.5, 0.7 are >= 0.5
    assert fmr(IMP, 0.7) == 1 / 4
    assert fmr(IMP, above(0.7)) == 0.0
    assert fmr(IMP, 0.1) == 1.0
    assert fnmr(GEN, 0.5) == 0.0  # the genuine 0.5 ties and is accepted
    assert fnmr(GEN, above(0.5)) == 1 / 4
    assert fnmr(GEN, 0.7) == 1 / 4
    assert fnmr(GEN, above(0.9)) == 1.0
    assert fmr(IMP, -math.inf) == 1.0 and fnmr(GEN, math.inf) == 1.0


def test_det_points_by_hand() -> None:
    pts = det_points(GEN, IMP)
    assert isinstance(pts, DetPoints)
    np.testing.assert_array_equal(pts.thresholds, [above(0.9), 0.9, 0.7, 0.5, 0.1])
    np.testing.assert_array_equal(pts.fmr, [0, 0, 1 / 4, 3 / 4, 1])
    np.testing.assert_array_equal(pts.fnmr, [1, 3 / 4, 1 / 4, 0, 0])


def test_threshold_at_fmr_by_hand_with_ties() -> None:
    imp = [0.1, 0.2, 0.3, 0.3, 0.4]  # n = 5
    assert threshold_at_fmr(imp, 0.2) == above(0.3)  # one acceptance allowed: pass the 2nd largest, 0.3
    assert fmr(imp, above(0.3)) == 0.2
    # two allowed, but accepting one 0.3 accepts both: stay above 0.3 (achieved FMR 0.2 < 0.4)
    assert threshold_at_fmr(imp, 0.4) == above(0.3)
    assert threshold_at_fmr(imp, 0.6) == above(0.2)
    assert threshold_at_fmr(imp, 0.8) == above(0.1)
    assert threshold_at_fmr(imp, 0.1) == above(0.4)  # below 1/5: nothing can be accepted
    assert threshold_at_fmr(imp, 1.0) == -math.inf  # everything may be accepted


def test_tar_at_fmr_by_hand() -> None:
    gen = [0.25, 0.3, 0.35, 0.5]
    imp = [0.1, 0.2, 0.3, 0.3, 0.4]
    op = tar_at_fmr(gen, imp, 0.4)
    assert op == OperatingPoint(target_fmr=0.4, threshold=above(0.3), fmr=0.2, tar=0.5, resolved=True)
    op = tar_at_fmr(gen, imp, 0.6)  # just above 0.2 accepts 0.25 too (the next impostor score, 0.3, would not)
    assert (op.fmr, op.tar) == (0.6, 1.0)
    op = tar_at_fmr(gen, imp, 0.1)
    assert (op.threshold, op.fmr, op.tar, op.resolved) == (above(0.4), 0.0, 0.25, False)
    assert tar_at_fmr(gen, imp, 1.0) == OperatingPoint(1.0, -math.inf, 1.0, 1.0, True)


def test_float32_scores_step_in_float32() -> None:
    """A float64 ulp above a float32 score rounds back onto it when compared in float32 (NumPy's rule for a
    Python float against a float32 array): the step is taken in float32, so such a comparison still excludes it."""
    imp = np.array([0.1, 0.2, 0.3], np.float32)
    t = threshold_at_fmr(imp, 0.4)
    assert t == float(np.nextafter(np.float32(0.2), np.float32(1)))
    assert np.count_nonzero(imp >= t) == 1  # compared in float32
    assert np.count_nonzero(imp.astype(np.float64) >= t) == 1
    assert fmr(imp, t) == 1 / 3
    gen = np.array([0.3], np.float64)  # mixed: the end point steps in the coarser float32 and is above both
    pts = det_points(gen, imp)
    assert pts.thresholds[0] > float(np.float32(0.3)) and pts.thresholds[0] > 0.3
    assert (pts.fmr[0], pts.fnmr[0]) == (0.0, 1.0)
    assert np.count_nonzero(imp >= pts.thresholds[0]) == 0


# ------------------------------------------------------------------------------ scikit-learn agreement
@FAST
@given(genuine=SCORES, impostor=SCORES)
def test_det_points_match_sklearn_roc_and_det_curves(genuine: np.ndarray, impostor: np.ndarray) -> None:
    pts = det_points(genuine, impostor)
    y, s = sk_inputs(genuine, impostor)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    assert thr[0] == np.inf
    np.testing.assert_array_equal(pts.thresholds[1:], thr[1:])
    np.testing.assert_array_equal(pts.fmr, fpr)  # the first point too: (fpr 0, tpr 0) at +inf
    np.testing.assert_allclose(pts.fnmr, 1 - tpr, rtol=0, atol=1e-12)
    assert pts.thresholds[0] > s.max() and (pts.fmr[0], pts.fnmr[0]) == (0.0, 1.0)
    for t, f, m in zip(thr[1:], fpr[1:], tpr[1:], strict=True):
        assert fmr(impostor, t) == f
        assert fnmr(genuine, t) == pytest.approx(1 - m, abs=1e-12)

    dfpr, dfnr, dthr = det_curve(y, s)
    dthr = np.where(np.isinf(dthr), pts.thresholds[0], dthr)  # scikit-learn may start at +inf: our end point
    assert set(dthr.tolist()) <= set(pts.thresholds.tolist())
    for t, f, m in zip(dthr, dfpr, dfnr, strict=True):
        assert fmr(impostor, t) == f
        assert fnmr(genuine, t) == m


@FAST
@given(genuine=SCORES, impostor=SCORES, target=TARGETS)
def test_threshold_at_fmr_is_the_smallest_within_target(genuine: np.ndarray, impostor: np.ndarray, target) -> None:
    t = threshold_at_fmr(impostor, target)
    achieved = fmr(impostor, t)
    assert achieved <= target
    distinct = np.unique(impostor)
    candidates = [-math.inf, *(above(u) for u in distinct)]  # where FMR changes, ascending
    assert t in candidates
    k = candidates.index(t)
    if k > 0:
        assert fmr(impostor, candidates[k - 1]) > target
    else:
        assert target == 1.0

    op = tar_at_fmr(genuine, impostor, target)
    assert (op.target_fmr, op.threshold, op.fmr) == (target, t, achieved)
    assert op.tar == pytest.approx(1 - fnmr(genuine, t), abs=1e-15)
    assert op.resolved == (target >= 1 / impostor.size)
    if not op.resolved:
        assert (t, achieved) == (above(impostor.max()), 0.0)
    # TAR is the best of any ROC point within the FMR budget (scikit-learn's curve, read by hand)
    y, s = sk_inputs(genuine, impostor)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert op.tar == tpr[fpr <= target].max()


def sklearn_eer(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """EER from scikit-learn's ROC points, written independently: the segment of the (fpr, fnr) polyline
    that crosses fpr == fnr, solved for where it does."""
    y, s = sk_inputs(genuine, impostor)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    fnr = 1 - tpr
    thr = thr.copy()
    thr[0] = np.nextafter(thr[1], np.inf)
    for a in range(len(fpr)):
        if fnr[a] == fpr[a]:
            return float(fpr[a]), float(thr[a])
        b = a + 1
        if (fnr[a] - fpr[a]) > 0 > (fnr[b] - fpr[b]):
            # fpr[a] + x * (fpr[b] - fpr[a]) == fnr[a] + x * (fnr[b] - fnr[a])
            x = (fnr[a] - fpr[a]) / ((fpr[b] - fpr[a]) - (fnr[b] - fnr[a]))
            return float(fnr[a] + x * (fnr[b] - fnr[a])), float(thr[a] + x * (thr[b] - thr[a]))
    raise AssertionError("no crossing")


@FAST
@given(genuine=SCORES, impostor=SCORES)
def test_eer_matches_an_independent_computation_from_sklearn(genuine: np.ndarray, impostor: np.ndarray) -> None:
    rate, threshold = eer(genuine, impostor)
    want_rate, want_threshold = sklearn_eer(genuine, impostor)
    assert rate == pytest.approx(want_rate, abs=1e-12)
    assert threshold == pytest.approx(want_threshold, abs=1e-12)
    assert 0.0 <= rate <= 1.0


def test_eer_hand_cases() -> None:
    assert eer([0.8, 0.9], [0.1, 0.2]) == (0.0, 0.8)  # separated: exact hit at the lowest genuine score
    assert eer([0.1, 0.2], [0.8, 0.9]) == (1.0, 0.8)  # inverted
    assert eer(np.arange(10.0), np.arange(10.0)) == (0.5, 5.0)  # identical: exact hit
    assert eer(np.arange(11.0), np.arange(11.0)) == (0.5, 5.5)  # identical, odd: interpolated
    # genuine [0.9, 0.1], impostor [0.9]: between (FMR 0, FNMR 1) above 0.9 and (1, 0.5) at 0.9 -> 2/3
    rate, threshold = eer([0.9, 0.1], [0.9])
    assert rate == pytest.approx(2 / 3) and 0.9 <= threshold <= above(0.9)
    rng = np.random.default_rng(0)
    same = eer(rng.normal(size=5000), rng.normal(size=5000))[0]
    assert abs(same - 0.5) < 0.03
    apart = eer(rng.normal(2.0, 1.0, 20000), rng.normal(size=20000))[0]  # EER of two unit normals 2 apart: Phi(-1)
    assert apart == pytest.approx(0.158655, abs=0.01)


# ------------------------------------------------------------------------------ summary
def test_verification_summary_keys_types_and_json() -> None:
    rng = np.random.default_rng(1)
    gen, imp = rng.normal(2.0, 1.0, 500), rng.normal(size=2000)
    out = verification_summary(gen, imp)
    targets = ("1e-02", "1e-03", "1e-04")
    assert list(out) == [
        "eer",
        "eer_threshold",
        *(f"{k}_at_fmr_{t}" for t in targets for k in ("tar", "threshold", "fmr", "resolved")),
        "n_genuine",
        "n_impostor",
    ]
    assert (out["n_genuine"], out["n_impostor"]) == (500, 2000) and type(out["n_genuine"]) is int
    assert (out["eer"], out["eer_threshold"]) == eer(gen, imp)
    for t, value in zip(targets, (1e-2, 1e-3, 1e-4), strict=True):
        op = tar_at_fmr(gen, imp, value)
        assert out[f"tar_at_fmr_{t}"] == op.tar and type(out[f"tar_at_fmr_{t}"]) is float
        assert out[f"threshold_at_fmr_{t}"] == op.threshold and type(out[f"threshold_at_fmr_{t}"]) is float
        assert out[f"fmr_at_fmr_{t}"] == op.fmr <= value
        assert out[f"resolved_at_fmr_{t}"] is op.resolved
    assert out["resolved_at_fmr_1e-03"] is True and out["resolved_at_fmr_1e-04"] is False
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    one = verification_summary(gen, imp, targets=[0.05])
    assert [k for k in one if "5e-02" in k] == [
        "tar_at_fmr_5e-02",
        "threshold_at_fmr_5e-02",
        "fmr_at_fmr_5e-02",
        "resolved_at_fmr_5e-02",
    ]


def test_large_inputs_stay_fast() -> None:
    """Sorting once and binary searches: 2 * 10^5 impostor scores take a few tens of milliseconds (O(n^2) would not)."""
    rng = np.random.default_rng(2)
    gen, imp = rng.normal(2.0, 1.0, 50_000).astype(np.float32), rng.normal(size=200_000).astype(np.float32)
    start = time.perf_counter()
    out = verification_summary(gen, imp)
    assert time.perf_counter() - start < 2.0
    assert out["fmr_at_fmr_1e-04"] <= 1e-4 and out["resolved_at_fmr_1e-04"] is True


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: det_points([], [0.1]), ["genuine", "empty"]),
        (lambda: eer([0.1], np.array([])), ["impostor", "empty"]),
        (lambda: fmr([], 0.5), ["impostor", "empty"]),
        (lambda: fnmr([[0.1, 0.2]], 0.5), ["genuine", "1-D", "(1, 2)"]),
        (lambda: tar_at_fmr([0.1], np.zeros((2, 2)), 0.1), ["impostor", "1-D", "(2, 2)"]),
        (lambda: threshold_at_fmr(0.3, 0.1), ["impostor", "1-D"]),
        (lambda: eer([0.1, np.nan, np.nan], [0.2]), ["genuine", "2 non-finite", "2 NaN", "0 infinite"]),
        (lambda: verification_summary([0.1], [np.inf, 0.2, -np.inf, np.nan]), ["impostor", "3 non-finite", "1 NaN"]),
        (lambda: det_points(["a"], [0.1]), ["genuine", "real numbers"]),
        (lambda: threshold_at_fmr([0.1], 0.0), ["target FMR", "(0, 1]", "0.0"]),
        (lambda: tar_at_fmr([0.1], [0.2], 1.5), ["target FMR", "(0, 1]", "1.5"]),
        (lambda: tar_at_fmr([0.1], [0.2], float("nan")), ["target FMR", "nan"]),
        (lambda: verification_summary([0.1], [0.2], targets=(1e-2, -1.0)), ["target FMR", "-1.0"]),
        (lambda: verification_summary([0.1], [0.2], targets=(1e-2, 1.04e-2)), ["collide", "1e-02"]),
        (lambda: fmr([0.1], float("nan")), ["threshold", "NaN"]),
    ],
)
def test_bad_input_names_the_array_and_the_problem(call, words: list[str]) -> None:
    with pytest.raises(BackdoorLabError) as info:
        call()
    for word in words:
        assert word in str(info.value)
