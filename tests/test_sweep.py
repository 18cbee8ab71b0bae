"""Sweeps: expansion, validation before work starts, resumption, failure isolation, engines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers_experiments import invoke, tiny_config, write_yaml

from backdoorlab.errors import ConfigError
from backdoorlab.experiments.store import ResultsStore
from backdoorlab.experiments.sweep import expand, load_sweep, run_sweep


def sweep_file(tmp_path: Path, cache: Path, **spec: Any) -> Path:
    base = write_yaml(tmp_path / "base.yaml", tiny_config(cache))
    return write_yaml(tmp_path / "sweep.yaml", {"base": base.name, "name": "t", **spec})


def test_grid_and_list_expand_to_validated_runs_with_stable_names(tmp_path: Path, cache: Path) -> None:
    path = sweep_file(
        tmp_path,
        cache,
        grid={"seed": [0, 1], "train.lr": [0.001, 0.003]},
        runs=[{"seed": 9}, {"seed": 0, "train.lr": 0.001}],
    )
    spec, base = load_sweep(path)
    planned = expand(spec, base)
    assert len(planned) == 5  # 2 x 2 grid + 2 listed, one of which repeats a grid point
    assert {r.config.seed for r in planned} == {0, 1, 9}
    again = expand(*load_sweep(path))
    assert [r.config_hash for r in planned] == [r.config_hash for r in again]
    assert all(r.config.name.startswith("t-") for r in planned)
    assert len({r.config.name for r in planned}) == 5


def test_bad_points_fail_before_anything_runs(tmp_path: Path, cache: Path) -> None:
    path = sweep_file(tmp_path, cache, grid={"attack.trigger": [{"name": "patch"}, {"name": "badnet"}]})
    with pytest.raises(ConfigError, match="unknown trigger 'badnet'"):
        expand(*load_sweep(path))
    with pytest.raises(ConfigError, match="unknown key 'gird'"):
        load_sweep(write_yaml(tmp_path / "typo.yaml", {"gird": {}}))
    with pytest.raises(ConfigError, match="base config"):
        load_sweep(write_yaml(tmp_path / "nobase.yaml", {"base": "missing.yaml"}))


def test_resume_skips_complete_runs_and_failures_do_not_stop_the_sweep(tmp_path: Path, cache: Path) -> None:
    # batch_size 4096 > the training set: passes validation, fails when the run starts
    path = sweep_file(tmp_path, cache, grid={"seed": [0, 1], "train.batch_size": [32, 4096]})
    planned = expand(*load_sweep(path))
    runs = tmp_path / "runs"
    first = run_sweep(planned, runs)
    assert len(first.completed) == 2 and len(first.failed) == 2
    assert all("batch_size" in err for _, err in first.failed)
    rows = ResultsStore(runs / "results.sqlite").list()
    assert sorted(r["status"] for r in rows) == ["complete", "complete", "failed", "failed"]
    second = run_sweep(planned, runs)
    assert len(second.skipped) == 2 and second.completed == [] and len(second.failed) == 2
    assert len([p for p in runs.iterdir() if p.is_dir()]) == 6  # the failed ones were retried


def test_local_engine_with_worker_processes(tmp_path: Path, cache: Path) -> None:
    path = sweep_file(tmp_path, cache, grid={"seed": [0, 1]})
    out = run_sweep(expand(*load_sweep(path)), tmp_path / "runs", engine="local", workers=2)
    assert len(out.completed) == 2 and out.failed == []
    assert all(r["status"] == "complete" for r in ResultsStore(tmp_path / "runs" / "results.sqlite").list())


def test_ray_engine_on_a_local_two_cpu_ray(tmp_path: Path, cache: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        path = sweep_file(tmp_path, cache, grid={"seed": [0, 1], "train.batch_size": [32, 4096]})
        planned = expand(*load_sweep(path))
        out = run_sweep(planned, tmp_path / "runs", engine="ray")
        assert len(out.completed) == 2 and len(out.failed) == 2
        again = run_sweep(planned, tmp_path / "runs", engine="ray")
        assert len(again.skipped) == 2 and again.completed == []
    finally:
        ray.shutdown()


def test_sweep_cli_dry_run_and_run(runner, tmp_path: Path, cache: Path) -> None:
    path = sweep_file(tmp_path, cache, grid={"seed": [0, 1]})
    runs = tmp_path / "runs"
    dry = invoke(runner, "sweep", path, "--runs-dir", runs, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.output.count("to run") == 2 and not runs.exists()
    result = invoke(runner, "sweep", path, "--runs-dir", runs)
    assert result.exit_code == 0, result.output
    assert "2 completed now" in result.output
    again = invoke(runner, "sweep", path, "--runs-dir", runs)
    assert "2 already complete, 0 completed now" in again.output
    rows = ResultsStore(runs / "results.sqlite").list()
    assert {json.loads(json.dumps(r["config"]))["seed"] for r in rows} == {0, 1}


def test_sweep_cli_bad_engine_and_failed_runs(runner, tmp_path: Path, cache: Path) -> None:
    path = sweep_file(tmp_path, cache, grid={"train.batch_size": [4096]})
    bad = invoke(runner, "sweep", path, "--engine", "slurm")
    assert bad.exit_code == 2 and "--engine" in bad.output
    failed = invoke(runner, "sweep", path, "--runs-dir", tmp_path / "runs")
    assert failed.exit_code == 1 and "1 failed" in failed.output
