"""NMS against a brute-force greedy reference, and decoding known outputs back to faces."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from backdoorlab.tasks.face_detection import postprocess
from backdoorlab.tasks.face_detection.anchors import AnchorSpec, encode, encode_landmarks, make_priors
from backdoorlab.tasks.face_detection.postprocess import decode_detections, nms


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(boxes: list[list[float]], scores: list[float], thr: float) -> list[int]:
    """Textbook greedy NMS in plain Python, one pair at a time."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(i)
    return keep


@st.composite
def scored_boxes(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    n = draw(st.integers(0, 40))
    xy = draw(st.lists(st.integers(0, 60), min_size=2 * n, max_size=2 * n))  # a small field: many overlaps
    wh = draw(st.lists(st.integers(1, 30), min_size=2 * n, max_size=2 * n))
    scores = draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))  # coarse scores: ties happen
    xy_t = torch.tensor(xy, dtype=torch.float32).reshape(n, 2)
    wh_t = torch.tensor(wh, dtype=torch.float32).reshape(n, 2)
    return torch.cat([xy_t, xy_t + wh_t], 1), torch.tensor(scores, dtype=torch.float32) / 10


@pytest.mark.parametrize("matrix", [True, False], ids=["matrix", "loop"])
@given(bs=scored_boxes(), thr=st.sampled_from([0.0, 0.3, 0.4, 0.7]), max_keep=st.sampled_from([None, 3]))
@settings(max_examples=60, deadline=None)
def test_nms_equals_brute_force(
    matrix: bool, bs: tuple[torch.Tensor, torch.Tensor], thr: float, max_keep: int | None
) -> None:
    boxes, scores = bs
    b = boxes.tolist()
    # an IoU within float32 rounding of the threshold could fall either side of it
    assume(all(abs(iou(p, q) - thr) > 1e-5 or iou(p, q) == thr == 0 for p in b for q in b))
    expected = reference_nms(boxes.tolist(), scores.tolist(), thr)[:max_keep]
    saved = postprocess.MATRIX_NMS_MAX
    postprocess.MATRIX_NMS_MAX = saved if matrix else 0
    try:
        got = nms(boxes, scores, thr, max_keep=max_keep)
    finally:
        postprocess.MATRIX_NMS_MAX = saved
    assert got.dtype == torch.long
    assert got.tolist() == expected


def test_nms_keeps_an_iou_equal_to_the_threshold() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 25]])  # IoU 0.4
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.4).tolist() == [0, 1]
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.39).tolist() == [0]


def test_decode_detections_recovers_the_encoded_faces() -> None:
    priors = make_priors(AnchorSpec(), 192, 192)
    a = len(priors)
    faces = torch.tensor([[20.0, 30, 60, 80], [100, 90, 170, 180]])
    landmarks = torch.rand(2, 5, 2, generator=torch.Generator().manual_seed(0)) * 40 + faces[:, None, :2]
    hits = [100, a - 3]  # a small prior at stride 8, a large one at stride 32
    logits = torch.zeros(2, a, 2)
    logits[..., 0] = 5.0  # background everywhere ...
    logits[0, hits, 1] = torch.tensor([10.0, 8.0])  # ... but two faces in image 0
    logits[0, hits[0] + 2, 1] = 7.0  # a neighbour predicting the first face again: suppressed by NMS
    boxes = torch.zeros(2, a, 4)
    lms = torch.zeros(2, a, 10)
    for face_i, p in enumerate(hits):
        boxes[0, p] = encode(faces[face_i], priors[p])
        lms[0, p] = encode_landmarks(landmarks[face_i], priors[p])
    boxes[0, hits[0] + 2] = encode(faces[0], priors[hits[0] + 2])
    out = {"logits": logits, "boxes": boxes, "landmarks": lms}
    dets = decode_detections(out, priors, score_threshold=0.5)
    assert len(dets) == 2 and len(dets[1]["scores"]) == 0
    d = dets[0]
    assert d["boxes"].shape == (2, 4) and d["landmarks"].shape == (2, 5, 2)
    torch.testing.assert_close(d["boxes"], faces, atol=1e-3, rtol=0)
    torch.testing.assert_close(d["landmarks"], landmarks, atol=1e-3, rtol=0)
    assert d["scores"][0] > d["scores"][1] > 0.5
    # a low threshold lets the background through, capped by keep_top_k, best first
    many = decode_detections(out, priors, score_threshold=0.0, top_k=50, keep_top_k=7)
    assert [len(x["scores"]) for x in many] == [7, 7]
    assert (many[0]["scores"].diff() <= 0).all()
