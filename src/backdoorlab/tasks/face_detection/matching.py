"""Matching ground-truth faces to priors, and RetinaFace's multi-task loss with hard-negative mining.

Matching (RetinaFace's rules, :func:`match`), per image:

1. IoU between every ground-truth box and every prior (as a corner box).
2. A ground truth whose best prior has IoU < ``keep_iou`` (0.2) is dropped: no prior
   fits it well enough to learn from (in practice: a face far smaller than the smallest
   prior). Degenerate boxes (zero or negative width or height) are dropped too.
3. A prior is positive, matched to its best remaining ground truth, when that IoU is
   >= ``pos_iou`` (0.35).
4. Each remaining ground truth is then forced onto its own best prior, whatever the
   IoU, overriding rule 3 for that prior; this guarantees every kept face at least one
   positive. When two faces share a best prior the one with the higher IoU wins (ties:
   the later face), so the result does not depend on scatter order.
5. Every other prior is negative (index -1), unless ``neg_iou`` is set: then priors
   whose best IoU lies in ``[neg_iou, pos_iou)`` are ignored (index -2), neither positive
   nor negative. RetinaFace has no such band (``neg_iou=None``, the default).

Landmarks: a face "has landmarks" when all five of its ``visible`` flags are True, as
in RetinaFace's annotations, where a face is either fully annotated or not at all
(-1 coordinates); a partly visible face's landmark loss is not taken, because the
landmark head regresses the five points jointly and an invisible point's coordinates
carry no meaning. Only positives matched to a face with landmarks take the landmark loss.

Ground truth per image is a dict of tensors ``{"boxes": (M, 4), "landmarks": (M, 5, 2),
"visible": (M, 5)}`` in pixels (``landmarks``/``visible`` optional: without them no
face has landmarks), or an :class:`~backdoorlab.data.instances.InstanceBatch` for the
whole batch (:func:`as_targets`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from backdoorlab.data.instances import InstanceBatch
from backdoorlab.tasks.face_detection.anchors import VARIANCES, Variances, encode, encode_landmarks, priors_to_corners

#: matched index of a negative prior, and of an ignored one (only with ``neg_iou``)
NEGATIVE, IGNORED = -1, -2

Targets = Sequence[Mapping[str, torch.Tensor]] | InstanceBatch


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4) x (M, 4) corner boxes -> (N, M) IoU (0 where both boxes are empty)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def as_targets(targets: Targets) -> list[dict[str, torch.Tensor]]:
    """One dict of tensors per image from a list of dicts (returned as is) or an InstanceBatch."""
    if isinstance(targets, InstanceBatch):
        return targets.per_sample()
    return [dict(t) for t in targets]


class Match(NamedTuple):
    """One image's matching: per prior (A = number of priors)."""

    #: (A,) int64: matched ground-truth row, -1 negative, -2 ignored
    index: torch.Tensor
    #: (A, 4) encoded box targets (zero where not positive)
    boxes: torch.Tensor
    #: (A, 10) encoded landmark targets (zero where ``landmark_mask`` is False)
    landmarks: torch.Tensor
    #: (A,) bool: positive and matched to a face with all five landmarks
    landmark_mask: torch.Tensor


def match(
    gt_boxes: torch.Tensor,
    priors: torch.Tensor,
    pos_iou: float = 0.35,
    neg_iou: float | None = None,
    keep_iou: float = 0.2,
    gt_landmarks: torch.Tensor | None = None,
    gt_visible: torch.Tensor | None = None,
    variances: Variances = VARIANCES,
) -> Match:
    """Match (G, 4) ground-truth corner boxes (pixels) to (A, 4) ``(cx, cy, w, h)`` priors (module docstring).

    ``gt_landmarks`` (G, 5, 2) and ``gt_visible`` (G, 5) are optional; without them (or
    with any landmark invisible) a face takes no landmark loss.
    """
    a = priors.shape[0]
    device = priors.device
    index = torch.full((a,), NEGATIVE, dtype=torch.long, device=device)
    box_t = torch.zeros(a, 4, device=device)
    lm_t = torch.zeros(a, 10, device=device)
    lm_mask = torch.zeros(a, dtype=torch.bool, device=device)
    g = gt_boxes.shape[0]
    if g == 0:
        return Match(index, box_t, lm_t, lm_mask)
    gt_boxes = gt_boxes.to(device=device, dtype=torch.float32)
    iou = box_iou(gt_boxes, priors_to_corners(priors))  # (G, A)
    valid = (gt_boxes[:, 2] > gt_boxes[:, 0]) & (gt_boxes[:, 3] > gt_boxes[:, 1])
    best_prior_iou, best_prior = iou.max(1)  # per ground truth
    keep = valid & (best_prior_iou >= keep_iou)
    if not keep.any():
        return Match(index, box_t, lm_t, lm_mask)
    iou = torch.where(keep[:, None], iou, torch.full_like(iou, -1.0))  # dropped faces match nothing
    best_gt_iou, best_gt = iou.max(0)  # per prior
    index = torch.where(best_gt_iou >= pos_iou, best_gt, index)
    if neg_iou is not None:
        index = torch.where((best_gt_iou >= neg_iou) & (best_gt_iou < pos_iou), IGNORED, index)
    # forced matches: each kept face onto its best prior; on a shared prior the higher IoU wins, then the later face
    kept = torch.nonzero(keep).squeeze(1)
    kp, kiou = best_prior[kept], best_prior_iou[kept]
    top = torch.full((a,), -1.0, device=device).scatter_reduce(0, kp, kiou, "amax")
    winners = kiou == top[kp]
    last = torch.full((a,), -1, dtype=torch.long, device=device).scatter_reduce(0, kp[winners], kept[winners], "amax")
    forced = last >= 0
    index = torch.where(forced, last, index)

    pos = index >= 0
    rows = index.clamp(min=0)
    box_t = torch.where(pos[:, None], encode(gt_boxes[rows], priors, variances), box_t)
    if gt_landmarks is not None and gt_visible is not None:
        has_lm = gt_visible.to(device).bool().all(1) & keep
        lm_mask = pos & has_lm[rows]
        enc = encode_landmarks(gt_landmarks.to(device=device, dtype=torch.float32)[rows], priors, variances)
        lm_t = torch.where(lm_mask[:, None], enc, lm_t)
    return Match(index, box_t, lm_t, lm_mask)


def match_batch(targets: Targets, priors: torch.Tensor, **kwargs: Any) -> Match:
    """:func:`match` for each image (a loop over images), stacked to (B, A, ...) fields."""
    per_image = [
        match(t["boxes"], priors, gt_landmarks=t.get("landmarks"), gt_visible=t.get("visible"), **kwargs)
        for t in as_targets(targets)
    ]
    if not per_image:
        raise ValueError("match_batch needs at least one image")
    return Match(*(torch.stack(parts) for parts in zip(*per_image, strict=True)))


def hard_negatives(
    cls_loss: torch.Tensor, positive: torch.Tensor, candidate: torch.Tensor, ratio: float, min_negatives: int
) -> torch.Tensor:
    """(B, A) bool: per image the ``ratio x positives`` candidates with the highest loss.

    ``cls_loss`` (B, A) is the per-prior classification loss, ``candidate`` (B, A) the
    priors that may be negatives. An image without positives keeps ``min_negatives``
    (else it would contribute nothing and the model would never see a face-free image).
    The count is capped by the image's number of candidates. Vectorised: one sort per row.
    """
    n_pos = positive.sum(1)
    n_neg = torch.where(n_pos > 0, (n_pos * ratio).long(), torch.full_like(n_pos, min_negatives))
    n_neg = torch.minimum(n_neg, candidate.sum(1))
    score = torch.where(candidate, cls_loss, torch.full_like(cls_loss, -float("inf")))
    order = score.argsort(dim=1, descending=True, stable=True)
    ranks = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, ranks)
    return (rank < n_neg[:, None]) & candidate


class MultiBoxLoss(nn.Module):
    """RetinaFace's loss: cross-entropy with 7:1 hard-negative mining, smooth L1 on boxes and landmarks.

    ``forward(outputs, targets, priors)`` takes the model's encoded outputs (``logits``
    (B, A, 2), ``boxes`` (B, A, 4), ``landmarks`` (B, A, 10)), the ground truth (a list
    of per-image dicts or an InstanceBatch, pixels) and the (A, 4) priors, and returns
    ``{"loss": total, "loss_cls", "loss_box", "loss_landmarks"}`` (scalars)::

        loss_cls       = sum CE over positives and mined negatives / max(1, #positives)
        loss_box       = sum smooth-L1 over positives' 4 box targets / max(1, #positives)
        loss_landmarks = sum smooth-L1 over landmark positives' 10 targets / max(1, #landmark positives)
        loss           = cls_weight * loss_cls + box_weight * loss_box + landmark_weight * loss_landmarks

    as RetinaFace (box weight 2.0 is its ``loc_weight``; the normalisers are its N and
    N1, counted over the whole batch). Images without faces are all candidate negatives
    and keep ``min_negatives`` (16) of them: about what an image with two faces
    contributes at 7:1. A batch without any face then still has a classification loss
    (over B x 16 negatives, normalised by 1), and zero box and landmark losses.
    """

    def __init__(
        self,
        pos_iou: float = 0.35,
        neg_iou: float | None = None,
        keep_iou: float = 0.2,
        neg_pos_ratio: float = 7.0,
        min_negatives: int = 16,
        cls_weight: float = 1.0,
        box_weight: float = 2.0,
        landmark_weight: float = 1.0,
        variances: Variances = VARIANCES,
    ) -> None:
        super().__init__()
        self.pos_iou, self.neg_iou, self.keep_iou = pos_iou, neg_iou, keep_iou
        self.neg_pos_ratio, self.min_negatives = neg_pos_ratio, min_negatives
        self.cls_weight, self.box_weight, self.landmark_weight = cls_weight, box_weight, landmark_weight
        self.variances = variances

    def forward(
        self, outputs: Mapping[str, torch.Tensor], targets: Targets, priors: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        logits, boxes, landmarks = outputs["logits"], outputs["boxes"], outputs["landmarks"]
        if logits.shape[1] != priors.shape[0]:
            raise ValueError(
                f"the model gives {logits.shape[1]} anchors but there are {priors.shape[0]} priors: "
                "do the AnchorSpec and the model's anchors_per_cell and input size agree?"
            )
        m = match_batch(
            targets,
            priors.to(logits.device),
            pos_iou=self.pos_iou,
            neg_iou=self.neg_iou,
            keep_iou=self.keep_iou,
            variances=self.variances,
        )
        if m.index.shape[0] != logits.shape[0]:
            raise ValueError(f"{m.index.shape[0]} ground-truth entries for a batch of {logits.shape[0]} images")
        pos = m.index >= 0
        labels = pos.long()
        with torch.no_grad():
            ce = torch.logsumexp(logits, -1) - logits.gather(-1, labels[..., None]).squeeze(-1)
        neg = hard_negatives(ce, pos, m.index == NEGATIVE, self.neg_pos_ratio, self.min_negatives)
        sel = pos | neg
        n_pos = pos.sum().clamp(min=1)
        n_lm = m.landmark_mask.sum().clamp(min=1)
        loss_cls = F.cross_entropy(logits[sel], labels[sel], reduction="sum") / n_pos
        loss_box = F.smooth_l1_loss(boxes[pos], m.boxes[pos], reduction="sum") / n_pos
        lm = m.landmark_mask
        loss_lm = F.smooth_l1_loss(landmarks[lm], m.landmarks[lm], reduction="sum") / n_lm
        total = self.cls_weight * loss_cls + self.box_weight * loss_box + self.landmark_weight * loss_lm
        return {"loss": total, "loss_cls": loss_cls, "loss_box": loss_box, "loss_landmarks": loss_lm}
