"""Face-detection AP: hand-computed cases, ignored faces, difficulty levels, and pycocotools agreement."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backdoorlab.metrics.average_precision import (
    COCO_IOUS,
    ap_range,
    average_precision,
    average_precision_by_difficulty,
    box_iou,
    greedy_match,
    precision_recall,
)

FAST = settings(max_examples=40, deadline=None)
A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 0.0, 30.0, 10.0]
C = [40.0, 0.0, 50.0, 10.0]
FAR = [100.0, 100.0, 110.0, 110.0]


def pred(boxes: list, scores: list) -> dict:
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "scores": np.asarray(scores, float)}


def gt(boxes: list, ignore: list | None = None) -> dict:
    out = {"boxes": np.asarray(boxes, float).reshape(-1, 4)}
    if ignore is not None:
        out["ignore"] = np.asarray(ignore, bool)
    return out


def both(preds: list, gts: list, iou: float = 0.5) -> tuple[float, float]:
    return average_precision(preds, gts, iou, "all"), average_precision(preds, gts, iou, "coco101")


# ------------------------------------------------------------------------------ IoU
def test_box_iou_hand_values() -> None:
    iou = box_iou(np.array([A]), np.array([A, [5, 0, 15, 10], [10, 0, 20, 10], [0, 0, 5, 5]]))
    assert iou.shape == (1, 4)
    np.testing.assert_allclose(iou[0], [1.0, 50 / 150, 0.0, 25 / 100])


def test_box_iou_degenerate_and_empty() -> None:
    assert box_iou(np.array([[1, 1, 1, 5]]), np.array([[1, 1, 1, 5]]))[0, 0] == 0.0
    assert box_iou(np.zeros((0, 4)), np.array([A])).shape == (0, 1)


# ----------------------------------------------------------------------- hand cases
def test_perfect_detections_give_ap_one() -> None:
    preds = [pred([A, B], [0.9, 0.8]), pred([C], [0.7])]
    gts = [gt([A, B]), gt([C])]
    assert both(preds, gts) == (1.0, 1.0)
    assert ap_range(preds, gts) == 1.0


def test_one_false_positive_above_one_true_positive() -> None:
    precision, recall, scores = precision_recall([pred([FAR, A], [0.9, 0.8])], [gt([A])])
    np.testing.assert_allclose(precision, [0.0, 0.5])
    np.testing.assert_allclose(recall, [0.0, 1.0])
    np.testing.assert_allclose(scores, [0.9, 0.8])
    # envelope is 0.5 at every recall in [0, 1]
    assert both([pred([FAR, A], [0.9, 0.8])], [gt([A])]) == pytest.approx((0.5, 0.5))


def test_false_positive_between_two_true_positives() -> None:
    # points (p, r): (1, .5), (.5, .5), (2/3, 1); envelope 1 up to r = .5, then 2/3
    all_point, coco = both([pred([A, FAR, B], [0.9, 0.8, 0.7])], [gt([A, B])])
    assert all_point == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # 51 recall samples in [0, .5] see precision 1, the 50 in (.5, 1] see 2/3
    assert coco == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_duplicate_is_a_false_positive() -> None:
    dup = [0.5, 0.0, 10.5, 10.0]  # IoU with A = 0.905
    precision, recall, _ = precision_recall([pred([A, dup], [0.9, 0.8])], [gt([A])])
    np.testing.assert_allclose(precision, [1.0, 0.5])
    np.testing.assert_allclose(recall, [1.0, 1.0])
    assert both([pred([A, dup], [0.9, 0.8])], [gt([A])]) == (1.0, 1.0)
    # a duplicate ranked above the second face costs precision there
    all_point, _ = both([pred([A, dup, B], [0.9, 0.8, 0.7])], [gt([A, B])])
    assert all_point == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_greedy_matching_hands_second_prediction_the_free_face() -> None:
    left, right = [0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0]  # IoU(left, right) = 2/3
    p = pred([[1.0, 0.0, 11.0, 10.0], left], [0.8, 0.9])
    match, ignored = greedy_match(p, gt([left, right]))
    # the higher-scored prediction (input index 1) takes `left` (IoU 1); the other gets `right`
    assert match.tolist() == [1, 0] and not ignored.any()
    assert average_precision([p], [gt([left, right])]) == 1.0


def test_iou_threshold_decides() -> None:
    shifted = [0.0, 0.0, 10.0, 8.0]  # IoU with A = 0.8
    assert average_precision([pred([shifted], [1.0])], [gt([A])], iou=0.75) == 1.0
    assert average_precision([pred([shifted], [1.0])], [gt([A])], iou=0.85) == 0.0
    # AP@0.5:0.95: thresholds .5..0.8 (7 of 10) match
    assert ap_range([pred([shifted], [1.0])], [gt([A])]) == pytest.approx(0.7)
    assert ap_range([pred([A], [1.0])], [gt([A])], ious=[1.0]) == 1.0  # IoU 1 matches at t = 1


def test_ignored_face_is_neither_true_nor_false_positive() -> None:
    gts_ignored = [gt([A, B], ignore=[False, True])]
    # a confident detection of the ignored face does not count as a false positive ...
    assert both([pred([B, A], [0.9, 0.8])], gts_ignored) == (1.0, 1.0)
    # ... where the same detection of a face that is not annotated at all does
    assert both([pred([B, A], [0.9, 0.8])], [gt([A])]) == pytest.approx((0.5, 0.5))
    # missing the ignored face costs nothing
    assert both([pred([A], [0.8])], gts_ignored) == (1.0, 1.0)
    match, ignored = greedy_match(pred([B, A], [0.9, 0.8]), gts_ignored[0])
    assert match.tolist() == [1, 0] and ignored.tolist() == [True, False]


def test_ignored_face_absorbs_only_one_prediction() -> None:
    dup = [20.5, 0.0, 30.5, 10.0]
    preds = [pred([B, dup, A], [0.9, 0.85, 0.8])]
    # the second detection of the ignored face B is an ordinary duplicate (COCO non-crowd)
    all_point, _ = both(preds, [gt([A, B], ignore=[False, True])])
    assert all_point == pytest.approx(0.5)


def test_non_ignored_face_is_preferred_over_a_better_overlapping_ignored_one() -> None:
    face, ignored_face = [0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]
    p = pred([[1.0, 0.0, 11.0, 10.0]], [0.9])  # IoU 1 with the ignored face, 0.82 with the face
    match, ignored = greedy_match(p, gt([face, ignored_face], ignore=[False, True]))
    assert match.tolist() == [0] and not ignored[0]


def test_edge_cases() -> None:
    # no ground truth at all: undefined
    assert math.isnan(average_precision([pred([A], [0.9])], [gt([])]))
    assert math.isnan(average_precision([pred([], [])], [gt([])], interpolation="coco101"))
    assert math.isnan(ap_range([pred([A], [0.9])], [gt([])]))
    # only ignored faces: undefined too
    assert math.isnan(average_precision([pred([A], [0.9])], [gt([A], ignore=[True])]))
    # faces but no predictions: 0
    assert both([pred([], [])], [gt([A])]) == (0.0, 0.0)
    assert both([{}], [gt([A])]) == (0.0, 0.0)
    precision, recall, scores = precision_recall([pred([], [])], [gt([A])])
    assert len(precision) == len(recall) == len(scores) == 0
    # an image with predictions but no faces adds false positives
    assert both([pred([A], [0.5]), pred([B], [0.9])], [gt([A]), gt([])]) == pytest.approx((0.5, 0.5))


def test_tied_scores_form_one_step() -> None:
    precision, recall, scores = precision_recall([pred([A, FAR], [0.5, 0.5])], [gt([A])])
    np.testing.assert_allclose(precision, [0.5])
    np.testing.assert_allclose(recall, [1.0])
    np.testing.assert_allclose(scores, [0.5])
    swapped = average_precision([pred([FAR, A], [0.5, 0.5])], [gt([A])])
    assert average_precision([pred([A, FAR], [0.5, 0.5])], [gt([A])]) == swapped == 0.5


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="interpolation"):
        average_precision([pred([A], [1])], [gt([A])], interpolation="voc11")
    with pytest.raises(ValueError, match="scores"):
        average_precision([{"boxes": np.array([A]), "scores": np.zeros(2)}], [gt([A])])
    with pytest.raises(ValueError, match="images"):
        average_precision([pred([A], [1])], [gt([A]), gt([A])])
    with pytest.raises(ValueError, match="IoU"):
        average_precision([pred([A], [1])], [gt([A])], iou=1.5)


# ---------------------------------------------------------------- difficulty levels
def test_difficulty_levels_are_nested_wider_style() -> None:
    gts = [gt([A, B, C])]
    difficulty = [np.array([0, 1, 2])]  # A easy, B medium, C hard
    preds = [pred([A, C, FAR], [0.9, 0.8, 0.7])]
    aps = average_precision_by_difficulty(preds, gts, difficulty)
    # easy: B and C ignored; the detection of C is dropped, FAR is a false positive after full recall
    assert aps["easy"] == 1.0
    # medium: faces A, B; C ignored: (1, .5) then FAR (.5, .5)
    assert aps["medium"] == pytest.approx(0.5)
    # hard: every face counts: (1, 1/3), (1, 2/3), (2/3, 2/3)
    assert aps["hard"] == pytest.approx(2 / 3)
    with_key = average_precision_by_difficulty(preds, [{**gts[0], "difficulty": difficulty[0]}])
    assert with_key == aps


def test_difficulty_level_without_faces_is_nan() -> None:
    aps = average_precision_by_difficulty([pred([A], [0.9])], [gt([A])], [np.array([2])])
    assert math.isnan(aps["easy"]) and math.isnan(aps["medium"]) and aps["hard"] == 1.0
    with pytest.raises(ValueError, match="difficulty"):
        average_precision_by_difficulty([pred([A], [0.9])], [gt([A])], [np.array([3])])


# --------------------------------------------------------------------- properties
@st.composite
def scenes(draw: st.DrawFn) -> tuple[list[dict], list[dict]]:
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    n_img = draw(st.integers(1, 4))
    preds, gts = [], []
    for _ in range(n_img):
        m = int(rng.integers(0, 5))
        xy = rng.uniform(0, 100, (m, 2))
        g = np.concatenate([xy, xy + rng.uniform(1, 40, (m, 2))], 1)
        k = int(rng.integers(0, 6))
        pxy = rng.uniform(0, 100, (k, 2))
        p = np.concatenate([pxy, pxy + rng.uniform(1, 40, (k, 2))], 1)
        p = np.concatenate([p, g[: int(rng.integers(0, m + 1))] + rng.normal(0, 2, (1, 4))])
        p[:, 2:] = np.maximum(p[:, 2:], p[:, :2] + 0.5)
        preds.append({"boxes": p, "scores": rng.random(len(p))})
        gts.append({"boxes": g})
    return preds, gts


@FAST
@given(scenes(), st.sampled_from(["all", "coco101"]), st.sampled_from([0.3, 0.5, 0.75]))
def test_ap_is_in_unit_interval_and_invariant_to_prediction_order(scene: tuple, interp: str, iou: float) -> None:
    preds, gts = scene
    ap = average_precision(preds, gts, iou, interp)
    if sum(len(g["boxes"]) for g in gts) == 0:
        assert math.isnan(ap)
        return
    assert 0.0 <= ap <= 1.0
    rng = np.random.default_rng(0)
    shuffled = []
    for p in preds:
        perm = rng.permutation(len(p["scores"]))
        shuffled.append({"boxes": p["boxes"][perm], "scores": p["scores"][perm]})
    assert average_precision(shuffled, gts, iou, interp) == pytest.approx(ap, abs=1e-12)


@FAST
@given(scenes())
def test_predictions_equal_to_ground_truth_give_ap_one(scene: tuple) -> None:
    _, gts = scene
    rng = np.random.default_rng(1)
    preds = [{"boxes": g["boxes"].copy(), "scores": rng.random(len(g["boxes"]))} for g in gts]
    if sum(len(g["boxes"]) for g in gts) == 0:
        return
    assert average_precision(preds, gts) == 1.0
    assert average_precision(preds, gts, interpolation="coco101") == 1.0
    assert ap_range(preds, gts) == 1.0


# ----------------------------------------------------------- pycocotools agreement
def random_scene(rng: np.random.Generator, n_img: int = 25) -> tuple[list[dict], list[dict]]:
    """Random faces; predictions: jittered faces (some missed), duplicates and false positives."""
    preds, gts = [], []
    for _ in range(n_img):
        m = int(rng.integers(0, 7))
        xy = rng.uniform(0, 400, (m, 2))
        wh = rng.uniform(8, 120, (m, 2))
        faces = np.concatenate([xy, xy + wh], 1)
        found = rng.random(m) > 0.2
        hits = faces[found] + rng.normal(0, 0.08, (int(found.sum()), 4)) * np.tile(wh[found], 2)
        dups = hits[: int(rng.integers(0, len(hits) + 1))] + rng.normal(0, 3, (1, 4))
        nf = int(rng.integers(0, 4))
        fxy = rng.uniform(0, 400, (nf, 2))
        false = np.concatenate([fxy, fxy + rng.uniform(8, 120, (nf, 2))], 1)
        boxes = np.concatenate([hits, dups, false]).reshape(-1, 4)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        # continuous random scores: no ties (see the module docstring on tie handling)
        preds.append({"boxes": boxes, "scores": rng.random(len(boxes))})
        gts.append({"boxes": faces})
    return preds, gts


def coco_stats(preds: list[dict], gts: list[dict], min_area: float = 0.0) -> tuple[float, float]:
    """pycocotools' AP@0.5:0.95 and AP@0.5 for one category, one area range from ``min_area``, <= 100 detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns, dets = [], []
    for i, (p, g) in enumerate(zip(preds, gts, strict=True)):
        for x1, y1, x2, y2 in g["boxes"]:
            # ids start at 1: COCOeval stores matched ids in zero-initialised arrays and tests "> 0"
            w, h = float(x2 - x1), float(y2 - y1)
            box = [float(x1), float(y1), w, h]
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "bbox": box, "area": w * h, "iscrowd": 0}
            )
        for (x1, y1, x2, y2), s in zip(p["boxes"], p["scores"], strict=True):
            box = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
            dets.append({"image_id": i + 1, "category_id": 1, "bbox": box, "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [{"id": i + 1} for i in range(len(gts))],
            "annotations": anns,
            "categories": [{"id": 1, "name": "face"}],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.areaRng = [[min_area, 1e10]]
        ev.params.areaRngLbl = ["all"]
        # stats[0] reads maxDets=100 and stats[1] reads maxDets[2]: both 100, above any image's count
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


@pytest.mark.parametrize("seed", range(6))
def test_coco101_ap_matches_pycocotools(seed: int) -> None:
    pytest.importorskip("pycocotools")
    preds, gts = random_scene(np.random.default_rng(seed))
    assert max(len(p["scores"]) for p in preds) < 100
    coco_ap, coco_ap50 = coco_stats(preds, gts)
    assert 0.05 < coco_ap < coco_ap50 < 0.95  # a scene that exercises the curve
    assert ap_range(preds, gts, COCO_IOUS, interpolation="coco101") == pytest.approx(coco_ap, abs=1e-3)
    assert average_precision(preds, gts, 0.5, "coco101") == pytest.approx(coco_ap50, abs=1e-3)


def scene_with_small_ignored_faces(rng: np.random.Generator, n_img: int = 25) -> tuple[list[dict], list[dict]]:
    """Large faces (sides 40-120 px) to find and small ones (6-15 px) to ignore.

    pycocotools ignores faces outside an area range, and that is how it is made to ignore
    faces here. Its area rule also drops *unmatched predictions* outside the range, a rule
    we do not have, so the scene avoids it: every small prediction is a near-exact
    (IoU > 0.99) single detection of a small face, and the other predictions are large.
    Small and large boxes cannot reach IoU 0.5 (area ratio < 0.15).
    """
    preds, gts = [], []
    for _ in range(n_img):
        m, s = int(rng.integers(0, 6)), int(rng.integers(0, 4))
        xy = rng.uniform(0, 400, (m + s, 2))
        wh = np.concatenate([rng.uniform(40, 120, (m, 2)), rng.uniform(6, 15, (s, 2))])
        faces = np.concatenate([xy, xy + wh], 1)
        small = np.arange(m + s) >= m
        found = rng.random(m + s) > 0.2
        jitter = np.where(
            small[:, None], rng.normal(0, 0.01, (m + s, 4)), rng.normal(0, 0.08, (m + s, 4)) * np.tile(wh, 2)
        )
        hits = (faces + jitter)[found]
        large_hits = hits[~small[found]]
        dups = large_hits[: int(rng.integers(0, len(large_hits) + 1))] + rng.normal(0, 3, (1, 4))
        nf = int(rng.integers(0, 4))
        fxy = rng.uniform(0, 400, (nf, 2))
        false = np.concatenate([fxy, fxy + rng.uniform(40, 120, (nf, 2))], 1)
        boxes = np.concatenate([hits, dups, false]).reshape(-1, 4)
        preds.append({"boxes": boxes, "scores": rng.random(len(boxes))})
        gts.append({"boxes": faces, "ignore": small})
    return preds, gts


@pytest.mark.parametrize("seed", range(4))
def test_ignored_faces_match_pycocotools_area_range_ignoring(seed: int) -> None:
    pytest.importorskip("pycocotools")
    preds, gts = scene_with_small_ignored_faces(np.random.default_rng(100 + seed))
    assert sum(int(g["ignore"].sum()) for g in gts) > 10
    areas = [np.prod(g["boxes"][:, 2:] - g["boxes"][:, :2], axis=1) for g in gts]
    assert all(((a < 400) == g["ignore"]).all() for a, g in zip(areas, gts, strict=True))
    coco_ap, coco_ap50 = coco_stats(preds, gts, min_area=400.0)
    assert ap_range(preds, gts) == pytest.approx(coco_ap, abs=1e-3)
    assert average_precision(preds, gts, 0.5, "coco101") == pytest.approx(coco_ap50, abs=1e-3)
    # and ignoring matters: counting the small faces as faces changes AP
    counted = [{"boxes": g["boxes"]} for g in gts]
    assert abs(average_precision(preds, counted, 0.5, "coco101") - coco_ap50) > 1e-3
