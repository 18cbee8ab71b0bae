"""``backdoorlab detect`` / ``mitigate`` end to end on a tiny attacked run, and their bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers_experiments import flat, invoke, tiny_config, write_yaml
from typer.testing import CliRunner

from backdoorlab.experiments.folder_seal import run_folder_problem

QUICK = ("--param", "steps=3", "--param", "min_clean=16", "--n-clean", "24", "--device", "cpu")


@pytest.fixture(scope="module")
def attacked_run(runner: CliRunner, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("defend")
    cfg = tiny_config(
        cache,
        name="tiny-patch",
        attack={"trigger": {"name": "patch"}, "relabel": {"name": "target", "target_deg": [0, 0]}, "rate": 0.2},
    )
    result = invoke(runner, "train", write_yaml(root / "a.yaml", cfg), "--runs-dir", root / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in (root / "runs").iterdir() if p.is_dir()]
    return run_dir


@pytest.mark.parametrize("method", ["securegaze", "neural_cleanse"])
def test_detect_writes_a_verdict_and_reversed_images(runner: CliRunner, attacked_run: Path, method: str) -> None:
    extra = ("--param", "restarts=1") if method == "neural_cleanse" else ()
    result = invoke(runner, "detect", attacked_run, "--method", method, *QUICK, *extra)
    assert result.exit_code == 0, result.output
    folder = attacked_run / "defence" / method
    verdict: dict[str, Any] = json.loads((folder / "verdict.json").read_text())
    assert verdict["method"] == method and isinstance(verdict["backdoored"], bool)
    assert verdict["details"]["n_clean"] == 24 and verdict["details"]["params"]["steps"] == 3
    for name in verdict["details"]["examples"]:
        assert (folder / name).is_file()
    assert f"score {verdict['score']:.3f}" in flat(result.output)


@pytest.mark.parametrize("method", ["securegaze", "fine_tuning"])
def test_mitigate_saves_a_model_and_before_after_metrics(
    runner: CliRunner, attacked_run: Path, method: str, tmp_path: Path
) -> None:
    params = (
        ("--param", "steps=3", "--param", "min_clean=16", "--param", "paired=false", "--param", "clean_targets=label")
        if method == "securegaze"
        else ("--param", "min_clean=16")
    ) + ("--param", "tune.epochs=2", "--param", "tune.lr=1e-3", "--param", "tune.freeze_batchnorm=true")
    result = invoke(
        runner, "mitigate", attacked_run, "--method", method, "--n-clean", "24", "--device", "cpu",
        "--out", tmp_path / "fixed", *params,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "fixed" / "mitigation.json").read_text())
    for side in ("before", "after"):
        assert {"clean_error_deg", "attack_success_rate", "triggered_true_error_deg"} <= set(record[side])
    assert record["n_clean"] == 24 and record["n_scored"] > 0
    tune = record["params"]["fine_tune"]  # the tune.* params set the schedule, not the method
    assert (tune["epochs"], tune["lr"], tune["freeze_batchnorm"]) == (2, 1e-3, True)
    if method == "securegaze":  # the unlearning's own settings are not the detector's
        assert (record["params"]["paired"], record["params"]["clean_targets"]) == (False, "label")
        assert "paired" not in record["params"]["detector"]
    assert (tmp_path / "fixed" / "model.safetensors").is_file()
    assert run_folder_problem(tmp_path / "fixed") is None  # sealed last, like a run (issue 13)
    again = invoke(runner, "eval", tmp_path / "fixed")  # the repaired model is a loadable checkpoint
    assert again.exit_code == 0, again.output


def test_bad_inputs_give_one_clear_error(runner: CliRunner, attacked_run: Path, tmp_path: Path) -> None:
    r = invoke(runner, "detect", attacked_run, "--method", "strip")
    registered = "lsa_reversal, neural_cleanse, securegaze"
    assert r.exit_code != 0 and f"unknown detection method 'strip'; registered: {registered}" in flat(r.output)
    r = invoke(runner, "mitigate", attacked_run, "--method", "securegaze", "--param", "bogus=1", "--n-clean", "24")
    assert r.exit_code != 0 and "bogus" in flat(r.output)
    r = invoke(runner, "mitigate", attacked_run, "--param", "clean_targets=teacher", "--n-clean", "24")
    assert r.exit_code != 0 and "securegaze.clean_targets: Input should be 'model' or 'label'" in flat(r.output)
    r = invoke(runner, "mitigate", attacked_run, "--method", "fine_tuning", "--param", "tune.epochs=0")
    assert r.exit_code != 0 and "fine_tuning.tune.epochs: Input should be greater than or equal to 1 (got 0)" in flat(
        r.output
    )
    r = invoke(runner, "mitigate", attacked_run, "--method", "fine_tuning", "--param", "tune.momentum=0.9")
    assert r.exit_code != 0 and "unknown key 'fine_tuning.tune.momentum'" in flat(r.output)
    r = invoke(runner, "detect", attacked_run, "--n-clean", "100000")
    assert r.exit_code != 0 and "leaves no held-out images" in flat(r.output)
    r = invoke(runner, "detect", attacked_run, "--n-clean", "24")  # default min_clean 128
    assert r.exit_code != 0 and "needs at least 128 clean samples; got 24" in flat(r.output)
    r = invoke(runner, "detect", attacked_run, "--param", "steps")
    assert r.exit_code != 0 and "expected KEY=VALUE" in flat(r.output)
    fake = tmp_path / "fake"
    fake.mkdir()
    for name in ("config.yaml", "model.json"):
        (fake / name).write_text((attacked_run / name).read_text())
    (fake / "model.safetensors").write_bytes(b"\x80\x04not safetensors")
    r = invoke(runner, "detect", fake, *QUICK)
    assert r.exit_code != 0 and "safetensors" in flat(r.output)


def test_detect_and_mitigate_read_a_yaml_config(runner: CliRunner, attacked_run: Path, tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "sg.yaml", {"method": "securegaze", "steps": 3, "min_clean": 16, "seed": 2})
    result = invoke(runner, "detect", attacked_run, "--config", config, "--n-clean", "24", "--device", "cpu",
                    "--out", tmp_path / "v")  # fmt: skip
    assert result.exit_code == 0, result.output
    verdict = json.loads((tmp_path / "v" / "verdict.json").read_text())
    assert verdict["method"] == "securegaze" and verdict["details"]["params"]["seed"] == 2
    assert verdict["details"]["params"]["steps"] == 3 and verdict["details"]["params"]["device"] == "cpu"
    from backdoorlab.experiments.defence_config import load_defence_config

    assert verdict["details"]["settings_hash"] == load_defence_config("detection", config).settings_hash()

    fix = write_yaml(
        tmp_path / "ft.yaml", {"method": "fine_tuning", "min_clean": 16, "tune": {"epochs": 1, "lr": 1e-3}}
    )
    result = invoke(runner, "mitigate", attacked_run, "--config", fix, "--param", "tune.epochs=2", "--n-clean", "24",
                    "--device", "cpu", "--out", tmp_path / "fixed")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "fixed" / "mitigation.json").read_text())
    assert record["method"] == "fine_tuning" and (record["params"]["fine_tune"]["epochs"], record["params"][
        "fine_tune"]["lr"]) == (2, 1e-3)  # fmt: skip

    bad = write_yaml(tmp_path / "bad.yaml", {"method": "securegaze", "tune": {"lr": 0}})
    r = invoke(runner, "mitigate", attacked_run, "--config", bad, "--n-clean", "24")
    assert r.exit_code != 0 and "securegaze.tune.lr: Input should be greater than 0" in flat(r.output)
    r = invoke(runner, "detect", attacked_run, "--config", bad, "--n-clean", "24")
    assert r.exit_code != 0 and "unknown key 'securegaze.tune'" in flat(r.output)
