"""Landmark accuracy of a face detector on the faces it found: NME and displacement in pixels.

Faces are paired with :func:`match_faces` (the greedy IoU matching of
:mod:`backdoorlab.metrics.average_precision`; pairs with an ignored face are left
out), then each matched face gets:

* **point errors**: the L2 distance in pixels between predicted and true landmark, per
  point, nan where the true point is not visible;
* **displacement**: the mean point error over the visible points (pixels);
* **NME**: the displacement divided by a per-face normaliser ``d`` computed from the
  ground truth:

  - ``norm="interocular"``: the distance between the two *eye centres* (points 0 and
    1). With eye centres this is what the 68-point literature calls the inter-pupil
    distance, larger errors than the outer-eye-corner ("inter-ocular") normaliser of
    300W/WFLW would give, which five-point annotations cannot provide;
  - ``norm="box"``: ``sqrt(w * h)`` of the true box (as AFLW's box-size NME).

A face without any visible point, or (for ``"interocular"``) without both eyes visible
or with coincident eyes, or (for ``"box"``) with an empty box, has no NME: its entry
is nan and it is counted in :attr:`LandmarkErrors.skipped`. Its displacement is still
reported when it has visible points. Means skip nan entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backdoorlab.metrics.average_precision import GroundTruth, Prediction, greedy_match

NORMS = ("interocular", "box")


def match_faces(preds: Sequence[Prediction], gts: Sequence[GroundTruth], iou: float = 0.5) -> list[np.ndarray]:
    """Per image, the (F, 2) int64 pairs ``[prediction index, face index]`` of matched faces.

    The matching is AP's (highest score first, each prediction takes the unmatched face
    of highest IoU >= ``iou``, non-ignored faces first); pairs with an ignored face are
    dropped. Rows are in descending prediction score.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} prediction entries for {len(gts)} images")
    out = []
    for pred, gt in zip(preds, gts, strict=True):
        match, ignored = greedy_match(pred, gt, iou)
        scores = np.asarray(pred.get("scores", np.zeros(0)), dtype=np.float64).reshape(-1)
        order = np.argsort(-scores, kind="stable")
        keep = order[(match[order] >= 0) & ~ignored[order]]
        out.append(np.stack([keep, match[keep]], axis=1).astype(np.int64).reshape(-1, 2))
    return out


def point_errors(pred_landmarks: np.ndarray, gt_landmarks: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """(F, 5) L2 pixel errors between paired landmark sets; nan where ``visible`` is False."""
    p = np.asarray(pred_landmarks, dtype=np.float64)
    g = np.asarray(gt_landmarks, dtype=np.float64)
    if p.shape != g.shape or p.ndim != 3 or p.shape[2] != 2:
        raise ValueError(f"landmarks must both be (F, P, 2), got {p.shape} and {g.shape}")
    err = np.linalg.norm(p - g, axis=2)
    if visible is not None:
        vis = np.asarray(visible, dtype=bool)
        if vis.shape != err.shape:
            raise ValueError(f"visible must be {err.shape}, got {vis.shape}")
        err = np.where(vis, err, np.nan)
    return err


def normalisers(
    gt_landmarks: np.ndarray, visible: np.ndarray | None, gt_boxes: np.ndarray | None, norm: str = "interocular"
) -> np.ndarray:
    """(F,) NME normaliser per face (see the module docstring); nan where it cannot be formed."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    g = np.asarray(gt_landmarks, dtype=np.float64)
    if norm == "interocular":
        d = np.linalg.norm(g[:, 0] - g[:, 1], axis=1)
        if visible is not None:
            vis = np.asarray(visible, dtype=bool)
            d = np.where(vis[:, 0] & vis[:, 1], d, np.nan)
    else:
        if gt_boxes is None:
            raise ValueError('norm="box" needs the ground-truth boxes')
        b = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        d = np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))
    return np.where(d > 0, d, np.nan)


def nme_per_face(
    pred_landmarks: np.ndarray,
    gt_landmarks: np.ndarray,
    visible: np.ndarray | None = None,
    norm: str = "interocular",
    gt_boxes: np.ndarray | None = None,
) -> np.ndarray:
    """(F,) NME of already paired faces; nan for faces that cannot be scored (module docstring)."""
    d = normalisers(gt_landmarks, visible, gt_boxes, norm)
    return _mean_visible(point_errors(pred_landmarks, gt_landmarks, visible)) / d


def _mean_visible(err: np.ndarray) -> np.ndarray:
    """(F,) mean of each row's non-nan entries; nan for a row with none."""
    count = (~np.isnan(err)).sum(axis=1)
    return np.where(count > 0, np.nansum(err, axis=1) / np.maximum(count, 1), np.nan)


@dataclass(frozen=True)
class LandmarkErrors:
    """Per matched face (F rows, images in order, each by descending prediction score)."""

    image: np.ndarray  #: (F,) image index
    pred: np.ndarray  #: (F,) prediction index within its image
    gt: np.ndarray  #: (F,) face index within its image
    point_error_px: np.ndarray  #: (F, 5) pixels, nan where the true point is not visible
    displacement_px: np.ndarray  #: (F,) mean over visible points, nan when none is visible
    nme: np.ndarray  #: (F,) nan where the face cannot be scored
    norm: str

    @property
    def matched(self) -> int:
        return len(self.nme)

    @property
    def skipped(self) -> int:
        """Matched faces without an NME (too few visible points for the normaliser)."""
        return int(np.isnan(self.nme).sum())

    @property
    def valid(self) -> np.ndarray:
        """(F,) bool: faces with an NME (the ones to put in a histogram)."""
        return ~np.isnan(self.nme)

    def mean_nme(self) -> float:
        """Mean NME over scored faces; nan when none is."""
        return float(self.nme[self.valid].mean()) if self.valid.any() else float("nan")

    def mean_displacement_px(self) -> float:
        """Mean displacement in pixels over faces with a visible point; nan when none has."""
        ok = ~np.isnan(self.displacement_px)
        return float(self.displacement_px[ok].mean()) if ok.any() else float("nan")


def landmark_errors(
    preds: Sequence[Prediction], gts: Sequence[GroundTruth], iou: float = 0.5, norm: str = "interocular"
) -> LandmarkErrors:
    """Match faces (:func:`match_faces`) and compute their point errors, displacement and NME.

    Predictions need ``landmarks`` (K, 5, 2); ground truths ``landmarks`` (M, 5, 2) and
    optionally ``visible`` (M, 5) (all visible when absent).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    pairs = match_faces(preds, gts, iou)
    images, p_idx, g_idx, p_lm, g_lm, vis, boxes = [], [], [], [], [], [], []
    for i, (pred, gt, pair) in enumerate(zip(preds, gts, pairs, strict=True)):
        if len(pair) == 0:
            continue
        gl = np.asarray(gt["landmarks"], dtype=np.float64)
        gv = gt.get("visible")
        gv = np.ones(gl.shape[:2], bool) if gv is None else np.asarray(gv, dtype=bool)
        images.append(np.full(len(pair), i, np.int64))
        p_idx.append(pair[:, 0])
        g_idx.append(pair[:, 1])
        p_lm.append(np.asarray(pred["landmarks"], dtype=np.float64)[pair[:, 0]])
        g_lm.append(gl[pair[:, 1]])
        vis.append(gv[pair[:, 1]])
        boxes.append(np.asarray(gt["boxes"], dtype=np.float64).reshape(-1, 4)[pair[:, 1]])
    if not images:
        empty = np.zeros(0, np.int64)
        return LandmarkErrors(empty, empty, empty, np.zeros((0, 5)), np.zeros(0), np.zeros(0), norm)
    p_all, g_all, v_all = np.concatenate(p_lm), np.concatenate(g_lm), np.concatenate(vis)
    err = point_errors(p_all, g_all, v_all)
    displacement = _mean_visible(err)
    d = normalisers(g_all, v_all, np.concatenate(boxes), norm)
    return LandmarkErrors(
        image=np.concatenate(images),
        pred=np.concatenate(p_idx),
        gt=np.concatenate(g_idx),
        point_error_px=err,
        displacement_px=displacement,
        nme=displacement / d,
        norm=norm,
    )


__all__ = [
    "NORMS",
    "LandmarkErrors",
    "landmark_errors",
    "match_faces",
    "nme_per_face",
    "normalisers",
    "point_errors",
]
