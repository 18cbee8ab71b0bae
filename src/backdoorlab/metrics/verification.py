"""Verification metrics for open-set face recognition: FMR, FNMR, DET points, TAR at an FMR, EER.

Inputs are 1-D arrays of similarity scores (higher = more alike, e.g. cosine): *genuine*
scores compare two faces of the same identity, *impostor* scores two different
identities. docs/verification_metrics.md has the long form.

**Decision rule and ties.** A comparison is *accepted* (declared a match) iff
``score >= threshold``: a score equal to the threshold is accepted. This is
scikit-learn's convention in ``roc_curve`` and ``det_curve`` (a sample is positive when
its score is >= the threshold), so every number here can be checked against those
curves point by point, and a threshold that is itself a score value means "accept this
score and everything above it".

* **FMR** (false match rate) at threshold ``t``: the share of impostor scores ``>= t``.
* **FNMR** (false non-match rate): the share of genuine scores ``< t``. TAR (true
  accept rate) is ``1 - FNMR``, the share of genuine scores ``>= t``.
* **Operating points** (:func:`det_points`): the empirical FMR and FNMR change only at
  score values, so the whole curve is given by one threshold at each distinct score
  (genuine or impostor), plus one just above the largest score (nothing accepted:
  FMR 0, FNMR 1). The lowest score accepts everything (FMR 1, FNMR 0).
* **Threshold at a target FMR** (:func:`threshold_at_fmr`): the smallest threshold whose
  empirical FMR does not exceed the target, so the FMR achieved on the data never
  exceeds it. FMR drops only when the threshold passes an impostor score, so this
  threshold lies *just above* an impostor score (the next representable number in the
  scores' own float precision, see below); every threshold between that score and the
  next impostor score has the same FMR, and the lowest one accepts the most genuine
  comparisons. TAR read there (:func:`tar_at_fmr`) is therefore the best TAR of any
  operating point with FMR <= target, the number read off the DET/ROC curve. When the
  target is below ``1 / n_impostor`` not a single impostor acceptance fits the budget:
  the threshold is just above the largest impostor score (FMR 0) and the target is below
  the resolution of the data (``resolved=False``). A target of 1 allows every
  threshold: the smallest is ``-inf`` (accept everything).
* **EER** (:func:`eer`): see that function for the exact interpolation.

**"Just above" a score** is the next float after it in the precision the scores came in
(float16, float32, else float64). Scores from a float32 model compared against a Python
float threshold are compared in float32 (NumPy's and PyTorch's rule for Python scalars),
so a float64 step of one ulp would round back onto the score and accept it.

Efficiency: the arrays are sorted once (O(n log n)) and counts at many thresholds are
binary searches (``np.searchsorted``); 10^6 impostor scores take a fraction of a second.
Bad input (empty, not 1-D, NaN or infinite scores, a target FMR outside (0, 1]) raises
:class:`~backdoorlab.errors.BackdoorLabError` naming the array and the problem.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from backdoorlab.errors import BackdoorLabError

#: default target FMRs of :func:`verification_summary`
DEFAULT_TARGETS = (1e-2, 1e-3, 1e-4)


class DetPoints(NamedTuple):
    """Every empirical operating point, by descending threshold (FMR rises, FNMR falls along it)."""

    thresholds: np.ndarray
    fmr: np.ndarray
    fnmr: np.ndarray


@dataclass(frozen=True)
class OperatingPoint:
    """TAR at a target FMR, and the threshold and FMR actually achieved on the data."""

    target_fmr: float
    threshold: float
    fmr: float  #: achieved FMR, <= target_fmr
    tar: float  #: share of genuine scores accepted, = 1 - FNMR
    resolved: bool  #: target_fmr >= 1 / n_impostor: at least one impostor acceptance fits the budget


@dataclass(frozen=True)
class _Scores:
    """One validated score array: ascending float64 values and the dtype its "just above" step uses."""

    sorted: np.ndarray
    step_dtype: np.dtype

    @property
    def n(self) -> int:
        return int(self.sorted.size)

    def count_at_or_above(self, thresholds: np.ndarray | float) -> np.ndarray:
        return self.n - np.searchsorted(self.sorted, thresholds, side="left")

    def count_below(self, thresholds: np.ndarray | float) -> np.ndarray:
        return np.searchsorted(self.sorted, thresholds, side="left")


# ------------------------------------------------------------------------------ validation
def _as_scores(values: ArrayLike, name: str) -> np.ndarray:
    """A 1-D finite array (original dtype kept), or a BackdoorLabError naming ``name`` and the problem."""
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as exc:  # ragged nested lists and the like
        raise BackdoorLabError(f"{name} scores cannot be read as an array of numbers: {exc}") from None
    if arr.ndim != 1:
        raise BackdoorLabError(f"{name} scores must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise BackdoorLabError(f"{name} scores are empty: need at least one score")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise BackdoorLabError(f"{name} scores must be real numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(arr.size - finite.sum()) - n_nan
            raise BackdoorLabError(
                f"{name} scores contain {arr.size - int(finite.sum())} non-finite value(s) "
                f"({n_nan} NaN, {n_inf} infinite) out of {arr.size}: every score must be finite"
            )
    return arr


def _step_dtype(arr: np.ndarray) -> np.dtype:
    """float16/float32 scores step in their own precision; everything else in float64."""
    if arr.dtype in (np.float16, np.float32):
        return arr.dtype
    return np.dtype(np.float64)


def _prepare(values: ArrayLike, name: str) -> _Scores:
    arr = _as_scores(values, name)
    return _Scores(np.sort(arr.astype(np.float64)), _step_dtype(arr))


def _check_target(target: float) -> float:
    try:
        t = float(target)
    except (TypeError, ValueError):
        raise BackdoorLabError(f"target FMR must be a number in (0, 1], got {target!r}") from None
    if not 0.0 < t <= 1.0:  # also rejects NaN
        raise BackdoorLabError(f"target FMR must be in (0, 1], got {target!r}")
    return t


def _check_threshold(threshold: float) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise BackdoorLabError(f"threshold must be a number, got {threshold!r}") from None
    if math.isnan(t):
        raise BackdoorLabError("threshold is NaN: no score compares with it, so FMR and FNMR would be meaningless")
    return t


def _just_above(value: float, dtype: np.dtype) -> float:
    """The next float after ``value`` in ``dtype`` (strictly above ``value`` also in float64)."""
    kind = dtype.type
    above = np.nextafter(kind(value), kind(np.inf))
    if float(above) <= value:  # ``value`` was rounded down on the cast (mixed precisions): one more step
        above = np.nextafter(above, kind(np.inf))
    return float(above)


def _coarser(a: np.dtype, b: np.dtype) -> np.dtype:
    return a if np.finfo(a).eps >= np.finfo(b).eps else b


# ------------------------------------------------------------------------------ single thresholds
def fmr(impostor: ArrayLike, threshold: float) -> float:
    """False match rate: the share of impostor scores ``>= threshold`` (ties are accepted, hence false matches)."""
    imp = _as_scores(impostor, "impostor").astype(np.float64)  # float32 vs a Python float would compare in float32
    t = _check_threshold(threshold)
    return int(np.count_nonzero(imp >= t)) / imp.size


def fnmr(genuine: ArrayLike, threshold: float) -> float:
    """False non-match rate: the share of genuine scores ``< threshold`` (a tie is accepted, so not a miss)."""
    gen = _as_scores(genuine, "genuine").astype(np.float64)
    t = _check_threshold(threshold)
    return int(np.count_nonzero(gen < t)) / gen.size


# ------------------------------------------------------------------------------ curves
def _det_points(gen: _Scores, imp: _Scores) -> DetPoints:
    distinct = np.unique(np.concatenate([gen.sorted, imp.sorted]))[::-1]
    end = _just_above(float(distinct[0]), _coarser(gen.step_dtype, imp.step_dtype))
    thresholds = np.concatenate([[end], distinct])
    return DetPoints(
        thresholds=thresholds,
        fmr=imp.count_at_or_above(thresholds) / imp.n,
        fnmr=gen.count_below(thresholds) / gen.n,
    )


def det_points(genuine: ArrayLike, impostor: ArrayLike) -> DetPoints:
    """Every empirical operating point, thresholds descending.

    The first threshold is just above the largest score (FMR 0, FNMR 1); then one per
    distinct score value, genuine or impostor, down to the smallest (FMR 1, FNMR 0).
    Nothing in between is lost: FMR and FNMR are step functions that change only at
    score values. Apart from the first point (scikit-learn puts ``+inf`` there) these
    are exactly the thresholds of ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``,
    with ``fmr == fpr`` and ``fnmr == 1 - tpr``.
    """
    return _det_points(_prepare(genuine, "genuine"), _prepare(impostor, "impostor"))


# ------------------------------------------------------------------------------ fixed FMR
def _threshold_at_fmr(imp: _Scores, target: float) -> float:
    # The largest number k of accepted impostors with k / n <= target, computed with the same
    # float division fmr() uses, so the achieved FMR compares with the target as the caller sees it.
    n = imp.n
    k = min(math.floor(target * n), n)
    while k < n and (k + 1) / n <= target:
        k += 1
    while k > 0 and k / n > target:
        k -= 1
    if k == n:  # target 1: every threshold qualifies
        return -math.inf
    # Accept at most k impostors: the threshold must pass the (k+1)-th largest impostor score.
    return _just_above(float(imp.sorted[n - k - 1]), imp.step_dtype)


def threshold_at_fmr(impostor: ArrayLike, target: float) -> float:
    """The smallest threshold whose empirical FMR does not exceed ``target``.

    The candidates are the thresholds at which FMR changes: just above each distinct
    impostor score (the next float in the scores' precision), and ``-inf``. The result
    is just above the (k+1)-th largest impostor score, where k is the largest count with
    ``k / n_impostor <= target``; so the achieved FMR never exceeds the target, and the
    next lower candidate (just above the next lower impostor score) would. Taking the
    lowest such threshold rather than the next impostor score up accepts as many genuine
    comparisons as any threshold within the budget can.

    When ``target < 1 / n_impostor`` the target is below the resolution of the data:
    not one impostor acceptance fits, and the threshold is just above the largest
    impostor score (FMR 0). ``target == 1`` returns ``-inf`` (accept everything).
    """
    return _threshold_at_fmr(_prepare(impostor, "impostor"), _check_target(target))


def _tar_at_fmr(gen: _Scores, imp: _Scores, target: float) -> OperatingPoint:
    threshold = _threshold_at_fmr(imp, target)
    return OperatingPoint(
        target_fmr=target,
        threshold=threshold,
        fmr=int(imp.count_at_or_above(threshold)) / imp.n,
        tar=int(gen.count_at_or_above(threshold)) / gen.n,
        resolved=target >= 1.0 / imp.n,
    )


def tar_at_fmr(genuine: ArrayLike, impostor: ArrayLike, target: float) -> OperatingPoint:
    """True accept rate at the threshold of :func:`threshold_at_fmr`.

    ``tar`` is the share of genuine scores accepted there (``1 - FNMR``) and equals the
    best TAR of any operating point of :func:`det_points` with FMR <= target (for
    ``target == 1`` every score is accepted and TAR is 1). ``fmr`` is the FMR achieved,
    which may be below the target when impostor scores tie. ``resolved`` is False when
    the target is below ``1 / n_impostor``: the data cannot tell such an FMR from 0, and
    the TAR reported is the one at FMR 0.
    """
    t = _check_target(target)
    return _tar_at_fmr(_prepare(genuine, "genuine"), _prepare(impostor, "impostor"), t)


# ------------------------------------------------------------------------------ EER
def _eer(points: DetPoints) -> tuple[float, float]:
    thresholds, fm, fnm = points
    diff = fnm - fm  # strictly decreasing along the points: 1 at the first, -1 at the last
    j = int(np.argmax(diff <= 0))
    if diff[j] == 0:  # exact hit (j >= 1 since diff[0] == 1)
        return float(fm[j]), float(thresholds[j])
    i = j - 1  # diff[i] > 0 > diff[j]
    alpha = diff[i] / (diff[i] - diff[j])
    rate = fm[i] + alpha * (fm[j] - fm[i])
    threshold = thresholds[i] + alpha * (thresholds[j] - thresholds[i])
    return float(rate), float(threshold)


def eer(genuine: ArrayLike, impostor: ArrayLike) -> tuple[float, float]:
    """Equal error rate and its threshold: ``(eer, threshold)``.

    Definition: take the operating points of :func:`det_points` in order of descending
    threshold, along which FMR rises from 0 to 1 and FNMR falls from 1 to 0, so
    ``d = FNMR - FMR`` falls strictly from 1 to -1 and changes sign exactly once. If a
    point has ``d == 0`` exactly, the EER is its FMR (= its FNMR) and the threshold is
    that point's. Otherwise, between the adjacent points i, j with ``d_i > 0 > d_j``,
    both rates are interpolated linearly in ``alpha = d_i / (d_i - d_j)``, where they
    meet: ``EER = FMR_i + alpha * (FMR_j - FMR_i)`` (= the FNMR interpolated the same
    way), and the threshold is ``t_i + alpha * (t_j - t_i)``. This is the crossing of
    the straight-line DET/ROC segment with the diagonal FMR = FNMR, which does not
    depend on how ties are ordered. Perfectly separated scores give EER 0 (at the
    lowest genuine score); identical genuine and impostor distributions give 0.5.
    """
    return _eer(det_points(genuine, impostor))


# ------------------------------------------------------------------------------ summary
def _target_key(target: float) -> str:
    return f"{target:.0e}"


def verification_summary(
    genuine: ArrayLike, impostor: ArrayLike, targets: Iterable[float] = DEFAULT_TARGETS
) -> dict[str, float | bool | int]:
    """EER and, per target FMR, TAR, threshold, achieved FMR and whether the data resolve the target.

    Keys: ``eer``, ``eer_threshold``; for each target ``t`` (written ``f"{t:.0e}"``,
    e.g. ``1e-02``) ``tar_at_fmr_<t>``, ``threshold_at_fmr_<t>``, ``fmr_at_fmr_<t>``,
    ``resolved_at_fmr_<t>``; then ``n_genuine`` and ``n_impostor``. Values are plain
    Python floats, bools and ints, ready for JSON (a target of 1 gives threshold
    ``-inf``). The scores are validated and sorted once for all of it.
    """
    gen = _prepare(genuine, "genuine")
    imp = _prepare(impostor, "impostor")
    checked = [_check_target(t) for t in targets]
    keys = [_target_key(t) for t in checked]
    if len(set(keys)) != len(keys):
        raise BackdoorLabError(f"target FMRs {checked} collide once written as {keys}: give distinct targets")
    rate, threshold = _eer(_det_points(gen, imp))
    out: dict[str, float | bool | int] = {"eer": rate, "eer_threshold": threshold}
    for target, key in zip(checked, keys, strict=True):
        op = _tar_at_fmr(gen, imp, target)
        out[f"tar_at_fmr_{key}"] = op.tar
        out[f"threshold_at_fmr_{key}"] = op.threshold
        out[f"fmr_at_fmr_{key}"] = op.fmr
        out[f"resolved_at_fmr_{key}"] = bool(op.resolved)
    out["n_genuine"] = gen.n
    out["n_impostor"] = imp.n
    return out
