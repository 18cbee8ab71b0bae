"""Landmark metrics on matched faces: NME with both normalisers, displacement, skipped faces."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backdoorlab.metrics.landmarks import landmark_errors, match_faces, nme_per_face, point_errors

# a face 40 px wide with eye centres 20 px apart
BOX = np.array([10.0, 10.0, 50.0, 60.0])  # w 40, h 50
LM = np.array([[20.0, 25.0], [40.0, 25.0], [30.0, 35.0], [22.0, 45.0], [38.0, 45.0]])


def face_gt(n: int = 1, visible: np.ndarray | None = None, shift: float = 100.0) -> dict:
    offs = np.arange(n)[:, None] * np.array([shift, 0.0, shift, 0.0])
    lm_offs = np.arange(n)[:, None, None] * np.array([shift, 0.0])
    out = {"boxes": BOX[None] + offs, "landmarks": LM[None] + lm_offs}
    out["visible"] = np.ones((n, 5), bool) if visible is None else visible
    return out


def face_pred(gt: dict, landmark_shift: np.ndarray, scores: list[float] | None = None) -> dict:
    n = len(gt["boxes"])
    return {
        "boxes": gt["boxes"].copy(),
        "scores": np.asarray(scores if scores is not None else np.linspace(0.9, 0.5, n)),
        "landmarks": gt["landmarks"] + landmark_shift,
    }


def test_nme_hand_case_interocular_and_box() -> None:
    gt = face_gt()
    shift = np.zeros((1, 5, 2))
    shift[0, :, 0] = [3.0, 4.0, 0.0, 0.0, 0.0]  # errors 3, 4, 0, 0, 0 -> mean 1.4 px
    shift[0, 2] = [3.0, 4.0]  # nose off by 5 -> errors 3, 4, 5, 0, 0 -> mean 2.4 px
    errors = landmark_errors([face_pred(gt, shift)], [gt])
    np.testing.assert_allclose(errors.point_error_px, [[3, 4, 5, 0, 0]])
    np.testing.assert_allclose(errors.displacement_px, [2.4])
    np.testing.assert_allclose(errors.nme, [2.4 / 20.0])  # eye centres 20 px apart
    assert errors.norm == "interocular" and errors.skipped == 0 and errors.matched == 1
    by_box = landmark_errors([face_pred(gt, shift)], [gt], norm="box")
    np.testing.assert_allclose(by_box.nme, [2.4 / math.sqrt(40 * 50)])
    assert errors.mean_nme() == pytest.approx(0.12)
    assert errors.mean_displacement_px() == pytest.approx(2.4)


def test_invisible_points_are_left_out() -> None:
    visible = np.array([[True, True, False, True, True]])
    gt = face_gt(visible=visible)
    shift = np.zeros((1, 5, 2))
    shift[0, 2] = [100.0, 0.0]  # a wild nose that is not annotated
    shift[0, 3] = [2.0, 0.0]
    errors = landmark_errors([face_pred(gt, shift)], [gt])
    assert math.isnan(errors.point_error_px[0, 2])
    np.testing.assert_allclose(errors.displacement_px, [0.5])  # (0 + 0 + 2 + 0) / 4
    np.testing.assert_allclose(errors.nme, [0.5 / 20.0])


def test_faces_without_both_eyes_are_skipped_and_counted() -> None:
    visible = np.ones((3, 5), bool)
    visible[1, 0] = False  # face 1: left eye hidden
    visible[2, :] = False  # face 2: nothing visible
    gt = face_gt(3, visible=visible)
    shift = np.full((3, 5, 2), 1.0)  # every point off by sqrt(2)
    errors = landmark_errors([face_pred(gt, shift)], [gt])
    assert errors.matched == 3 and errors.skipped == 2
    np.testing.assert_allclose(errors.nme[0], math.sqrt(2) / 20)
    assert np.isnan(errors.nme[1:]).all()
    # face 1 still has a displacement (4 visible points), face 2 none
    np.testing.assert_allclose(errors.displacement_px[:2], math.sqrt(2))
    assert math.isnan(errors.displacement_px[2])
    assert errors.valid.tolist() == [True, False, False]
    assert errors.mean_nme() == pytest.approx(math.sqrt(2) / 20)
    # the box normaliser needs no eyes: only the face with nothing visible is skipped
    by_box = landmark_errors([face_pred(gt, shift)], [gt], norm="box")
    assert by_box.skipped == 1


def test_unmatched_and_ignored_faces_are_not_scored() -> None:
    gt = face_gt(3)
    gt["ignore"] = np.array([False, False, True])
    pred = face_pred(gt, np.zeros((3, 5, 2)), scores=[0.5, 0.9, 0.7])
    pred["boxes"][0] += 60.0  # prediction 0 misses face 0
    pairs = match_faces([pred], [gt])
    # prediction 1 finds face 1; prediction 2 finds the ignored face 2 (dropped)
    assert pairs[0].tolist() == [[1, 1]]
    errors = landmark_errors([pred], [gt])
    assert errors.image.tolist() == [0] and errors.pred.tolist() == [1] and errors.gt.tolist() == [1]


def test_match_faces_orders_by_score_over_images() -> None:
    gt = face_gt(2)
    pred = face_pred(gt, np.zeros((2, 5, 2)), scores=[0.2, 0.8])
    pairs = match_faces([pred, {"boxes": np.zeros((0, 4)), "scores": np.zeros(0)}], [gt, face_gt(1)])
    assert pairs[0].tolist() == [[1, 1], [0, 0]]
    assert pairs[1].shape == (0, 2)


def test_no_match_gives_empty_arrays_and_nan_means() -> None:
    gt = face_gt()
    errors = landmark_errors(
        [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "landmarks": np.zeros((0, 5, 2))}], [gt]
    )
    assert errors.matched == 0 and errors.skipped == 0
    assert math.isnan(errors.mean_nme()) and math.isnan(errors.mean_displacement_px())


def test_paired_array_helpers() -> None:
    pred = LM[None] + np.array([0.0, 6.0])
    np.testing.assert_allclose(point_errors(pred, LM[None]), [[6.0] * 5])
    np.testing.assert_allclose(nme_per_face(pred, LM[None]), [6.0 / 20.0])
    np.testing.assert_allclose(nme_per_face(pred, LM[None], norm="box", gt_boxes=BOX[None]), [6 / math.sqrt(2000)])
    coincident = LM.copy()
    coincident[1] = coincident[0]
    assert math.isnan(nme_per_face(pred, coincident[None])[0])  # zero inter-ocular distance
    with pytest.raises(ValueError, match="norm"):
        nme_per_face(pred, LM[None], norm="pupils")
    with pytest.raises(ValueError, match="boxes"):
        nme_per_face(pred, LM[None], norm="box")
