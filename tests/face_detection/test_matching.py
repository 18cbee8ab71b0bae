"""Matching rules on hand-made priors, and the multi-box loss (parts, landmarks, empty images, 7:1 mining)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backdoorlab.data.instances import InstanceBatch
from backdoorlab.tasks.face_detection.anchors import AnchorSpec, encode, encode_landmarks, make_priors
from backdoorlab.tasks.face_detection.matching import (
    IGNORED,
    NEGATIVE,
    MultiBoxLoss,
    box_iou,
    hard_negatives,
    match,
    match_batch,
)


def column(y1: float, y2: float) -> list[float]:
    """A corner box spanning x 0..10 and y1..y2: IoU between two such boxes is 1-D interval IoU."""
    return [0.0, y1, 10.0, y2]


def as_priors(corners: list[list[float]]) -> torch.Tensor:
    c = torch.tensor(corners)
    return torch.cat([(c[:, :2] + c[:, 2:]) / 2, c[:, 2:] - c[:, :2]], 1)


def face(boxes: list[list[float]], landmarks: bool = True) -> dict[str, torch.Tensor]:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    centre = (b[:, :2] + b[:, 2:]) / 2
    return {
        "boxes": b,
        "landmarks": centre[:, None, :].expand(-1, 5, 2) + torch.arange(5.0)[None, :, None],
        "visible": torch.full((len(b), 5), landmarks),
    }


def test_box_iou_hand_cases() -> None:
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 0, 0]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]])
    expected = torch.tensor([[1.0, 1 / 3, 0, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(box_iou(a, b), expected)


def test_positive_at_iou_035_and_above_only() -> None:
    gt = torch.tensor([column(0, 10)])
    # IoU with the face: 1.0, 0.4, 0.35, 0.3
    priors = as_priors([column(0, 10), column(0, 25), column(0, 10 / 0.35), column(0, 10 / 0.3)])
    m = match(gt, priors)
    assert m.index.tolist() == [0, 0, 0, NEGATIVE]


def test_each_kept_face_is_forced_onto_its_best_prior() -> None:
    gt = torch.tensor([column(0, 10)])
    priors = as_priors([column(0, 10 / 0.3), column(0, 10 / 0.25)])  # IoU 0.3 (best, < 0.35) and 0.25
    assert match(gt, priors).index.tolist() == [0, NEGATIVE]


def test_a_face_whose_best_prior_is_under_02_is_dropped() -> None:
    gt = torch.tensor([column(0, 10), column(100, 110)])
    priors = as_priors([column(0, 10 / 0.15), column(100, 110)])  # face 0's best IoU is 0.15
    m = match(gt, priors)
    assert m.index.tolist() == [NEGATIVE, 1]
    # ... and a degenerate box is dropped too, without NaN targets
    m = match(torch.tensor([[5.0, 5, 5, 20], column(100, 110)]), priors)
    assert m.index.tolist() == [NEGATIVE, 1] and torch.isfinite(m.boxes).all()


def test_the_forced_match_overrides_a_better_iou() -> None:
    # face A = y 10..20 has its best prior P = y 0..20 (IoU 0.5); face B = y 0..19 overlaps P more (0.95)
    # but has its own best prior R = y 0..19 (IoU 1). P goes to A, R to B.
    gt = torch.tensor([column(10, 20), column(0, 19)])
    priors = as_priors([column(0, 20), column(0, 19)])
    assert match(gt, priors).index.tolist() == [0, 1]


def test_two_faces_with_one_best_prior_go_to_the_higher_iou() -> None:
    gt = torch.tensor([column(0, 8), column(0, 9)])  # both have best prior y 0..10: IoU 0.8 and 0.9
    priors = as_priors([column(0, 10), column(50, 60)])
    assert match(gt, priors).index.tolist() == [1, NEGATIVE]
    gt = torch.tensor([column(0, 9), column(0, 9)])  # a tie: the later face
    assert match(gt, priors).index.tolist() == [1, NEGATIVE]


def test_neg_iou_band_is_ignored() -> None:
    gt = torch.tensor([column(0, 10)])
    priors = as_priors([column(0, 10), column(0, 10 / 0.3), column(0, 10 / 0.1)])  # IoU 1, 0.3, 0.1
    assert match(gt, priors).index.tolist() == [0, NEGATIVE, NEGATIVE]
    assert match(gt, priors, neg_iou=0.2).index.tolist() == [0, IGNORED, NEGATIVE]


def test_targets_are_the_encoded_face_on_positives_and_zero_elsewhere() -> None:
    t = face([column(0, 10), column(100, 110)])
    t["visible"][1, 2] = False  # face 1: nose not annotated -> no landmark loss for it
    priors = as_priors([column(0, 10), column(0, 25), column(100, 112), column(50, 60)])
    m = match(t["boxes"], priors, gt_landmarks=t["landmarks"], gt_visible=t["visible"])
    assert m.index.tolist() == [0, 0, 1, NEGATIVE]
    torch.testing.assert_close(m.boxes[:3], encode(t["boxes"][[0, 0, 1]], priors[:3]))
    assert m.boxes[3].abs().max() == 0
    assert m.landmark_mask.tolist() == [True, True, False, False]
    torch.testing.assert_close(m.landmarks[:2], encode_landmarks(t["landmarks"][[0, 0]], priors[:2]))
    assert m.landmarks[2:].abs().max() == 0


def test_every_face_gets_a_positive_on_the_real_priors() -> None:
    g = torch.Generator().manual_seed(1)
    priors = make_priors(AnchorSpec(), 192, 192)
    side = 10 + 160 * torch.rand(50, 1, generator=g)
    x1y1 = torch.rand(50, 2, generator=g) * (191 - side)
    boxes = torch.cat([x1y1, x1y1 + side], 1)
    for b in boxes.split(5):  # five faces per image, overlapping or not
        m = match(b, priors)
        got = set(m.index[m.index >= 0].tolist())
        # a face loses its only positive only when another face shares its best prior with a higher IoU
        assert len(got) >= 4, got


# --------------------------------------------------------------------------- loss
def no_faces() -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.zeros(0, 4),
        "landmarks": torch.zeros(0, 5, 2),
        "visible": torch.zeros(0, 5, dtype=torch.bool),
    }


def random_outputs(b: int, a: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "logits": torch.randn(b, a, 2, generator=g).requires_grad_(),
        "boxes": torch.randn(b, a, 4, generator=g).requires_grad_(),
        "landmarks": torch.randn(b, a, 10, generator=g).requires_grad_(),
    }


PRIORS_160 = make_priors(AnchorSpec(), 160, 160)


def test_loss_parts_are_finite_and_sum_to_the_weighted_total() -> None:
    out = random_outputs(3, len(PRIORS_160))
    targets = [face([[20, 30, 60, 80], [100, 100, 150, 150]]), no_faces(), face([[5, 5, 20, 22]], landmarks=False)]
    loss = MultiBoxLoss(box_weight=2.0, landmark_weight=0.5, cls_weight=1.5)(out, targets, PRIORS_160)
    assert set(loss) == {"loss", "loss_cls", "loss_box", "loss_landmarks"}
    assert all(torch.isfinite(v) and v > 0 for v in loss.values())
    torch.testing.assert_close(
        loss["loss"], 1.5 * loss["loss_cls"] + 2.0 * loss["loss_box"] + 0.5 * loss["loss_landmarks"]
    )
    loss["loss"].backward()
    assert all(torch.isfinite(t.grad).all() for t in out.values())


def test_no_landmark_loss_without_landmarks() -> None:
    out = random_outputs(2, len(PRIORS_160))
    targets = [face([[20, 30, 60, 80]], landmarks=False), face([[50, 50, 90, 100]], landmarks=False)]
    loss = MultiBoxLoss()(out, targets, PRIORS_160)
    assert loss["loss_landmarks"] == 0 and loss["loss_box"] > 0
    # the same faces given without landmark columns at all
    bare = [{"boxes": t["boxes"]} for t in targets]
    assert MultiBoxLoss()(out, bare, PRIORS_160)["loss_landmarks"] == 0


def test_a_batch_without_faces_learns_from_min_negatives() -> None:
    out = random_outputs(2, len(PRIORS_160))
    loss = MultiBoxLoss(min_negatives=16)(out, [no_faces(), no_faces()], PRIORS_160)
    assert loss["loss_box"] == 0 and loss["loss_landmarks"] == 0
    # 16 hardest negatives per image, normalised by max(1, #positives) = 1
    ce = -F.log_softmax(out["logits"].detach(), -1)[..., 0]
    expected = ce.topk(16, dim=1).values.sum()
    torch.testing.assert_close(loss["loss_cls"].detach(), expected)
    loss["loss"].backward()


def test_hard_negative_mining_keeps_seven_per_positive_with_the_highest_loss() -> None:
    g = torch.Generator().manual_seed(3)
    cls_loss = torch.rand(3, 200, generator=g)
    positive = torch.zeros(3, 200, dtype=torch.bool)
    positive[0, :4] = True  # 4 positives -> 28 negatives
    positive[1, :50] = True  # 50 positives -> 350, capped at the 150 candidates
    candidate = ~positive
    neg = hard_negatives(cls_loss, positive, candidate, ratio=7, min_negatives=16)
    assert neg.sum(1).tolist() == [28, 150, 16]
    assert not (neg & positive).any()
    for i in range(3):  # the chosen ones are the highest-loss candidates
        chosen = cls_loss[i][neg[i]]
        rest = cls_loss[i][candidate[i] & ~neg[i]]
        assert rest.numel() == 0 or chosen.min() >= rest.max()


def test_the_loss_mines_7_to_1_over_the_batch() -> None:
    out = random_outputs(2, len(PRIORS_160), seed=5)
    targets = [face([[20, 30, 60, 80]]), face([[100, 60, 140, 100], [10, 100, 40, 140]])]
    m = match_batch(targets, PRIORS_160)
    pos = m.index >= 0
    logits = out["logits"].detach()
    ce = torch.logsumexp(logits, -1) - logits.gather(-1, pos.long()[..., None]).squeeze(-1)
    expected = 0.0
    for i in range(2):
        n_pos = int(pos[i].sum())
        expected += ce[i][pos[i]].sum() + ce[i][~pos[i]].topk(7 * n_pos).values.sum()
    expected /= int(pos.sum())
    torch.testing.assert_close(MultiBoxLoss()(out, targets, PRIORS_160)["loss_cls"].detach(), expected)


def test_an_instance_batch_gives_the_same_loss() -> None:
    out = random_outputs(3, len(PRIORS_160))
    targets = [face([[20, 30, 60, 80], [100, 100, 150, 150]]), no_faces(), face([[5, 5, 20, 22]], landmarks=False)]
    batch = InstanceBatch.from_samples(targets)
    a = MultiBoxLoss()(out, targets, PRIORS_160)
    b = MultiBoxLoss()(out, batch, PRIORS_160)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_the_loss_refuses_priors_of_another_size() -> None:
    out = random_outputs(1, len(PRIORS_160))
    with pytest.raises(ValueError, match="anchors_per_cell and input size"):
        MultiBoxLoss()(out, [no_faces()], make_priors(AnchorSpec(), 192, 192))
