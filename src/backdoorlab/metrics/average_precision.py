"""Average precision of a face detector: box IoU, greedy matching with ignored faces, AP.

Inputs are per-image lists. A prediction is a dict of numpy arrays ``{"boxes": (K, 4),
"scores": (K,), ...}``; a ground truth is ``{"boxes": (M, 4), ..., "ignore": (M,) bool}``
with ``ignore`` optional (all False when absent). Other keys (landmarks, visible) are
ignored here. Boxes are x1, y1, x2, y2 in pixels (:mod:`backdoorlab.data.instances`).

Definitions (docs/face_metrics.md has the long form):

* **IoU** is computed on continuous coordinates, area = (x2 - x1) * (y2 - y1), with no
  "+1 pixel" term. This is COCO's convention (pycocotools computes it on x, y, w, h);
  the WIDER FACE toolbox adds 1 to widths and heights, which matters for tiny faces.
* **Matching** (per image and IoU threshold ``t``) follows pycocotools' ``evaluateImg``
  for non-crowd ground truth: predictions are visited by descending score (ties keep
  their input order, a stable sort); each takes the *unmatched* non-ignored ground truth
  of highest IoU >= ``t``; only if there is none, the unmatched ignored ground truth of
  highest IoU >= ``t``. A prediction matched to a non-ignored face is a true positive,
  one matched to an ignored face is *neither* TP nor FP (it is dropped), and an
  unmatched one (including a duplicate on an already-matched face) is a false positive.
  An ignored face absorbs at most one prediction, as a COCO non-crowd face with
  ``ignore`` does. Equal IoUs go to the lower ground-truth index. Not supported:
  COCO crowd regions (IoU over the prediction's area, any number of matches) and the
  COCO rule that drops unmatched predictions outside an area range; there is no
  ``maxDets`` cut either (every prediction counts).
* **Precision/recall curve**: one point per *distinct* score, counting every
  prediction with score >= that score; recall = TP / (non-ignored faces). Tied scores
  therefore form one step, which makes AP independent of the order of tied predictions.
  pycocotools instead adds one point per prediction in a stable-sorted order, so the
  two agree exactly when scores do not tie (and differ slightly when they do).
* **AP** is the area under the monotone precision envelope
  ``p_env(r) = max_{r' >= r} p(r')``:

  - ``interpolation="all"`` (PASCAL VOC 2010+, WIDER FACE): the exact area, a sum of
    ``(r_i - r_{i-1}) * p_env(r_i)`` over the curve's recall steps;
  - ``interpolation="coco101"``: the mean of ``p_env`` sampled at the 101 recalls
    0, 0.01, ..., 1, where ``p_env`` at recall ``r`` is taken at the first curve point
    with recall >= ``r`` and is 0 past the largest recall reached (pycocotools).

* **Edge cases**: with no non-ignored ground-truth face in the whole set AP is
  undefined and returned as ``nan`` (pycocotools reports -1 there); with faces but no
  (non-ignored) prediction AP is 0.

**Difficulty levels** (:func:`average_precision_by_difficulty`): WIDER FACE's easy,
medium and hard settings are nested: evaluating at level L ignores every face harder
than L, so a detection of such a face is neither rewarded nor penalised and missing it
costs nothing. "hard" therefore scores all faces. WIDER's own toolbox differs in detail
from the matching above (it takes the best-IoU face among *all* faces, lets an ignored
face absorb any number of predictions, uses +1 pixel IoU and samples 1000 score
thresholds of min-max normalised scores), so numbers here are COCO-matched,
WIDER-protocol APs, close to but not bit-identical with the official WIDER script.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Prediction = Mapping[str, Any]
GroundTruth = Mapping[str, Any]

#: AP@0.5:0.95's thresholds 0.50, 0.55, ..., 0.95 (rounded, as pycocotools' linspace gives them)
COCO_IOUS = np.round(np.linspace(0.5, 0.95, 10), 2)
#: COCO's recall sample points 0, 0.01, ..., 1
COCO_RECALLS = np.linspace(0.0, 1.0, 101)
INTERPOLATIONS = ("all", "coco101")
DIFFICULTY_NAMES = ("easy", "medium", "hard")


# ----------------------------------------------------------------------------- IoU
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4): an (N, M) float64 array.

    Boxes are x1, y1, x2, y2; areas are ``(x2 - x1) * (y2 - y1)`` (no +1). A degenerate
    box (zero area) has IoU 0 with everything, itself included.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


# ------------------------------------------------------------------------ matching
def _pred_arrays(pred: Prediction) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(pred.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(pred.get("scores", np.zeros(0)), dtype=np.float64).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"a prediction has {len(boxes)} boxes but {len(scores)} scores")
    if not np.all(np.isfinite(scores)):
        raise ValueError("prediction scores must be finite")
    return boxes, scores


def _gt_arrays(gt: GroundTruth) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(gt.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
    ignore = gt.get("ignore")
    ignore = np.zeros(len(boxes), bool) if ignore is None else np.asarray(ignore, dtype=bool).reshape(-1)
    if len(ignore) != len(boxes):
        raise ValueError(f"a ground truth has {len(boxes)} boxes but {len(ignore)} ignore flags")
    return boxes, ignore


def _match_sorted(iou: np.ndarray, ignore: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy matching for predictions already in score order: (K,) gt index or -1."""
    k, m = iou.shape
    match = np.full(k, -1, np.int64)
    if k == 0 or m == 0:
        return match
    free = np.ones(m, bool)
    # only predictions overlapping some face enough can match: skip the rest (most of a
    # detector's low-score output) without a Python-level step each
    for i in np.flatnonzero((iou >= threshold).any(axis=1)):
        row = iou[i]
        ok = free & (row >= threshold)
        if not ok.any():
            continue
        for pool in (ok & ~ignore, ok & ignore):
            if pool.any():
                j = int(np.argmax(np.where(pool, row, -1.0)))
                match[i] = j
                free[j] = False
                break
    return match


def greedy_match(pred: Prediction, gt: GroundTruth, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Match one image's predictions to its faces (rules in the module docstring).

    Returns ``(gt_index, ignored)``, both (K,) in the prediction's *input* order:
    ``gt_index[k]`` is the face prediction ``k`` took or -1 (a false positive), and
    ``ignored[k]`` is True when that face is an ignored one (neither TP nor FP).
    """
    boxes, scores = _pred_arrays(pred)
    gt_boxes, ignore = _gt_arrays(gt)
    order = np.argsort(-scores, kind="stable")
    sorted_match = _match_sorted(box_iou(boxes[order], gt_boxes), ignore, _threshold(iou))
    match = np.empty_like(sorted_match)
    match[order] = sorted_match
    ignored = np.zeros(len(match), bool)
    ignored[match >= 0] = ignore[match[match >= 0]]
    return match, ignored


def _threshold(iou: float) -> float:
    if not 0.0 <= iou <= 1.0:
        raise ValueError(f"IoU threshold must be in [0, 1], got {iou}")
    # pycocotools caps the threshold just below 1 so that IoU = 1 still matches at t = 1
    return min(float(iou), 1.0 - 1e-10)


def _outcomes(
    preds: Sequence[Prediction], gts: Sequence[GroundTruth], ious: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores (P,) of the predictions and their TP flags (T, P), ignored ones dropped; and #faces.

    A prediction dropped at one threshold (matched to an ignored face) may count at
    another, so the kept set is per threshold: dropped entries get TP=False and a
    score of nan in a (T, P) score array. The IoU matrix of an image is computed once.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} prediction entries for {len(gts)} images")
    thresholds = [_threshold(t) for t in ious]
    all_scores, all_tp, all_keep = [], [], []
    n_faces = 0
    for pred, gt in zip(preds, gts, strict=True):
        boxes, scores = _pred_arrays(pred)
        gt_boxes, ignore = _gt_arrays(gt)
        n_faces += int((~ignore).sum())
        order = np.argsort(-scores, kind="stable")
        iou = box_iou(boxes[order], gt_boxes)
        tp = np.zeros((len(thresholds), len(order)), bool)
        keep = np.ones((len(thresholds), len(order)), bool)
        for ti, t in enumerate(thresholds):
            match = _match_sorted(iou, ignore, t)
            hit = match >= 0
            matched_ignored = np.zeros(len(match), bool)
            matched_ignored[hit] = ignore[match[hit]]
            tp[ti] = hit & ~matched_ignored
            keep[ti] = ~matched_ignored
        all_scores.append(scores[order])
        all_tp.append(tp)
        all_keep.append(keep)
    t = len(thresholds)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    tp = np.concatenate(all_tp, axis=1) if all_tp else np.zeros((t, 0), bool)
    keep = np.concatenate(all_keep, axis=1) if all_keep else np.zeros((t, 0), bool)
    return np.where(keep, scores[None, :], np.nan), tp, n_faces


def _curve(scores: np.ndarray, tp: np.ndarray, n_faces: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at each distinct score (descending) of the kept predictions."""
    kept = ~np.isnan(scores)
    scores, tp = scores[kept], tp[kept]
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], tp[order]
    if len(scores) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    tps = np.cumsum(tp)
    fps = np.cumsum(~tp)
    # last prediction of each run of equal scores: the point for threshold "score >= s"
    ends = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    tps, fps = tps[ends].astype(np.float64), fps[ends].astype(np.float64)
    precision = tps / (tps + fps)
    recall = tps / n_faces if n_faces > 0 else np.full(len(tps), np.nan)
    return precision, recall, scores[ends]


def precision_recall(
    preds: Sequence[Prediction], gts: Sequence[GroundTruth], iou: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The precision/recall curve over a set of images at one IoU threshold.

    Returns ``(precision, recall, scores)``, each (S,) with one entry per distinct score
    of the counted predictions (those not matched to an ignored face), scores
    descending: detecting with ``score >= scores[i]`` gives ``precision[i]`` and
    ``recall[i]``. Recall is nan when no face is to be found (no non-ignored ground
    truth); the arrays are empty when there is no counted prediction.
    """
    scores, tp, n_faces = _outcomes(preds, gts, [iou])
    return _curve(scores[0], tp[0], n_faces)


def _ap_from_curve(precision: np.ndarray, recall: np.ndarray, interpolation: str) -> float:
    if len(precision) == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    if interpolation == "all":
        steps = np.diff(np.concatenate([[0.0], recall]))
        return float(np.sum(steps * envelope))
    idx = np.searchsorted(recall, COCO_RECALLS, side="left")
    sampled = np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0.0)
    return float(sampled.mean())


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")


def average_precision(
    preds: Sequence[Prediction], gts: Sequence[GroundTruth], iou: float = 0.5, interpolation: str = "all"
) -> float:
    """AP at one IoU threshold: ``"all"`` = all-point (VOC2010+/WIDER), ``"coco101"`` = COCO.

    nan when the images hold no non-ignored face (AP undefined); 0.0 when they do but
    nothing was predicted.
    """
    _check_interpolation(interpolation)
    precision, recall, _ = precision_recall(preds, gts, iou)
    if _count_faces(gts) == 0:
        return float("nan")
    return _ap_from_curve(precision, recall, interpolation)


def _count_faces(gts: Sequence[GroundTruth]) -> int:
    return sum(int((~_gt_arrays(gt)[1]).sum()) for gt in gts)


def ap_range(
    preds: Sequence[Prediction],
    gts: Sequence[GroundTruth],
    ious: Sequence[float] | np.ndarray = COCO_IOUS,
    interpolation: str = "coco101",
) -> float:
    """Mean AP over IoU thresholds: by default COCO's AP@0.5:0.95 (101-point interpolation).

    Note the default interpolation is ``"coco101"``, the one that defines AP@0.5:0.95,
    unlike :func:`average_precision`'s ``"all"``. nan when there is no face.
    """
    _check_interpolation(interpolation)
    ious = list(np.asarray(ious, dtype=np.float64).reshape(-1))
    if not ious:
        raise ValueError("need at least one IoU threshold")
    scores, tp, n_faces = _outcomes(preds, gts, ious)
    if n_faces == 0:
        return float("nan")
    aps = [_ap_from_curve(*_curve(scores[i], tp[i], n_faces)[:2], interpolation) for i in range(len(ious))]
    return float(np.mean(aps))


def average_precision_by_difficulty(
    preds: Sequence[Prediction],
    gts: Sequence[GroundTruth],
    difficulty: Sequence[np.ndarray] | None = None,
    iou: float = 0.5,
    interpolation: str = "all",
) -> dict[str, float]:
    """WIDER-style AP per difficulty level: ``{"easy": ..., "medium": ..., "hard": ...}``.

    ``difficulty`` gives per image an (M,) int array with 0 (easy), 1 (medium) or 2
    (hard) per face; when None, each ground truth must carry a ``"difficulty"`` key. At
    level L every face with difficulty > L is ignored (on top of the ground truth's own
    ``ignore`` flags): detecting it is neither TP nor FP and missing it costs nothing.
    The levels are nested, so "hard" counts every face. A level with no face to find is
    nan.
    """
    if difficulty is None:
        difficulty = [np.asarray(gt["difficulty"]) for gt in gts]
    if len(difficulty) != len(gts):
        raise ValueError(f"{len(difficulty)} difficulty arrays for {len(gts)} images")
    levels = []
    for gt, d in zip(gts, difficulty, strict=True):
        d = np.asarray(d).reshape(-1)
        n = len(_gt_arrays(gt)[0])
        if len(d) != n:
            raise ValueError(f"an image has {n} faces but {len(d)} difficulty levels")
        if d.size and (d.min() < 0 or d.max() > 2):
            raise ValueError("difficulty levels must be 0 (easy), 1 (medium) or 2 (hard)")
        levels.append(d)
    out = {}
    for level, name in enumerate(DIFFICULTY_NAMES):
        at_level = [{**gt, "ignore": _gt_arrays(gt)[1] | (d > level)} for gt, d in zip(gts, levels, strict=True)]
        out[name] = average_precision(preds, at_level, iou=iou, interpolation=interpolation)
    return out


__all__ = [
    "COCO_IOUS",
    "COCO_RECALLS",
    "DIFFICULTY_NAMES",
    "INTERPOLATIONS",
    "ap_range",
    "average_precision",
    "average_precision_by_difficulty",
    "box_iou",
    "greedy_match",
    "precision_recall",
]
