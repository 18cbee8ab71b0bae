"""The model-level LSA detector: its geometry on known inputs, and one reversal on a tiny trained detector
(at this scale the toy LSA backdoor is not learned, so only that the search runs and scores is checked)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from backdoorlab.defenses import LandmarkShiftReversal
from backdoorlab.defenses.landmark_shift_reversal import paste_in_boxes, rotation_deg
from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.config import validate_config
from backdoorlab.experiments.run import execute, load_data
from backdoorlab.experiments.run_folder import Run
from backdoorlab.tasks.face_detection.relabels import rotate_points

from .test_task import LSA, config


def test_rotation_is_the_relabels_angle_about_the_box_centre() -> None:
    pts = torch.tensor([[[30.0, 40.0], [50.0, 40.0], [40.0, 50.0], [33.0, 60.0], [47.0, 60.0]]]).repeat(3, 1, 1)
    centres = torch.tensor([[40.0, 50.0], [40.0, 48.0], [41.0, 52.0]])
    for angle in (-30.0, 12.5):
        moved = rotate_points(pts, centres, angle)
        assert torch.allclose(rotation_deg(pts, moved, centres), torch.full((3,), angle), atol=1e-3)


def test_the_pattern_lands_in_the_box_only() -> None:
    images = torch.zeros(2, 3, 32, 32)
    boxes = torch.tensor([[4.0, 4.0, 12.0, 12.0], [20.0, 10.0, 30.0, 30.0]])
    out = paste_in_boxes(images, boxes, torch.ones(1, 1, 4, 4), torch.ones(1, 3, 4, 4))
    assert out[0, :, 6:11, 6:11].min() > 0.85 and out[0, :, 14:, :].abs().max() == 0  # bilinear edges are soft
    assert out[1, :, 12:28, 22:28].min() > 0.85 and out[1, :, :, :18].abs().max() == 0


@pytest.fixture(scope="module")
def lsa_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fd-lsa")
    return execute(validate_config(config(root / "scenes", attack=LSA)), root / "runs", progress=False).run_dir


def test_the_reversal_runs_scores_and_calibrates_on_a_tiny_detector(lsa_run: Path) -> None:
    run = Run(lsa_run)
    _, test = load_data(validate_config(config(lsa_run.parent.parent / "scenes")))
    det = LandmarkShiftReversal(steps=3, batch_size=4, min_face_px=8, min_clean=4, n_examples=2, device="cpu")
    verdict = det.inspect(run.model, test)
    assert math.isfinite(verdict.score) and verdict.backdoored == (verdict.score >= det.threshold)
    assert math.isfinite(verdict.estimates["angle_deg"]) and verdict.details["mask_area"] <= det.area + 1e-6
    assert verdict.examples is not None and verdict.examples.shape[1:] == (96, 96, 3)
    json.dumps(verdict.to_json())
    assert det.inspect(run.model, test).score == pytest.approx(verdict.score)  # seeded
    assert det.fit([run.model], test) > verdict.score  # one reference: just above its score
    with pytest.raises(BackdoorLabError, match="at least 4 clean faces"):
        LandmarkShiftReversal(min_face_px=200, min_clean=4, device="cpu").inspect(run.model, test)
    assert np.isfinite(verdict.details["std_rotation_deg"])


def test_a_given_trigger_is_read_out_per_face_and_no_trigger_turns_nothing(lsa_run: Path) -> None:
    run = Run(lsa_run)
    _, test = load_data(validate_config(config(lsa_run.parent.parent / "scenes")))
    det = LandmarkShiftReversal(batch_size=4, min_face_px=8, device="cpu")
    images, ann = test.batch(np.arange(len(test)))
    image, boxes, theta = det.rotations(run.model, test, images)
    assert len(image) == len(boxes) == len(theta) > 0 and np.allclose(theta, 0.0, atol=1e-4)  # same pixels: no turn
    _, _, turned = det.rotations(run.model, test, run.trigger(images, ann, np.arange(len(test))))
    assert turned.shape == theta.shape and np.isfinite(turned).all() and np.abs(turned).max() > 0
