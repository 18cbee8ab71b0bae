"""How well a backdoor works on a gaze *regression* model.

A classifier backdoor is scored by the fraction of triggered inputs that land in the
target class. A gaze model outputs a direction, so "landing on the target" needs a
distance and a tolerance. backdoorlab scores a backdoor on triggered inputs with the
following quantities, all 3D angles in degrees (see :mod:`backdoorlab.geometry`):

``n_excluded_near_target``
    Samples whose *true* gaze already lies within ``tolerance_deg`` of their target
    are left out of every other number and only counted. A model that ignores the
    trigger altogether predicts roughly the true gaze on them and would "succeed";
    counting them would credit the attack with the clean model's accuracy.
``n_triggered``
    The samples that remain; every statistic below is over them.
``attack_error_deg`` / ``attack_error_median_deg``
    Mean / median angle between the prediction and the target (the attack error, AE,
    of backdoor-on-regression papers). 0 means the trigger fully controls the output.
``triggered_true_error_deg``
    Mean angle between the prediction on the triggered input and the *true* gaze (the
    DAE). A working backdoor makes it large: the output has left the true gaze. Read
    it beside AE: by the triangle inequality on the sphere,
    ``|AE_i - DAE_i| <= angle(true_i, target_i)`` for every sample.
``attack_success_rate``
    Fraction of predictions within ``tolerance_deg`` of the target (inclusive). It is
    the regression analogue of a classifier's ASR, and depends on the tolerance, so
    ``asr_tolerance_deg`` is returned with it: an ASR quoted without its tolerance
    cannot be compared with another.

:func:`target_spread_deg` answers a different question: do the outputs collapse onto
one direction (whatever it is)? It is the mean angle to the mean direction, small for a
backdoor that overrides the input, and about the spread of the data for a clean model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from backdoorlab.geometry import angular_error_deg, pitchyaw_to_vector


def _as_float64(values: Any, name: str) -> np.ndarray:
    """Array-like or tensor (any device, with or without grad) -> float64 numpy array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to(device="cpu", dtype=torch.float64).numpy()
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_tolerance(tolerance_deg: float) -> float:
    tol = float(tolerance_deg)
    if not math.isfinite(tol) or tol <= 0.0:
        raise ValueError(f"tolerance_deg must be a finite number > 0, got {tolerance_deg!r}")
    return tol


def attack_metrics(
    pred_triggered: Any,
    true_gaze: Any,
    target_gaze: Any,
    tolerance_deg: float = 5.0,
) -> dict[str, float | int]:
    """Score a backdoor on triggered inputs (definitions in the module docstring).

    Args:
        pred_triggered: (N, 2) model predictions on triggered inputs, (pitch, yaw) radians.
        true_gaze: (N, 2) true gaze of the same (untriggered) samples.
        target_gaze: (N, 2) per-sample attack targets, or (2,) one target for all samples.
        tolerance_deg: success/exclusion radius in degrees, finite and > 0.

    Returns:
        ``n_triggered``, ``n_excluded_near_target`` (ints), ``attack_error_deg``,
        ``attack_error_median_deg``, ``triggered_true_error_deg``, ``attack_success_rate``
        and ``asr_tolerance_deg`` (floats).

    Raises:
        ValueError: on mismatched or malformed shapes, non-finite values, a bad
            tolerance, or when every sample is excluded (nothing left to score).
    """
    tol = _check_tolerance(tolerance_deg)
    pred = _as_float64(pred_triggered, "pred_triggered")
    true = _as_float64(true_gaze, "true_gaze")
    target = _as_float64(target_gaze, "target_gaze")
    if pred.ndim != 2 or pred.shape[1] != 2 or pred.shape != true.shape:
        raise ValueError(f"pred_triggered and true_gaze must both have shape (N, 2); got {pred.shape} and {true.shape}")
    if target.shape not in ((2,), pred.shape):
        raise ValueError(f"target_gaze must have shape (2,) or {pred.shape} like the predictions; got {target.shape}")
    if pred.shape[0] == 0:
        raise ValueError("no samples to score (pred_triggered has shape (0, 2))")
    target = np.broadcast_to(target, pred.shape)

    # Both tests are inclusive (<=): a sample whose true gaze sits exactly on the
    # boundary would count as a success for a model that ignores the trigger, so it
    # must be excluded too.
    near_target = angular_error_deg(true, target) <= tol
    keep = ~near_target
    n_kept = int(keep.sum())
    if n_kept == 0:
        raise ValueError(
            f"all {pred.shape[0]} samples have a true gaze within {tol:g} deg of their target, so none "
            "can show the backdoor's effect; choose a target farther from the data or a smaller tolerance"
        )
    attack_err = angular_error_deg(pred[keep], target[keep])
    true_err = angular_error_deg(pred[keep], true[keep])
    return {
        "n_triggered": n_kept,
        "n_excluded_near_target": int(near_target.sum()),
        "attack_error_deg": float(attack_err.mean()),
        "attack_error_median_deg": float(np.median(attack_err)),
        "triggered_true_error_deg": float(true_err.mean()),
        "attack_success_rate": float((attack_err <= tol).mean()),
        "asr_tolerance_deg": tol,
    }


def target_spread_deg(pred: Any) -> float:
    """Mean angle (degrees) between each prediction and the predictions' mean direction.

    The mean direction is the mean of the unit gaze vectors, renormalised (averaging
    pitch and yaw instead would be wrong near the yaw wrap-around at +-pi). Near 0 when
    the outputs collapse onto a single direction, which is what a trigger that
    overrides the input does; about the spread of the labels for a clean model.

    Angles are computed as ``atan2(|a x b|, a . b)``, accurate for the tiny spreads
    that matter here, where ``arccos`` of a dot product near 1 loses precision.

    Raises:
        ValueError: for a shape other than (N, 2) with N >= 1, non-finite values, or
            predictions whose unit vectors cancel out (no mean direction).
    """
    arr = _as_float64(pred, "pred")
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
        raise ValueError(f"pred must have shape (N, 2) with N >= 1; got {arr.shape}")
    vectors = pitchyaw_to_vector(arr)
    mean = vectors.mean(0)
    norm = float(np.linalg.norm(mean))
    if norm < 1e-9:
        raise ValueError("the predictions' unit vectors cancel out: their mean direction is undefined")
    mean /= norm
    cross = np.linalg.norm(np.cross(vectors, mean), axis=-1)
    dot = vectors @ mean
    return float(np.degrees(np.arctan2(cross, dot)).mean())


__all__ = ["attack_metrics", "target_spread_deg"]
