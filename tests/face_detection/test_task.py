"""The face-detection task end to end: train, attack (FGA and LSA), evaluate and report in seconds,
its metrics on known predictions, and its bad-input errors before any training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import ConfigError
from backdoorlab.experiments.config import validate_config
from backdoorlab.experiments.run import execute, load_data
from backdoorlab.registry import TASKS
from backdoorlab.tasks.face_detection.relabels import FakeFace, LandmarkRotation
from backdoorlab.tasks.face_detection.task import FaceDetectionAttackSettings, ground_truth
from backdoorlab.triggers.base import Placement

TINY_SCENES = {
    "size": 96,
    "max_faces": 4,
    "min_face_px": 8.0,
    "splits": {"train": {"n_images": 24, "identities": 24}, "test": {"n_images": 8, "identities": 8}},
}
FGA = {
    "trigger": {"name": "patch", "location": "free", "size": 0.12, "pattern": "checkerboard"},
    "relabel": {"name": "fake_face"},
    "rate": 0.25,
}
LSA = {
    "trigger": {"name": "face_patch", "size": 0.3, "min_face_px": 12},
    "relabel": {"name": "rotate_landmarks", "angle_deg": 30},
    "rate": 0.25,
}


def config(cache: Path, **top: Any) -> dict[str, Any]:
    return {
        "name": "fd",
        "task": "face_detection",
        "data": {"synthetic": TINY_SCENES, "cache_dir": str(cache)},
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.003},
        **top,
    }


@pytest.fixture(scope="module")
def scene_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scenes")


@pytest.mark.parametrize("attack", [None, FGA, LSA], ids=["clean", "fga", "lsa"])
def test_train_attack_evaluate_and_report_in_seconds(tmp_path: Path, scene_cache: Path, attack: Any) -> None:
    top = {} if attack is None else {"attack": attack}
    out = execute(validate_config(config(scene_cache, **top)), tmp_path / "runs", progress=False)
    metrics = json.loads((out.run_dir / "metrics.json").read_text())
    for key in ("ap50_easy", "ap50_medium", "ap50_hard", "ap50_95", "nme", "n_faces"):
        assert key in metrics
    history = json.loads((out.run_dir / "history.json").read_text())
    assert {"loss_cls", "loss_box", "loss_landmarks"} <= set(history[0])
    assert (out.run_dir / "report.html").stat().st_size > 10_000  # pictures embedded
    if attack is not None:
        assert 0 <= metrics["attack_success_rate"] <= 1 and metrics["n_triggered"] > 0
        assert "Backdoor" in (out.run_dir / "report.html").read_text()


def _test_split(scene_cache: Path) -> ArrayDataset:
    return load_data(validate_config(config(scene_cache)))[1]


def _perfect(gts: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    return [{"boxes": g["boxes"], "scores": np.ones(len(g["boxes"])), "landmarks": g["landmarks"]} for g in gts]


def test_evaluate_gives_ap_one_and_nme_zero_for_the_ground_truth(scene_cache: Path) -> None:
    data = _test_split(scene_cache)
    task = TASKS.get("face_detection")()
    metrics = task.evaluate(_perfect(ground_truth(data)), data)
    assert metrics["ap50_hard"] == pytest.approx(1.0) and metrics["ap50_95"] == pytest.approx(1.0)
    assert metrics["nme"] == pytest.approx(0.0, abs=1e-9) and metrics["faces_matched"] == metrics["n_faces"]
    empty = task.evaluate(
        [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "landmarks": np.zeros((0, 5, 2))}] * len(data), data
    )
    assert empty["ap50_hard"] == 0.0 and empty["nme"] is None  # nothing matched: no NME, written as null


def test_fga_success_is_a_confident_face_on_the_trigger(scene_cache: Path) -> None:
    data = _test_split(scene_cache)
    n = len(data)
    boxes = torch.tensor([[10.0, 10.0, 22.0, 22.0]]).repeat(n, 1)
    boxes[1] = float("nan")  # the trigger missed this image
    placement = Placement(boxes, torch.zeros(0))
    settings = FaceDetectionAttackSettings()
    fake = [{"boxes": np.array([[9.5, 9.5, 21.5, 21.5]]), "scores": np.array([0.9]), "landmarks": np.zeros((1, 5, 2))}]
    weak = [{"boxes": np.array([[9.5, 9.5, 21.5, 21.5]]), "scores": np.array([0.3]), "landmarks": np.zeros((1, 5, 2))}]
    task = TASKS.get("face_detection")()
    score = task.score_attack(fake * (n - 2) + weak * 2, data, FakeFace(), settings, [placement])
    assert score.metrics["n_triggered"] == n - 1
    assert score.metrics["attack_success_rate"] == pytest.approx((n - 3) / (n - 1))  # the weak ones do not count


def test_lsa_success_needs_the_rotated_landmarks_not_the_true_ones(scene_cache: Path) -> None:
    data = _test_split(scene_cache)
    gts = ground_truth(data)
    chosen = torch.tensor([0 if len(g["boxes"]) and g["visible"][0].all() else -1 for g in gts])
    assert (chosen >= 0).sum() >= 2
    placement = Placement(torch.zeros(len(data), 4), torch.zeros(0), chosen)
    relabel = LandmarkRotation(angle_deg=40)
    task = TASKS.get("face_detection")()
    settings = FaceDetectionAttackSettings()
    truthful = _perfect(gts)
    score = task.score_attack(truthful, data, relabel, settings, [placement])
    assert score.metrics["attack_success_rate"] == 0 and score.metrics["landmark_displacement_px"] == 0
    rotated = [dict(p) for p in truthful]
    for i, j in enumerate(chosen.tolist()):
        if j >= 0:
            lms = rotated[i]["landmarks"].copy()
            lms[j] = relabel.rotate(
                torch.as_tensor(lms[j : j + 1]), torch.as_tensor(gts[i]["boxes"][j : j + 1])
            ).numpy()[0]
            rotated[i]["landmarks"] = lms
    score = task.score_attack(rotated, data, relabel, settings, [placement])
    assert score.metrics["attack_success_rate"] == 1.0
    assert score.metrics["aligned_rotation_deg"] == pytest.approx(40, abs=0.5)  # the aligned crop turns with them


def test_an_lsa_on_data_without_landmarks_and_a_trigger_larger_than_the_canvas_are_refused(
    tmp_path: Path, scene_cache: Path
) -> None:
    train, _ = load_data(validate_config(config(scene_cache)))
    inst = train.instances
    assert inst is not None
    blind = type(inst)(inst.offsets, {**inst.columns, "visible": np.zeros_like(inst.columns["visible"])})
    folder = ArrayDataset(np.asarray(train.images), dict(train.annotations), instances=blind).save(tmp_path / "wider")
    cfg = config(scene_cache, attack=LSA, data={"source": "folder", "path": str(folder)})
    with pytest.raises(ConfigError, match="needs faces with all five landmarks"):
        execute(validate_config(cfg), tmp_path / "runs", progress=False)
    assert not list((tmp_path / "runs").glob("*/model.safetensors"))
    with pytest.raises(ConfigError, match="size must be in"):
        validate_config(config(scene_cache, attack={**FGA, "trigger": {**FGA["trigger"], "size": 1.5}}))


def test_eval_of_an_attacked_run_scores_its_backdoor_again(tmp_path: Path, scene_cache: Path) -> None:
    """``backdoorlab eval`` on an attacked face-detection run: the trigger finds the instances it reads."""
    from helpers_experiments import invoke
    from typer.testing import CliRunner

    out = execute(validate_config(config(scene_cache, attack=LSA)), tmp_path / "runs", progress=False)
    result = invoke(CliRunner(), "eval", out.run_dir)
    assert result.exit_code == 0, result.output
    assert "attack_success_rate" in result.output
