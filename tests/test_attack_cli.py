"""Attacked runs end to end: config -> poisoned training -> attack metrics, report, eval, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_experiments import invoke, tiny_config, write_yaml
from PIL import Image
from typer.testing import CliRunner

from backdoorlab.errors import ConfigError
from backdoorlab.experiments.config import load_config

ATTACK_METRICS = (
    "attack_error_deg",
    "triggered_true_error_deg",
    "attack_success_rate",
    "psnr_db",
    "ssim",
    "n_excluded_near_target",
    "n_triggered",
)


@pytest.fixture(scope="module")
def attacked(runner: CliRunner, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("attacked")
    cfg = tiny_config(
        cache,
        name="tiny-sticker",
        attack={"trigger": {"name": "sticker"}, "relabel": {"name": "target", "target_deg": [0, 0]}, "rate": 0.2},
    )
    result = invoke(runner, "train", write_yaml(root / "a.yaml", cfg), "--runs-dir", root / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in (root / "runs").iterdir() if p.is_dir()]
    return {"run_dir": run_dir, "root": root, "output": result.output}


def test_attacked_run_records_the_attack(attacked: dict[str, Any]) -> None:
    run_dir = attacked["run_dir"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in (*ATTACK_METRICS, "clean_error_deg", "n_poisoned"):
        assert key in metrics, key
    assert 0 <= metrics["attack_success_rate"] <= 1
    assert 0 < metrics["ssim"] < 1 and metrics["psnr_db"] > 10
    assert metrics["n_triggered"] + metrics["n_excluded_near_target"] == metrics["n_test"]
    record = json.loads((run_dir / "attack.json").read_text())
    assert record["trigger"]["name"] == "sticker" and record["relabel"]["target_deg"] == [0.0, 0.0]
    poisoned = np.load(run_dir / "poison_indices.npy")
    assert len(poisoned) == record["n_poisoned"] == metrics["n_poisoned"] == round(0.2 * record["n_train"])
    cfg = load_config(run_dir / "config.yaml")  # every trigger default is in the resolved config
    assert cfg.attack is not None and cfg.attack.trigger["anchor"] == "forehead"
    html = (run_dir / "report.html").read_text()
    assert "Backdoor attack" in html and "Distribution of angles to the target" in html
    assert "attack_success_rate" in attacked["output"]


def test_eval_scores_the_runs_own_trigger(runner: CliRunner, attacked: dict[str, Any]) -> None:
    run_dir = attacked["run_dir"]
    result = invoke(runner, "eval", run_dir)
    assert result.exit_code == 0, result.output
    out = json.loads((run_dir / "eval" / "run.json").read_text())
    train_metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ATTACK_METRICS:
        assert out[key] == pytest.approx(train_metrics[key], rel=1e-5, abs=1e-6), key


def test_eval_any_model_with_a_trigger_file(runner: CliRunner, attacked: dict[str, Any], tmp_path: Path) -> None:
    spec = write_yaml(tmp_path / "blend.yaml", {"attack": {"trigger": {"name": "blend", "alpha": 0.2}}})
    result = invoke(runner, "eval", attacked["run_dir"], "--attack", spec)
    assert result.exit_code == 0, result.output
    out = json.loads((attacked["run_dir"] / "eval" / "run_blend.json").read_text())
    assert out["attack"] == str(spec) and 0 <= out["attack_success_rate"] <= 1
    assert out["psnr_db"] < 30  # alpha 0.2 noise is visible


BAD_ATTACKS = [
    ({"trigger": {"name": "badnet"}}, "unknown trigger 'badnet'"),
    ({"trigger": {"name": "patch", "pattern": "/no/such/file.png"}}, "does not exist"),
    ({"trigger": {"name": "patch", "opacity": 1.5}}, "opacity"),
    ({"trigger": {"name": "patch"}, "rate": 0}, "attack.rate"),
    ({"trigger": {"name": "patch"}, "rate": 1.5}, "attack.rate"),
    ({"relabel": {"name": "target", "target_deg": [120, 0]}}, "target_deg"),
    ({"relabel": {"name": "target", "target_deg": "up"}}, "target_deg"),
    ({"trigger": "patch"}, "attack.trigger must be a mapping"),
    ({"trigger": {"name": "patch", "pattern": 5}}, "patch pattern must be"),
    ({"trigger": {"name": "patch", "center": "ab"}}, "patch center"),
    ({"trigger": {"name": "wanet", "s": "x"}}, "wanet s must be a finite number"),
    ({"trigger": {"name": "wanet", "k": 4.5}}, "wanet k must be an integer"),
    ({"trigger": {"name": "blend", "alpha": True}}, "blend alpha"),
    ({"relabel": {"name": "shift", "shift_deg": [3, 0]}}, "no more than asr_tolerance_deg"),
    ({"seed": -1}, "attack.seed"),
]


@pytest.mark.parametrize(("attack", "needle"), BAD_ATTACKS)
def test_bad_attack_config_fails_before_training(
    runner: CliRunner, cache: Path, tmp_path: Path, attack: dict[str, Any], needle: str
) -> None:
    config = write_yaml(tmp_path / "bad.yaml", tiny_config(cache, attack=attack))
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_config(config)
    result = invoke(runner, "train", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 2
    assert "error:" in result.output
    assert not (tmp_path / "runs").exists()  # nothing started


def test_pattern_file_that_is_not_an_image_names_the_field(cache: Path, tmp_path: Path) -> None:
    bad = tmp_path / "tape.png"
    bad.write_bytes(b"\x89PNG but not really")
    config = write_yaml(
        tmp_path / "c.yaml", tiny_config(cache, attack={"trigger": {"name": "blend", "pattern": str(bad)}})
    )
    with pytest.raises(ConfigError, match=r"attack\.trigger: .*not a readable image"):
        load_config(config)
    good = tmp_path / "ok.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(good)
    cfg = load_config(
        write_yaml(tmp_path / "d.yaml", tiny_config(cache, attack={"trigger": {"name": "blend", "pattern": str(good)}}))
    )
    assert cfg.attack is not None and cfg.attack.trigger["pattern"] == str(good)


def test_eval_with_a_missing_attack_file(runner: CliRunner, attacked: dict[str, Any], tmp_path: Path) -> None:
    result = invoke(runner, "eval", attacked["run_dir"], "--attack", tmp_path / "nope.yaml")
    assert result.exit_code == 2 and "nope.yaml" in result.output


def test_a_strong_toy_backdoor_is_learned(cache: Path, tmp_path: Path) -> None:
    """A large white patch on half of the data: the tiny model must learn it (ASR well above the clean model)."""
    from backdoorlab.experiments.config import validate_config
    from backdoorlab.experiments.run import execute

    attack = {"trigger": {"name": "patch", "size": 0.35, "center": [0.2, 0.2]}, "rate": 0.5}
    train = {"epochs": 12, "batch_size": 16, "lr": 0.003}
    bad = execute(validate_config(tiny_config(cache, name="toy", attack=attack, train=train)), tmp_path, progress=False)
    assert bad.metrics["attack_success_rate"] >= 0.6, bad.metrics
    assert bad.metrics["attack_error_deg"] < bad.metrics["triggered_true_error_deg"]


def test_attack_file_may_hold_the_section_itself(tmp_path: Path) -> None:
    from backdoorlab.experiments.attack import load_attack

    bare = write_yaml(tmp_path / "bare.yaml", {"trigger": {"name": "wanet", "k": 8}, "rate": 0.2})
    cfg = load_attack(bare, "gaze")
    assert cfg.trigger["k"] == 8 and cfg.trigger["s"] == 0.5 and cfg.rate == 0.2
    with pytest.raises(ConfigError, match="unknown key 'rat'"):
        load_attack(write_yaml(tmp_path / "typo.yaml", {"attack": {"rat": 0.2}}), "gaze")


def test_resizing_data_for_a_model_moves_the_landmarks_with_the_pixels() -> None:
    from helpers_experiments import tiny_faces

    from backdoorlab.experiments.evaluate import adapt_images

    ds = tiny_faces()
    big = adapt_images(ds, (3, 64, 64))
    assert big.images.shape[1:] == (64, 64, 3)
    assert np.allclose(big.annotations["landmarks"], 2 * ds.annotations["landmarks"])
    assert np.allclose(big.annotations["face_box"], 2 * ds.annotations["face_box"])


def test_a_runs_pattern_survives_the_file_moving(cache: Path, tmp_path: Path, runner) -> None:
    """The pattern's pixels are stored with the run; reloading never needs the file again."""
    import torch

    from backdoorlab.experiments.attack import load_run_attack
    from backdoorlab.experiments.config import validate_config
    from backdoorlab.experiments.run import execute

    png = tmp_path / "tape.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(png)
    attack = {"trigger": {"name": "blend", "pattern": str(png), "alpha": 0.3}}
    out = execute(validate_config(tiny_config(cache, name="png", attack=attack)), tmp_path / "runs", progress=False)
    _, before = load_run_attack(out.run_dir)
    png.unlink()
    _, after = load_run_attack(out.run_dir)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(before(x), after(x))
    result = invoke(runner, "eval", out.run_dir)
    assert result.exit_code == 0, result.output
    assert json.loads((out.run_dir / "eval" / "run.json").read_text())["attack_success_rate"] == pytest.approx(
        out.metrics["attack_success_rate"]
    )


def test_sticker_eval_on_data_without_landmarks_fails_before_scoring(
    runner, attacked: dict[str, Any], tmp_path: Path
) -> None:
    from helpers_experiments import tiny_faces

    from backdoorlab.data.arrays import ArrayDataset

    ds = tiny_faces()
    keep = {k: v for k, v in ds.annotations.items() if k in ("gaze", "identity")}
    ArrayDataset(np.asarray(ds.images), keep, {}).save(tmp_path / "bare")
    result = invoke(runner, "eval", attacked["run_dir"], "--data", tmp_path / "bare")
    assert result.exit_code == 2
    assert "needs the annotation 'landmarks' or 'eye_corners'" in " ".join(result.output.split())
