"""The face-detection run-time monitors on hand-made faces and predictions (seconds), and once end to end
on a tiny trained detector: each flags a landmark configuration turned against its face and passes an
upright one, and each conforms to the RuntimeMonitor shape."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from backdoorlab.defenses.conformance import check_runtime_monitor
from backdoorlab.defenses.face_monitors import AuxLandmarkerMonitor, GeometryMonitor, TransformMonitor
from backdoorlab.defenses.face_monitors.common import (
    TEMPLATE,
    apply_affine,
    as_images,
    crop_faces,
    crop_matrices,
    detect,
    image_max,
    invert_affine,
    template_fit,
)
from backdoorlab.defenses.face_monitors.transform import rotation_matrix, unflip, unturn
from backdoorlab.errors import BackdoorLabError, MissingExtraError
from backdoorlab.metrics.detection import auroc
from backdoorlab.registry import DEFENCES
from backdoorlab.tasks.face_detection.relabels import rotate_points

SIZE = 64


def turn(points: np.ndarray, centres: np.ndarray, angle_deg: float) -> np.ndarray:
    return rotate_points(torch.as_tensor(points), torch.as_tensor(centres), angle_deg).numpy()


def draw_faces(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n images of one cartoon face each (rolled within +-30 degrees): (uint8 images, boxes (n, 4), landmarks)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    boxes, lms = np.zeros((n, 4)), np.zeros((n, 5, 2))
    for i in range(n):
        im = rng.integers(40, 90, (SIZE, SIZE, 3)).astype(np.uint8)
        side = rng.uniform(30, 40)
        centre = rng.uniform(SIZE / 2 - 4, SIZE / 2 + 4, 2)
        roll = rng.uniform(-30, 30)
        box = np.r_[centre - side / 2, centre + side / 2]
        pts = turn((box[:2] + TEMPLATE * side)[None], centre[None], roll)[0]
        ax = (int(side * 0.42), int(side * 0.52))
        cv2.ellipse(im, tuple(int(c) for c in centre), ax, roll, 0, 360, (200, 160, 130), -1)
        for p in pts[:2]:
            cv2.circle(im, tuple(round(c) for c in p), max(2, int(side / 14)), (20, 20, 60), -1)
        cv2.circle(im, tuple(round(c) for c in pts[2]), 2, (120, 60, 50), -1)
        cv2.line(im, *(tuple(round(c) for c in p) for p in pts[3:]), (150, 20, 30), 2)
        images[i], boxes[i], lms[i] = im, box, pts + rng.normal(0, 0.4, pts.shape)  # a detector is not exact
    return images, boxes, lms


@pytest.fixture(scope="module")
def faces() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return {"train": draw_faces(120, 0), "test": draw_faces(40, 1)}


def lsa(boxes: np.ndarray, lms: np.ndarray, angle: float = 30.0) -> np.ndarray:
    """The Landmark Shift Attack's labels: landmarks turned about the box centre, the face left as it is."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    return np.stack([turn(lm[None], c[None], angle)[0] for lm, c in zip(lms, centres, strict=True)])


# ----------------------------------------------------------------- shared parts
def test_inputs_in_every_accepted_form_give_the_same_images() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    t, u = as_images(images)
    assert t.shape == (2, 3, 8, 8) and np.array_equal(u, images)
    assert np.array_equal(as_images(t)[1], images) and np.array_equal(as_images(torch.from_numpy(images))[1], images)
    with pytest.raises(BackdoorLabError, match="uint8"):
        as_images(images.astype(np.float32))


def test_template_fit_reads_roll_and_shape_and_crops_carry_points_exactly() -> None:
    box = np.array([[10.0, 20.0, 50.0, 60.0]])
    upright = box[:, None, :2] + TEMPLATE[None] * 40
    roll, resid = template_fit(np.concatenate([upright, turn(upright, np.array([[30.0, 40.0]]), 25.0)]))
    assert roll == pytest.approx([0.0, 25.0], abs=1e-6) and resid == pytest.approx([0.0, 0.0], abs=1e-9)
    m = crop_matrices(box, 32, 1.5, np.array([20.0]))
    assert np.allclose(apply_affine(apply_affine(upright, m), invert_affine(m)), upright)
    assert template_fit(apply_affine(upright, m))[0] == pytest.approx([-20.0])  # a crop turned by +a shows -a
    image = np.zeros((1, 80, 80, 3), np.uint8)
    image[0, 40, 30] = 255  # one bright pixel, at the box centre: the crop's centre
    crop = crop_faces(image, np.array([0]), crop_matrices(box, 33, 1.0), 33)
    assert np.unravel_index(crop[0, ..., 0].argmax(), (33, 33)) == (16, 16)
    assert image_max(np.array([0.2, 0.9, 0.4]), np.array([0, 0, 2]), 4) == pytest.approx([0.9, 0, 0.4, 0])


# ---------------------------------------------------------------------- geometry
def test_geometry_flags_landmarks_turned_against_the_face_and_passes_upright_ones(faces) -> None:
    images, boxes, lms = faces["train"]
    mon = GeometryMonitor(steps=150, copies=3, min_faces=20).fit_detections(images, np.arange(len(images)), boxes, lms)
    assert mon.fit_report_["roll_turned_heldout_mae_deg"] < 10  # the regressor reads turned faces it never saw
    images, boxes, lms = faces["test"]
    idx = np.arange(len(images))
    clean = mon.score_faces(images, idx, boxes, lms)
    attacked = mon.score_faces(images, idx, boxes, lsa(boxes, lms))
    assert np.abs(attacked.parts["roll_gap_deg"] - 30).mean() < np.abs(clean.parts["roll_gap_deg"]).mean() + 10
    mon.calibrate(clean.scores, 0.05)
    assert (clean.scores >= mon.threshold).mean() <= 0.05
    assert (attacked.scores >= mon.threshold).mean() >= 0.9
    # the shape alone (a rigid turn keeps it) does not see it: the template residual is unchanged
    assert np.allclose(attacked.parts["template_residual"], clean.parts["template_residual"], atol=1e-9)


def test_geometry_without_the_pixels_sees_a_template_fake_face_as_too_perfect(faces) -> None:
    images, boxes, lms = faces["train"]
    mon = GeometryMonitor(features=["template"]).fit_detections(images, np.arange(len(images)), boxes, lms)
    fake = boxes[:1, None, :2] + TEMPLATE[None] * (boxes[:1, 2:] - boxes[:1, :2])[:, None]  # FGA's label
    scored = mon.score_faces(images[:1], np.array([0]), boxes[:1], fake)
    typical = mon.score_faces(images, np.arange(len(images)), boxes, lms).scores
    assert scored.scores[0] > np.quantile(typical, 0.9)


# --------------------------------------------------------------------- transform
def test_views_map_back_exactly() -> None:
    lms = np.array([[[20.0, 30.0], [40.0, 30.0], [30.0, 40.0], [22.0, 50.0], [38.0, 50.0]]])
    box = np.array([[10.0, 20.0, 50.0, 60.0]])
    flipped = {"boxes": box.copy(), "scores": np.ones(1), "landmarks": lms[:, [1, 0, 2, 4, 3]].copy()}
    flipped["boxes"][:, [0, 2]] = 63 - box[:, [2, 0]]
    flipped["landmarks"][..., 0] = 63 - flipped["landmarks"][..., 0]
    back = unflip(flipped, 64)
    assert np.allclose(back["landmarks"], lms) and np.allclose(back["boxes"], box)
    m = rotation_matrix(64, 64, 10.0)
    seen = {"boxes": box, "scores": np.ones(1), "landmarks": apply_affine(lms, m[None])}
    assert np.allclose(unturn(seen, m)["landmarks"], lms)
    assert template_fit(seen["landmarks"])[0] - template_fit(lms)[0] == pytest.approx(10.0)


def test_transform_scores_disagreement_missing_and_appearing_faces() -> None:
    box = np.array([[10.0, 10.0, 50.0, 50.0]])
    lms = box[:, None, :2] + TEMPLATE[None] * 40
    face = {"boxes": box, "scores": np.ones(1), "landmarks": lms}
    none = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "landmarks": np.zeros((0, 5, 2))}
    turned = {**face, "landmarks": turn(lms, np.array([[30.0, 30.0]]), -60.0)}  # LSA seen through the mirror
    ghost = {"boxes": np.array([[5.0, 5.0, 25.0, 25.0]]), "scores": np.ones(1), "landmarks": lms * 0.5}
    mon = TransformMonitor(angles_deg=[])  # the mirror only
    agree = mon.compare_views([face], [([face], None)], 64, 64)
    assert agree.scores == pytest.approx([0.0])
    rotated = mon.compare_views([face], [([turned], None)], 64, 64)
    nme = np.linalg.norm(turned["landmarks"] - lms, axis=-1).mean() / 40
    assert rotated.scores == pytest.approx([min(nme, 0.5)]) and rotated.scores[0] > 0.2
    missing = mon.compare_views([face], [([none], None)], 64, 64)
    assert missing.scores == pytest.approx([0.5])
    appeared = mon.compare_views([none], [([ghost], None)], 64, 64)
    assert appeared.parts["appeared"].tolist() == [True] and appeared.per_image(1) == pytest.approx([0.5])
    two = TransformMonitor(angles_deg=[10.0]).compare_views([face], [([face], None), ([none], np.eye(2, 3))], 64, 64)
    assert two.scores == pytest.approx([0.25])  # mean over views


# ---------------------------------------------------------------- aux landmarker
def test_aux_cnn_flags_turned_landmarks_and_passes_true_ones(faces) -> None:
    images, boxes, lms = faces["train"]
    mon = AuxLandmarkerMonitor(steps=150, copies=3).fit_detections(images, np.arange(len(images)), boxes, lms)
    assert mon.fit_report_["cnn_heldout_nme_median"] < 0.08
    images, boxes, lms = faces["test"]
    idx = np.arange(len(images))
    clean = mon.score_faces(images, idx, boxes, lms).scores
    attacked = mon.score_faces(images, idx, boxes, lsa(boxes, lms)).scores
    mon.calibrate(clean, 0.05)
    assert (attacked >= mon.threshold).mean() >= 0.9
    assert auroc(np.r_[clean, attacked], np.r_[np.zeros(len(clean)), np.ones(len(attacked))]) == pytest.approx(
        roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(len(attacked))], np.r_[clean, attacked])
    )


def test_aux_dlib_runs_when_installed_and_names_the_extra_when_not(faces, monkeypatch) -> None:
    images, boxes, lms = faces["test"]
    if AuxLandmarkerMonitor.dlib_available():
        mon = AuxLandmarkerMonitor(landmarker="dlib").fit(images[:1])
        points = mon.aux_landmarks(images[:4], np.arange(4), boxes[:4])
        assert points.shape == (4, 5, 2) and np.all(np.isfinite(points))
        assert np.median(np.linalg.norm(points - lms[:4], axis=-1)) < 0.5 * (boxes[0, 2] - boxes[0, 0])
    monkeypatch.setattr(AuxLandmarkerMonitor, "dlib_available", staticmethod(lambda: False))
    with pytest.raises(MissingExtraError, match="dlib extra"):
        AuxLandmarkerMonitor(landmarker="dlib").fit(images[:1])


def test_monitors_are_registered_with_their_settings_and_need_the_face_detection_task() -> None:
    for name, cls in (
        ("geometry", GeometryMonitor),
        ("transform", TransformMonitor),
        ("aux_landmarker", AuxLandmarkerMonitor),
    ):
        entry = DEFENCES.get(name)
        assert entry.classes == {"runtime monitoring": cls} and cls.needs.tasks == ("face_detection",)
    with pytest.raises(BackdoorLabError, match="wrap"):
        GeometryMonitor().score(np.zeros((1, 32, 32, 3), np.uint8))


# ------------------------------------------------------------------- end to end
def test_end_to_end_on_a_tiny_trained_lsa_detector(tmp_path: Path) -> None:
    from face_detection.test_task import LSA, config  # tests/ is on the path (rootdir-relative imports)

    from backdoorlab.experiments.config import validate_config
    from backdoorlab.experiments.run import execute
    from backdoorlab.experiments.run_folder import Run

    out = execute(validate_config(config(tmp_path / "scenes", attack=LSA)), tmp_path / "runs", progress=False)
    run = Run(out.run_dir)
    model, test = run.model, run.test_data
    images = np.asarray(test.images)
    triggered = run.trigger(*test.batch(np.arange(len(test))), np.arange(len(test)))
    # a detector trained for one epoch is unsure of everything: check its few most confident faces per image
    scores = np.sort(np.concatenate([d["scores"] for d in detect(model, as_images(images)[0])]))[::-1]
    low = {"score_threshold": float(scores[4 * len(images)]), "min_face_px": 0.0}
    for mon in (
        GeometryMonitor(model, steps=20, min_faces=5, **low),
        TransformMonitor(model, **low),
        AuxLandmarkerMonitor(model, steps=20, min_faces=5, **low),
    ):
        mon.fit(images)
        check_runtime_monitor(mon, images, triggered, 0.25)
        clean, bad = mon.score(images), mon.score(triggered)
        labels = np.r_[np.zeros(len(clean)), np.ones(len(bad))]
        if math.isfinite(clean.std()) and len(set(np.r_[clean, bad])) > 1:
            assert auroc(np.r_[clean, bad], labels) == pytest.approx(roc_auc_score(labels, np.r_[clean, bad]))
