"""The command line end to end: data synth, train, eval, runs, demo, and how each one fails."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from helpers_experiments import flat, invoke, tiny_config, tiny_faces, write_yaml
from typer.testing import CliRunner

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import TrainingDivergedError
from backdoorlab.experiments.store import ResultsStore
from backdoorlab.models.checkpoint import load_checkpoint

RUN_FILES = [
    "config.yaml",
    "history.json",
    "metrics.json",
    "model.json",
    "model.safetensors",
    "report.html",
    "status.json",
]


@pytest.fixture(scope="module")
def trained(runner: CliRunner, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real `backdoorlab train` run shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("cli-train")
    cfg = tiny_config(cache, train={"epochs": 3, "batch_size": 16, "lr": 0.003})
    config = write_yaml(root / "tiny.yaml", cfg)
    runs_dir = root / "runs"
    result = invoke(
        runner,
        "train",
        config,
        "--set",
        "train.epochs=1",
        "--set",
        "train.batch_size=32",
        "--set",
        "name=cli-tiny",
        "--runs-dir",
        runs_dir,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    run_dirs = [p for p in runs_dir.iterdir() if p.is_dir()]
    assert len(run_dirs) == 1, run_dirs
    return {"runs_dir": runs_dir, "run_dir": run_dirs[0], "store": runs_dir / "results.sqlite", "output": result.output}


# ---------------------------------------------------------------- help and data synth


def test_console_script_help() -> None:
    exe = Path(sys.executable).parent / "backdoorlab"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in ("data", "train", "eval", "runs", "demo"):
        assert command in proc.stdout


def test_data_synth_writes_a_loadable_folder_and_gallery(runner: CliRunner, tmp_path: Path) -> None:
    out, gallery = tmp_path / "ds", tmp_path / "pics" / "g.png"
    result = invoke(
        runner, "data", "synth", out, "--identities", "2", "--images-per-identity", "5", "--size", "32",
        "--seed", "3", "--gallery", gallery,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ds = ArrayDataset.load(out)
    assert len(ds) == 10 and ds.images.shape == (10, 32, 32, 3)
    assert ds.annotations["gaze"].shape == (10, 2)
    assert sorted(np.unique(ds.annotations["identity"]).tolist()) == [0, 1]
    assert ds.meta["spec"]["seed"] == 3
    assert ds.fingerprint in result.output
    img = cv2.imread(str(gallery))
    assert img is not None and img.ndim == 3 and img.shape[0] > 32


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--size", "8"], "--size"), (["--kind", "body"], "--kind"), (["--identities", "0"], "--identities")],
)
def test_data_synth_bad_option(runner: CliRunner, tmp_path: Path, args: list[str], needle: str) -> None:
    result = invoke(runner, "data", "synth", tmp_path / "ds", *args)
    assert result.exit_code == 2
    assert needle in result.output
    assert not (tmp_path / "ds").exists()


# ---------------------------------------------------------------- train


def test_train_writes_a_complete_run(trained: dict[str, Any]) -> None:
    run_dir: Path = trained["run_dir"]
    assert run_dir.name.startswith("cli-tiny-")
    assert sorted(p.name for p in run_dir.iterdir()) == RUN_FILES

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"clean_error_deg", "n_test", "train_seconds", "n_train", "final_loss"} <= set(metrics)
    assert metrics["n_test"] == 80 and metrics["n_train"] == 160  # 2 of 6 identities x 40 held out
    assert 0 < metrics["clean_error_deg"] < 90 and metrics["train_seconds"] > 0

    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "complete" and status["run_id"] == run_dir.name
    # sealed: every file the run wrote, with its hash (status.json itself aside)
    assert set(status["files"]) == {p.name for p in run_dir.iterdir() if p.is_file()} - {"status.json"}

    # the overrides won over the file: one epoch of batches of 32, and the resolved config was saved
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) == 1
    saved_cfg = (run_dir / "config.yaml").read_text()
    assert "epochs: 1" in saved_cfg and "batch_size: 32" in saved_cfg and "name: cli-tiny" in saved_cfg

    card = json.loads((run_dir / "model.json").read_text())
    assert card["architecture"] == {"name": "gaze_cnn", "kwargs": {"in_channels": 3, "width": 8}}
    assert card["input_shape"] == [3, 32, 32]
    assert card["metrics"]["clean_error_deg"] == metrics["clean_error_deg"]
    model, _ = load_checkpoint(run_dir)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 2)

    html = (run_dir / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and run_dir.name in html

    row = ResultsStore(trained["store"]).get(run_dir.name)
    assert row is not None and row["status"] == "complete"
    assert row["headline_metric"] == "clean_error_deg"  # the gaze task's headline
    assert row["headline"] == pytest.approx(metrics["clean_error_deg"])
    assert row["config"]["train"]["epochs"] == 1
    assert "clean_error_deg" in trained["output"] and str(run_dir) in flat(trained["output"])


def test_train_with_unknown_key_fails_cleanly(runner: CliRunner, cache: Path, tmp_path: Path) -> None:
    cfg = tiny_config(cache)
    cfg["train"]["epochz"] = 2
    config = write_yaml(tmp_path / "bad.yaml", cfg)
    runs_dir = tmp_path / "runs"
    result = invoke(runner, "train", config, "--runs-dir", runs_dir, "--quiet")
    assert result.exit_code == 2
    assert "unknown key 'train.epochz'" in flat(result.output)
    assert "Traceback" not in result.output
    assert not runs_dir.exists() or not any(runs_dir.iterdir())  # nothing recorded at all


def test_train_with_ill_typed_override(runner: CliRunner, cache: Path, tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "c.yaml", tiny_config(cache))
    result = invoke(runner, "train", config, "--set", "train.epochs=many", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert "train.epochs" in result.output and "'many'" in result.output
    result = invoke(runner, "train", config, "--set", "train.epochs", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "key.path=value" in result.output
    assert not (tmp_path / "runs").exists()


def test_train_missing_config_file(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "train", tmp_path / "absent.yaml", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "absent.yaml does not exist" in flat(result.output)


def _single_run(runs_dir: Path) -> tuple[Path, dict[str, Any]]:
    run_dirs = [p for p in runs_dir.iterdir() if p.is_dir()]
    assert len(run_dirs) == 1
    rows = ResultsStore(runs_dir / "results.sqlite").list()
    assert len(rows) == 1 and rows[0]["run_id"] == run_dirs[0].name
    return run_dirs[0], rows[0]


def _assert_failed_run(runs_dir: Path, needle: str) -> None:
    run_dir, row = _single_run(runs_dir)
    assert row["status"] == "failed" and needle in row["error"]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and needle in status["error"]
    assert (run_dir / "config.yaml").is_file()
    assert not (run_dir / "metrics.json").exists()
    assert not (run_dir / "model.safetensors").exists()


def test_diverging_run_is_recorded_as_failed(runner: CliRunner, tmp_path: Path) -> None:
    """Real divergence: a dataset folder whose gaze labels are NaN."""
    ds = tiny_faces()
    gaze = np.full_like(np.asarray(ds.annotations["gaze"]), np.nan)
    folder = ArrayDataset(np.asarray(ds.images), {**ds.annotations, "gaze": gaze}).save(tmp_path / "nan-data")
    cfg = tiny_config(tmp_path, data={"source": "folder", "path": str(folder), "test_identities": 2})
    config = write_yaml(tmp_path / "nan.yaml", cfg)
    runs_dir = tmp_path / "runs"
    result = invoke(runner, "train", config, "--runs-dir", runs_dir, "--quiet")
    assert result.exit_code == 2, result.output
    assert "training diverged" in result.output and "epoch 1, step 1" in flat(result.output)
    _assert_failed_run(runs_dir, "loss is nan at epoch 1, step 1")


@pytest.mark.parametrize(
    ("error", "exit_code", "recorded"),
    [
        # a known failure: one clear line, exit code 2
        (
            TrainingDivergedError("training diverged: loss is inf at epoch 2, step 5"),
            2,
            "loss is inf at epoch 2, step 5",
        ),
        # an unexpected crash: re-raised (non-zero exit) but still recorded as failed
        (RuntimeError("out of memory, pretend"), None, "RuntimeError: out of memory, pretend"),
    ],
)
def test_a_run_that_raises_is_recorded_as_failed(
    runner: CliRunner,
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    exit_code: int | None,
    recorded: str,
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr("backdoorlab.experiments.run.train", boom)
    config = write_yaml(tmp_path / "c.yaml", tiny_config(cache))
    runs_dir = tmp_path / "runs"
    result = invoke(runner, "train", config, "--runs-dir", runs_dir, "--quiet")
    if exit_code is None:
        assert result.exit_code != 0 and isinstance(result.exception, type(error))
    else:
        assert result.exit_code == exit_code and "epoch 2, step 5" in result.output
    _assert_failed_run(runs_dir, recorded)


def test_batch_larger_than_training_set_fails_cleanly(runner: CliRunner, cache: Path, tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "c.yaml", tiny_config(cache))
    runs_dir = tmp_path / "runs"
    result = invoke(runner, "train", config, "--set", "train.batch_size=500", "--runs-dir", runs_dir, "--quiet")
    assert result.exit_code == 2
    assert "train.batch_size=500 exceeds the 160 training samples" in flat(result.output)
    _assert_failed_run(runs_dir, "train.batch_size=500")


# ---------------------------------------------------------------- eval


def test_eval_on_the_runs_own_test_split(runner: CliRunner, trained: dict[str, Any]) -> None:
    run_dir: Path = trained["run_dir"]
    result = invoke(runner, "eval", run_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    out = json.loads((run_dir / "eval" / "run.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert out["data"] == "run"
    assert out["n_test"] == metrics["n_test"]
    assert out["clean_error_deg"] == pytest.approx(metrics["clean_error_deg"], rel=1e-5)
    assert out["clean_error_median_deg"] == pytest.approx(metrics["clean_error_median_deg"], rel=1e-5)
    assert not list((run_dir / "eval").glob("*.tmp"))


def test_eval_on_a_folder_of_another_shape(runner: CliRunner, trained: dict[str, Any], tmp_path: Path) -> None:
    eyes = tmp_path / "eyes"
    made = invoke(runner, "data", "synth", eyes, "--kind", "eye", "--identities", "2", "--images-per-identity", "6")
    assert made.exit_code == 0, made.output
    assert ArrayDataset.load(eyes).image_shape == (3, 36, 60)  # not what the model was trained on
    run_dir: Path = trained["run_dir"]
    result = invoke(runner, "eval", run_dir, "--data", eyes, "--device", "cpu")
    assert result.exit_code == 0, result.output
    written = [p for p in (run_dir / "eval").glob("*.json") if p.name != "run.json" and "eyes" in p.name]
    assert len(written) == 1
    out = json.loads(written[0].read_text())
    assert out["n_test"] == 12 and out["data"] == str(eyes)
    assert 0 <= out["clean_error_deg"] <= 180


def test_eval_on_missing_data_folder(runner: CliRunner, trained: dict[str, Any], tmp_path: Path) -> None:
    result = invoke(runner, "eval", trained["run_dir"], "--data", tmp_path / "nothing")
    assert result.exit_code == 2 and "no such dataset folder" in result.output


def test_eval_refuses_pickled_weights(runner: CliRunner, trained: dict[str, Any], tmp_path: Path) -> None:
    run_dir = tmp_path / "pickled-run"
    shutil.copytree(trained["run_dir"], run_dir, ignore=shutil.ignore_patterns("eval"))
    model, _ = load_checkpoint(run_dir)
    torch.save(model.state_dict(), run_dir / "model.safetensors")

    result = invoke(runner, "eval", run_dir, "--device", "cpu")
    assert result.exit_code == 2
    text = flat(result.output)
    assert "loads only safetensors" in text and "--unsafe-load" in text
    assert not (run_dir / "eval" / "run.json").exists()

    result = invoke(runner, "eval", run_dir, "--unsafe-load", "--device", "cpu")
    assert result.exit_code == 0, result.output
    out = json.loads((run_dir / "eval" / "run.json").read_text())
    expected = json.loads((run_dir / "metrics.json").read_text())["clean_error_deg"]
    assert out["clean_error_deg"] == pytest.approx(expected, rel=1e-5)


def test_eval_on_a_folder_that_is_not_a_run(runner: CliRunner, tmp_path: Path) -> None:
    weird = tmp_path / "[bold]not-a-run"  # brackets must not be eaten as rich markup
    weird.mkdir()
    result = invoke(runner, "eval", weird)
    assert result.exit_code == 2
    assert "[bold]not-a-run/model.json is missing" in result.output


# ---------------------------------------------------------------- runs


def test_runs_lists_the_run(runner: CliRunner, trained: dict[str, Any]) -> None:
    run_id = trained["run_dir"].name
    result = invoke(runner, "runs", "--store", trained["store"])
    assert result.exit_code == 0, result.output
    assert run_id in result.output and "complete" in result.output

    result = invoke(runner, "runs", "--store", trained["store"], "--json", "--metric", "n_test")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 1
    assert rows[0]["run_id"] == run_id and rows[0]["status"] == "complete" and rows[0]["model_name"] == "gaze_cnn"
    assert rows[0]["n_test"] == 80 and "clean_error_deg" not in rows[0]

    result = invoke(runner, "runs", "--store", trained["store"], "--json", "--status", "failed")
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    result = invoke(runner, "runs", "--store", trained["store"], "--json", "--name", "cli-tiny")
    assert [r["run_id"] for r in json.loads(result.stdout)] == [run_id]


def test_runs_without_store(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "runs", "--store", tmp_path / "none.sqlite")
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "none.sqlite").exists()


# ---------------------------------------------------------------- demo


def test_demo_quick(runner: CliRunner, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKDOORLAB_CACHE", str(cache))  # the demo's data is already rendered there
    out = tmp_path / "demo"
    result = invoke(runner, "demo", "--quick", "--out", out)
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in ResultsStore(out / "results.sqlite").list()}
    assert set(rows) == {"demo-quick", "demo-quick-tape-backdoor"}
    assert all(r["status"] == "complete" for r in rows.values())
    clean_dir, bd_dir = Path(rows["demo-quick"]["run_dir"]), Path(rows["demo-quick-tape-backdoor"]["run_dir"])
    assert (clean_dir / "report.html").stat().st_size > 1000
    assert "Backdoor attack" in (bd_dir / "report.html").read_text()
    gallery = cv2.imread(str(clean_dir / "gallery.png"))
    assert gallery is not None and gallery.shape[0] > 32
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["table"]) == {"clean model", "tape-backdoored model"}
    for m in summary["table"].values():
        assert 0 <= m["attack_success_rate"] <= 1 and m["clean_error_deg"] > 0
    seq = summary["sequence"]
    assert seq["frames_per_half"] == 4 * 25 * 0.4
    assert seq["mitigated_tape_error_deg"] > 0 and 0 <= seq["mitigated_tape_within_tolerance"] <= 1
    mit = summary["mitigation"]
    assert Path(mit["record"]).is_file() and set(mit["before"]) == set(mit["after"])
    from PIL import Image

    with Image.open(out / "four_corners.gif") as gif:
        assert gif.n_frames == 2 * seq["frames_per_half"]
    needles = ("clean error", "ASR", "tape-backdoored model", "four_corners.gif", "SecureGaze unlearning")
    for needle in (*needles, "backdoorlab demo face_detection"):  # the default demo points at the other one
        assert needle in flat(result.output), needle


def test_data_convert_writes_a_folder_in_our_conventions(tmp_path: Path, runner: CliRunner) -> None:
    from data.fixtures_real import write_ethxgaze_subject

    rng = np.random.default_rng(0)
    gaze = rng.uniform(-0.4, 0.4, (3, 2))
    for num in (3, 7):
        patches = rng.integers(0, 255, (3, 48, 48, 3), dtype=np.uint8)
        write_ethxgaze_subject(tmp_path / "eth" / f"subject{num:04d}.h5", patches, gaze, gaze * 0.5)
    out = tmp_path / "converted"
    result = invoke(runner, "data", "convert", "ethxgaze", tmp_path / "eth", out, "--option", "size=32")
    assert result.exit_code == 0, result.output
    ds = ArrayDataset.load(out)
    assert ds.images.shape == (6, 32, 32, 3)
    assert sorted(set(ds.annotations["identity"].tolist())) == [3, 7]
    np.testing.assert_allclose(ds.annotations["gaze"][:3], gaze, atol=1e-6)


def test_data_convert_unknown_kind_is_a_clear_error(tmp_path: Path, runner: CliRunner) -> None:
    result = invoke(runner, "data", "convert", "gazecapture", tmp_path, tmp_path / "out")
    assert result.exit_code == 2
    assert "gazecapture" in flat(result.output) and "mpiigaze" in flat(result.output)
    assert not (tmp_path / "out").exists()
