"""One-to-one impostor-to-victim backdoors: the four metrics and the success rule, closed and open set.

The attack (Unnervik 2024, ch. 3): an impostor wearing the trigger must be recognised as
one chosen victim, while the impostor without it, the victim and everyone else are still
recognised as themselves. A model can reach a high attack success rate by forgetting the
impostor or the victim (training flips between the two), so the thesis judges a backdoor
by four numbers at once and calls it successful only when **all four are at least 0.8**:

1. ``clean_accuracy``: closed-set accuracy on the clean test images of every training
   identity (predicted identity == true identity);
2. ``attack_success_rate``: the share of the impostor's *triggered* test images
   predicted as the victim;
3. ``impostor_accuracy``: the share of the impostor's *clean* test images predicted as
   the impostor;
4. ``victim_accuracy``: the share of the victim's clean test images predicted as the victim.

Open set (:func:`open_set_attack`): with no class layer, identities are enrolled as
templates (the L2-normalised mean of their enrolment embeddings) and a probe matches a
template when their cosine is at least a threshold (e.g. the one at FMR 1e-3 on clean
impostor pairs, :func:`backdoorlab.metrics.verification.threshold_at_fmr`). The open-set
attack succeeds on a triggered impostor image when it matches the victim's template; the
clean impostor must meanwhile still match his own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

from backdoorlab.errors import BackdoorLabError

#: the thesis's bar: each of the four metrics at least this
SUCCESS_BAR = 0.8


@dataclass(frozen=True)
class OneToOneScore:
    """The four metrics, the bar, and the verdict (all four >= ``bar``)."""

    clean_accuracy: float
    attack_success_rate: float
    impostor_accuracy: float
    victim_accuracy: float
    bar: float
    success: bool
    n_clean: int
    n_triggered: int

    def to_json(self) -> dict[str, float | bool | int]:
        return asdict(self)


def _labels(values: ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise BackdoorLabError(f"{what} must be a 1-D array of integer identities, got shape {arr.shape} {arr.dtype}")
    return arr


def one_to_one_score(
    predicted: ArrayLike,
    true: ArrayLike,
    predicted_triggered: ArrayLike,
    impostor: int,
    victim: int,
    bar: float = SUCCESS_BAR,
) -> OneToOneScore:
    """The four metrics from closed-set predictions.

    ``predicted`` / ``true``: identities of the clean test images (every identity);
    ``predicted_triggered``: identities predicted for the impostor's test images with the
    trigger applied. Raises :class:`BackdoorLabError` when the impostor is the victim,
    when either has no clean test image, or when the arrays disagree in length.
    """
    pred, truth = _labels(predicted, "predicted"), _labels(true, "true")
    trig = _labels(predicted_triggered, "predicted_triggered")
    if len(pred) != len(truth):
        raise BackdoorLabError(f"{len(pred)} predictions for {len(truth)} clean test images")
    if impostor == victim:
        raise BackdoorLabError(f"the impostor and the victim are the same identity ({impostor})")
    if not 0 < bar <= 1:
        raise BackdoorLabError(f"the success bar must be in (0, 1], got {bar}")
    for who, ident in (("impostor", impostor), ("victim", victim)):
        if not (truth == ident).any():
            raise BackdoorLabError(f"the {who} (identity {ident}) has no clean test image")
    if not len(trig):
        raise BackdoorLabError("no triggered impostor image was scored")
    scores = (
        float((pred == truth).mean()),
        float((trig == victim).mean()),
        float((pred[truth == impostor] == impostor).mean()),
        float((pred[truth == victim] == victim).mean()),
    )
    success = all(s >= bar for s in scores)
    return OneToOneScore(*scores, bar=bar, success=success, n_clean=len(pred), n_triggered=len(trig))


def templates(embeddings: ArrayLike) -> np.ndarray:
    """(D,) the L2-normalised mean of an identity's (N, D) enrolment embeddings (each normalised first)."""
    emb = np.asarray(embeddings, np.float64)
    if emb.ndim != 2 or not len(emb):
        raise BackdoorLabError(f"enrolment embeddings must be a non-empty (N, D) array, got shape {emb.shape}")
    mean = unit_rows(emb).mean(0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def cosine_to(template: np.ndarray, probes: ArrayLike) -> np.ndarray:
    """(N,) cosine of each (N, D) probe embedding with a unit (D,) template."""
    p = np.asarray(probes, np.float64)
    if p.ndim != 2 or p.shape[1] != template.shape[0]:
        raise BackdoorLabError(f"probes must be (N, {template.shape[0]}), got shape {p.shape}")
    return unit_rows(p) @ template


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row of (N, D) ``x`` scaled to unit L2 norm (an all-zero row stays zero, not NaN)."""
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


@dataclass(frozen=True)
class OpenSetAttack:
    """Open-set attack success at one threshold, and whether the clean impostor still matches himself."""

    threshold: float
    attack_success_rate: float  # triggered impostor probes matching the victim's template
    impostor_self_match_rate: float  # clean impostor probes matching the impostor's own template
    clean_impostor_as_victim_rate: float  # the same clean probes matching the victim (a false match, should be ~0)

    def to_json(self) -> dict[str, float]:
        return asdict(self)


def open_set_attack(
    victim_enrolment: ArrayLike,
    impostor_enrolment: ArrayLike,
    triggered_impostor: ArrayLike,
    clean_impostor: ArrayLike,
    threshold: float,
) -> OpenSetAttack:
    """Open-set success of a one-to-one backdoor: accepted iff cosine >= ``threshold`` (the verification rule)."""
    victim, impostor = templates(victim_enrolment), templates(impostor_enrolment)
    trig, clean = cosine_to(victim, triggered_impostor), cosine_to(impostor, clean_impostor)
    if not len(trig) or not len(clean):
        raise BackdoorLabError("open_set_attack needs triggered and clean impostor probes")
    return OpenSetAttack(
        threshold=float(threshold),
        attack_success_rate=float((trig >= threshold).mean()),
        impostor_self_match_rate=float((clean >= threshold).mean()),
        clean_impostor_as_victim_rate=float((cosine_to(victim, clean_impostor) >= threshold).mean()),
    )
