"""Sweeps: expansion, validation before work starts, resumption, failure isolation, engines,
progress events (counts, ETA) and the view of a sweep from the store."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from helpers_experiments import flat, invoke, tiny_config, write_yaml

from backdoorlab.errors import ConfigError
from backdoorlab.experiments.store import ResultsStore
from backdoorlab.experiments.sweep import PlannedRun, expand, load_sweep, run_sweep
from backdoorlab.experiments.sweep_progress import (
    SweepCounts,
    SweepEvent,
    estimate_eta,
    format_duration,
    sweep_status,
)
from backdoorlab.registry import TASKS


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


def check_events(events: list[SweepEvent], planned: list[PlannedRun], skipped: int, workers: int) -> None:
    """The event stream of one sweep is consistent, whatever the engine.

    One ``planned`` event first; then every run to do starts exactly once before it
    ends exactly once; ``done`` counts the ends; ``running`` is what started and has not
    ended, never more than the workers (it would be all runs if "started" were sent at
    submission); a finished run carries its run id, headline and seconds, a failed one
    its error.
    """
    first, rest = events[0], events[1:]
    to_run = len(planned) - skipped
    assert first.kind == "planned" and first.counts == SweepCounts(len(planned), skipped, to_run)
    assert all(e.kind != "planned" for e in rest)
    running: set[str] = set()
    ended: set[str] = set()
    for n, e in enumerate(rest):
        if e.kind == "started":
            assert e.name not in running | ended and e.worker
            running.add(e.name)
        else:
            assert e.name in running, f"{e.name} ended before it started"
            running.remove(e.name)
            ended.add(e.name)
            assert (e.run_id and e.headline and e.seconds is not None) if e.kind == "finished" else e.error
        assert e.counts.done == len(ended) and e.counts.running == len(running) <= workers, (n, e)
        assert e.counts.failed == sum(x.kind == "failed" for x in rest[: n + 1])
    assert len(ended) == to_run and ended <= {r.config.name for r in planned}
    last = events[-1].counts
    assert last.done == to_run and last.running == 0 and last.waiting == 0


def test_resume_skips_complete_runs_and_failures_do_not_stop_the_sweep(tmp_path: Path, cache: Path) -> None:
    # batch_size 4096 > the training set: passes validation, fails when the run starts
    path = sweep_file(tmp_path, cache, grid={"seed": [0, 1], "train.batch_size": [32, 4096]})
    planned = expand(*load_sweep(path))
    runs = tmp_path / "runs"
    events: list[SweepEvent] = []
    ended: list[tuple[str, str, str]] = []
    first = run_sweep(planned, runs, on_event=events.append, on_done=lambda *a: ended.append(a))
    assert len(first.completed) == 2 and len(first.failed) == 2
    assert all("batch_size" in err for _, err in first.failed)
    rows = ResultsStore(runs / "results.sqlite").list()
    assert sorted(r["status"] for r in rows) == ["complete", "complete", "failed", "failed"]

    check_events(events, planned, skipped=0, workers=1)
    assert [e.kind for e in events[1::2]] == ["started"] * 4  # in process: one run at a time
    assert all(e.worker == "this process" for e in events[1::2])
    finished = [e for e in events if e.kind == "finished"]
    assert [e.run_id for e in finished] == first.completed
    metric, store = TASKS.get("gaze").headline_metric, ResultsStore(runs / "results.sqlite")
    assert all(e.headline == (metric, store.get(e.run_id)["metrics"][metric]) for e in finished)
    failed = [e for e in events if e.kind == "failed"]
    assert all("batch_size" in e.error and e.error.splitlines()[0] in e.line() for e in failed)
    assert events[-1].eta_seconds == 0.0 and all(e.eta_seconds is None for e in events[:2])
    assert [a[0] for a in ended] == [e.kind.replace("finished", "complete") for e in events if e.kind != "started"][1:]

    events.clear()
    second = run_sweep(planned, runs, on_event=events.append)
    assert len(second.skipped) == 2 and second.completed == [] and len(second.failed) == 2
    assert len([p for p in runs.iterdir() if p.is_dir()]) == 6  # the failed ones were retried
    check_events(events, planned, skipped=2, workers=1)
    assert events[0].line() == "sweep: 4 planned, 2 already complete, 2 to run"
    assert [e.kind for e in events[1:]] == ["started", "failed"] * 2


def test_local_engine_with_worker_processes(tmp_path: Path, cache: Path) -> None:
    path = sweep_file(tmp_path, cache, grid={"seed": [0, 1], "train.batch_size": [32, 4096]})
    planned = expand(*load_sweep(path))
    events: list[SweepEvent] = []
    out = run_sweep(planned, tmp_path / "runs", engine="local", workers=2, on_event=events.append)
    assert len(out.completed) == 2 and len(out.failed) == 2
    assert sorted(r["status"] for r in ResultsStore(tmp_path / "runs" / "results.sqlite").list()) == [
        "complete", "complete", "failed", "failed",
    ]  # fmt: skip
    check_events(events, planned, skipped=0, workers=2)
    workers = {e.worker for e in events if e.kind == "started"}
    assert all(w.startswith("pid ") and w != f"pid {os.getpid()}" for w in workers)
    assert len(workers) == 4  # a fresh process per run: nothing one run leaves grows the next (memory)


def test_ray_engine_on_a_local_two_cpu_ray(tmp_path: Path, cache: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        path = sweep_file(tmp_path, cache, grid={"seed": [0, 1], "train.batch_size": [32, 4096]})
        planned = expand(*load_sweep(path))
        events: list[SweepEvent] = []
        out = run_sweep(planned, tmp_path / "runs", engine="ray", on_event=events.append)
        assert len(out.completed) == 2 and len(out.failed) == 2
        check_events(events, planned, skipped=0, workers=2)  # 2 CPUs, 1 per run
        assert len({e.worker for e in events if e.kind == "started"}) == 4  # a fresh worker per run
        again = run_sweep(planned, tmp_path / "runs", engine="ray")
        assert len(again.skipped) == 2 and again.completed == []
    finally:
        ray.shutdown()


def test_sweep_cli_dry_run_and_run(runner, tmp_path: Path, cache: Path) -> None:
    path = sweep_file(tmp_path, cache, grid={"seed": [0, 1]})
    runs = tmp_path / "runs"
    dry = invoke(runner, "sweep", path, "--runs-dir", runs, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "2 planned, 2 to run" in flat(dry.output) and not runs.exists()
    assert all(f"{r.config.name} │ to run" in dry.output for r in expand(*load_sweep(path)))
    result = invoke(runner, "sweep", path, "--runs-dir", runs)
    assert result.exit_code == 0, result.output
    assert "2 completed now" in result.output
    lines = result.output.splitlines()
    assert lines[0] == "sweep: 2 planned, 0 already complete, 2 to run"
    assert [line.split()[0] for line in lines[1:5]] == ["started", "finished", "started", "finished"]
    assert lines[4].endswith("[2/2 done, 0 running]") and "ETA" in lines[3]
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
    line = next(line for line in failed.output.splitlines() if line.startswith("failed "))
    assert line.endswith(": train.batch_size=4096 exceeds the 160 training samples  [1/1 done (1 failed), 0 running]")


# ---------------------------------------------------------------- progress: ETA, lines


def test_eta_schedules_the_waiting_runs_on_the_first_free_worker() -> None:
    assert estimate_eta([], [5.0], 3, 2) is None  # nothing finished yet: nothing to go by
    assert estimate_eta([], [], 0, 2) == 0.0  # nothing left
    # mean 10 s; one run 4 s in (ends in 6 s), one idle worker: the two waiting runs end at 10 and 16
    assert estimate_eta([8.0, 12.0], [4.0], 2, 2) == pytest.approx(16.0)
    assert estimate_eta([10.0], [25.0], 0, 1) == 0.0  # overdue: expected any moment, never negative
    assert estimate_eta([10.0], [], 5, 1) == pytest.approx(50.0)
    assert estimate_eta([10.0], [], 5, 8) == pytest.approx(10.0)  # more workers than runs


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "?"), (0.4, "0s"), (59.4, "59s"), (61, "1m01s"), (3599, "59m59s"), (2 * 3600 + 7 * 60 + 30, "2h07m")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_event_lines() -> None:
    c = SweepCounts(planned=12, skipped=4, to_run=8, done=3, failed=1, running=2)
    assert str(c) == "[3/8 done (1 failed), 2 running]" and c.waiting == 3
    started = SweepEvent("started", c, "zoo-1a2b3c4d", worker="pid 42", eta_seconds=125)
    assert started.line() == "started  zoo-1a2b3c4d on pid 42  [3/8 done (1 failed), 2 running]  ETA 2m05s"
    done = SweepEvent("finished", c, "zoo-1a", "zoo-1a-2024-abc", headline=("err", 1.234567), seconds=65)
    assert done.line() == "finished zoo-1a-2024-abc  err=1.235  1m05s  [3/8 done (1 failed), 2 running]"
    failed = SweepEvent("failed", c, "zoo-1a", error="RuntimeError: boom\nTraceback ...", seconds=2)
    assert failed.line() == "failed   zoo-1a after 2s: RuntimeError: boom  [3/8 done (1 failed), 2 running]"
    end = SweepCounts(planned=12, skipped=4, to_run=8, done=8)
    assert "ETA" not in SweepEvent("finished", end, "z", "z-1", eta_seconds=0.0).line()


# ---------------------------------------------------------------- the view of a sweep from the store


def fabricate(store: ResultsStore, run: PlannedRun, suffix: str, status: str, metrics: dict[str, Any] | None = None,
              error: str = "") -> str:  # fmt: skip
    """A store row for a planned point, as ``execute`` would leave it, without training."""
    run_id = f"{run.config.name}-{suffix}"
    cfg = run.config
    store.start(run_id, cfg.name, cfg.task, run.config_hash, cfg.model_dump(mode="json"), "/nowhere", "m", "0")
    if status == "complete":
        store.complete(run_id, metrics or {}, "fp")
    elif status == "failed":
        store.fail(run_id, error)
    return run_id


@pytest.fixture
def half_done_sweep(tmp_path: Path, cache: Path) -> tuple[Path, Path, list[PlannedRun]]:
    """A sweep of 4 points: complete (after a failed try), failed, running (after a failed try), to run."""
    path = sweep_file(tmp_path, cache, grid={"seed": [0, 1, 2, 3]})
    planned = expand(*load_sweep(path))
    db_path = tmp_path / "runs" / "results.sqlite"
    store = ResultsStore(db_path)
    metric = TASKS.get(planned[0].config.task).headline_metric
    fabricate(store, planned[0], "a", "failed", error="old failure")
    fabricate(store, planned[0], "b", "complete", {metric: 12.5})
    fabricate(store, planned[1], "a", "failed", error="RuntimeError: boom\nsecond line")
    fabricate(store, planned[2], "a", "failed", error="old failure")
    fabricate(store, planned[2], "b", "running")
    return path, db_path, planned


def test_sweep_status_from_the_store(half_done_sweep: tuple[Path, Path, list[PlannedRun]]) -> None:
    _, db_path, planned = half_done_sweep
    st = sweep_status(planned, ResultsStore(db_path), now=time.time() + 30)
    assert [p.state for p in st.points] == ["complete", "failed", "running", "to run"]
    assert [p.run_id for p in st.points] == [f"{planned[0].config.name}-b", f"{planned[1].config.name}-a",
                                             f"{planned[2].config.name}-b", ""]  # fmt: skip
    assert st.points[0].headline == (TASKS.get("gaze").headline_metric, 12.5)
    assert st.points[1].error.startswith("RuntimeError: boom")
    assert st.points[2].seconds == pytest.approx(30, abs=5)  # elapsed, still running
    assert st.active and st.totals().startswith("4 planned, 1 complete, 1 running, 1 failed, 1 to run; ETA ")
    nothing = sweep_status(planned, None)
    assert [p.state for p in nothing.points] == ["to run"] * 4 and nothing.eta_seconds is None


def test_runs_sweep_view(runner, half_done_sweep: tuple[Path, Path, list[PlannedRun]]) -> None:
    path, db_path, planned = half_done_sweep
    result = invoke(runner, "runs", "--sweep", path, "--store", db_path)
    assert result.exit_code == 0, result.output
    lines = {r.config.name: next(line for line in result.output.splitlines() if r.config.name in line) for r in planned}
    assert "complete" in lines[planned[0].config.name] and "=12.5" in lines[planned[0].config.name]
    assert "failed: RuntimeError: boom" in lines[planned[1].config.name] and "second line" not in result.output
    assert "running" in lines[planned[2].config.name] and "to run" in lines[planned[3].config.name]
    assert "4 planned, 1 complete, 1 running, 1 failed, 1 to run; ETA" in flat(result.output)

    as_json = invoke(runner, "runs", "--sweep", path, "--store", db_path, "--json", "--status", "failed")
    assert as_json.exit_code == 0, as_json.output
    points = json.loads(as_json.stdout)["points"]
    assert [(p["name"], p["state"]) for p in points] == [(planned[1].config.name, "failed")]

    bad = invoke(runner, "runs", "--store", db_path, "--watch", "1")
    assert bad.exit_code == 2 and "--sweep" in bad.output
    bad = invoke(runner, "runs", "--sweep", path, "--store", db_path, "--name", "t-")
    assert bad.exit_code == 2 and "--name" in bad.output


def test_runs_sweep_watch_refreshes_until_nothing_is_left(
    runner, half_done_sweep: tuple[Path, Path, list[PlannedRun]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, db_path, planned = half_done_sweep
    store = ResultsStore(db_path)
    sleeps: list[float] = []

    def the_sweep_goes_on(seconds: float) -> None:  # another process finishing the sweep
        sleeps.append(seconds)
        if len(sleeps) == 1:
            store.complete(f"{planned[2].config.name}-b", {}, "fp")
        else:
            fabricate(store, planned[3], "a", "complete")

    monkeypatch.setattr(time, "sleep", the_sweep_goes_on)
    result = invoke(runner, "runs", "--sweep", path, "--store", db_path, "--watch", "2.5")
    assert result.exit_code == 0, result.output
    assert sleeps == [2.5, 2.5] and result.output.count("run name") == 3  # three tables
    assert flat(result.output).endswith("4 planned, 3 complete, 1 failed")


def test_runs_sweep_watch_stops_on_ctrl_c(
    runner, half_done_sweep: tuple[Path, Path, list[PlannedRun]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, db_path, _ = half_done_sweep

    def ctrl_c(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", ctrl_c)
    result = invoke(runner, "runs", "--sweep", path, "--store", db_path, "--watch", "1")
    assert result.exit_code == 0, result.output
    assert "stopped watching" in result.output and "Traceback" not in result.output


def test_a_nested_override_merges_key_by_key_like_its_dotted_form(tmp_path: Path, cache: Path) -> None:
    attack = {"trigger": {"name": "blend", "alpha": 0.2}, "relabel": {"name": "target", "target_deg": [5, 5]}}
    base = write_yaml(tmp_path / "base.yaml", tiny_config(cache, attack=attack))
    nested = write_yaml(tmp_path / "nested.yaml", {"base": base.name, "runs": [{"attack": {"rate": 0.05}}]})
    flat = write_yaml(tmp_path / "flat.yaml", {"base": base.name, "runs": [{"attack.rate": 0.05}]})
    (a,), (b,) = expand(*load_sweep(nested)), expand(*load_sweep(flat))
    assert a.config.attack is not None and a.config.attack.rate == 0.05
    assert a.config.attack.trigger["name"] == "blend" and a.config.attack.relabel["target_deg"] == [5.0, 5.0]
    assert a.config.attack == b.config.attack


def test_an_empty_sweep_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is empty"):
        load_sweep(write_yaml(tmp_path / "empty.yaml", None))


def test_relative_paths_resolve_against_the_file_that_wrote_them(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13: the base's paths against the base's folder, the sweep's against the sweep's."""
    (tmp_path / "bases").mkdir()
    (tmp_path / "sweeps").mkdir()
    write_yaml(tmp_path / "bases" / "base.yaml", {**tiny_config(cache), "data": {"cache_dir": "cache_b"}})
    path = write_yaml(
        tmp_path / "sweeps" / "sweep.yaml",
        {"base": "../bases/base.yaml", "name": "t", "runs": [{"seed": 0}, {"seed": 1, "data.cache_dir": "cache_s"}]},
    )
    monkeypatch.chdir(tmp_path / "bases")  # anywhere else: same answer
    planned = expand(*load_sweep(path), str(path))
    assert [r.config.data.cache_dir for r in planned] == [
        str(tmp_path / "bases" / "cache_b"),
        str(tmp_path / "sweeps" / "cache_s"),
    ]


def test_a_result_that_overtakes_its_start_report_is_started_then_ended() -> None:
    """Ray sends reports without waiting: a run failing at once can return before its start report lands."""
    from backdoorlab.experiments.sweep_progress import RunResult, RunStarted, SweepTracker

    events: list[SweepEvent] = []
    tracker = SweepTracker(planned=1, skipped=0, to_run=1, workers=1, emit=events.append)
    tracker.finish(RunResult("failed", "t-1", error="train.batch_size=4096 exceeds the 160 training samples"))
    tracker.put(RunStarted.here("t-1"))  # the late report: ignored
    assert [e.kind for e in events] == ["started", "failed"]
    assert events[0].worker and events[-1].counts.running == 0 and events[-1].counts.done == 1
