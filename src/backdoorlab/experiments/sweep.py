"""Sweeps: a grid (or list) of config overrides -> many independent, resumable runs.

Why resumable by config hash: a model zoo is hundreds of runs and hours of compute;
an interrupted or partly failed sweep must be restartable without redoing finished
work. Every run's name is derived from its overrides, so the same point of the grid
always resolves to the same config and the same hash, and a run whose hash is already
``complete`` in the results store is skipped. A run that fails is recorded as failed
(by :func:`~backdoorlab.experiments.run.execute`) and the sweep goes on; starting the
sweep again retries it.

Engines: ``local`` runs each run in a worker process on this machine (torch threads
split between workers); ``ray`` submits each run as a Ray task with its CPU/GPU
request to a local Ray instance or to a cluster (``address``). With Ray on a cluster
the runs folder and the results store must be on a filesystem every node sees.

Progress: :func:`run_sweep` prints nothing; it hands a
:class:`~backdoorlab.experiments.sweep_progress.SweepEvent` to ``on_event`` for the
plan and for every run that starts, finishes or fails, with counts and an ETA (the
CLI prints them as lines). A run's start is reported by the worker itself when it
begins (see the engines), so "running" means running, not queued.

Sweep file::

    base: ../gaze/clean_gaze_cnn.yaml     # run config, relative to this file
    name: zoo                              # run names: zoo-<hash of the overrides>
    set: [train.epochs=4]                  # overrides for every run
    grid:                                  # cartesian product of dotted keys
      seed: [0, 1, 2]
      attack.rate: [0.05, 0.1]
    runs:                                  # and/or an explicit list of override mappings
      - {seed: 7, model.name: resnet18}
    resources: {cpus: 1, gpus: 0}          # per run (Ray); local workers use cpus as threads
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from backdoorlab.errors import BackdoorLabError, ConfigError, RunClaimed, RunInterrupted
from backdoorlab.experiments.config import (
    RunConfig,
    apply_overrides,
    dotted,
    read_yaml_mapping,
    resolve_paths,
    validate_config,
    validate_model,
)
from backdoorlab.experiments.folder_seal import run_folder_problem
from backdoorlab.experiments.fresh_processes import FreshProcessPool
from backdoorlab.experiments.run import terminate_as_interrupt
from backdoorlab.experiments.store import ResultsStore
from backdoorlab.experiments.sweep_progress import RunResult, RunStarted, SweepEvent, SweepTracker


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpus: float = Field(1, gt=0)
    gpus: float = Field(0, ge=0)


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: str | None = Field(None, description="run config the overrides apply to (relative to the sweep file)")
    name: str = Field("sweep", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=60)
    set: list[str] = Field(default_factory=list, description="key=value overrides for every run")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted key -> values (product)")
    runs: list[dict[str, Any]] = Field(default_factory=list, description="explicit override mappings")
    resources: Resources = Field(default_factory=Resources)


@dataclass
class PlannedRun:
    """One point of a sweep: its overrides and the resolved config."""

    overrides: dict[str, Any]
    config: RunConfig

    @property
    def config_hash(self) -> str:
        return self.config.config_hash()


def load_sweep(path: str | os.PathLike[str]) -> tuple[SweepSpec, dict[str, Any]]:
    """Read a sweep file; returns the spec and the base run config (a raw mapping)."""
    p = Path(path)
    spec = validate_model(SweepSpec, read_yaml_mapping(p, "sweep file"), str(p))
    base: dict[str, Any] = {}
    if spec.base is not None:
        bp = (p.parent / spec.base).resolve()
        if not bp.is_file():
            raise ConfigError(f"{p}: base config {spec.base} does not exist (looked for {bp})")
        base = resolve_paths(read_yaml_mapping(bp), bp.parent)
    return spec, base


def _overrides(point: dict[str, Any]) -> list[str]:
    """A sweep point as dotted overrides: a nested mapping merges key by key, exactly like its dotted form."""
    return [f"{k}={json.dumps(v)}" for k, v in dotted(point).items()]


def expand(spec: SweepSpec, base: dict[str, Any], origin: str = "sweep") -> list[PlannedRun]:
    """Every run of the sweep, validated before anything starts (duplicates removed).

    Relative paths the sweep file itself sets (``set``, ``grid``, ``runs``) resolve
    against its folder when ``origin`` is the sweep file's path (the base's already did
    against the base's), else against the working directory.
    """
    root = Path(origin).parent if Path(origin).is_file() else Path.cwd()
    keys = list(spec.grid)
    points: list[dict[str, Any]] = [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*spec.grid.values())
    ]
    if not keys:
        points = [] if spec.runs else [{}]
    points += [dict(r) for r in spec.runs]
    common = apply_overrides(base, spec.set)
    planned: list[PlannedRun] = []
    seen: set[str] = set()
    for i, point in enumerate(points):
        digest = hashlib.sha256(json.dumps(point, sort_keys=True, default=str).encode()).hexdigest()[:8]
        raw = resolve_paths(apply_overrides(common, [*_overrides(point), f"name={spec.name}-{digest}"]), root)
        cfg = validate_config(raw, f"{origin} run {i} {point}")
        if cfg.config_hash() in seen:
            continue
        seen.add(cfg.config_hash())
        planned.append(PlannedRun(point, cfg))
    return planned


@dataclass
class SweepOutcome:
    planned: int
    skipped: list[str]  # config hashes already complete
    completed: list[str]  # run ids
    failed: list[tuple[str, str]]  # (run name, error)
    claimed: list[tuple[str, str]] = field(default_factory=list)  # (run name, who owns it): another sweep's
    interrupted: str = ""  # why the sweep stopped before its end (empty: it ran to the end)


class _Reports(Protocol):
    """Where a worker reports: a multiprocessing or Ray queue, or the tracker itself in process."""

    def put(self, item: RunStarted | RunResult) -> Any: ...


def _run_one(
    config_json: str, runs_dir: str, store_path: str, threads: int, reports: _Reports | None = None
) -> RunResult:
    """Worker entry point: reports its start and its result to ``reports`` and returns the result.

    Why the result goes through the queue too (not only back through the future): one
    channel, in the order the workers wrote it, means the driver never sees a worker's
    next run start before its previous run ended, so "running" never counts more runs
    than there are workers.
    """
    cfg = RunConfig.model_validate_json(config_json)
    if reports is not None:
        reports.put(RunStarted.here(cfg.name))
    result = _execute(cfg, runs_dir, store_path, threads)
    if reports is not None:
        reports.put(result)
    return result


def _execute(cfg: RunConfig, runs_dir: str, store_path: str, threads: int) -> RunResult:
    """One run as a :class:`RunResult`; never raises, so one run cannot stop the sweep."""
    import torch

    from backdoorlab.experiments.run import execute

    if threads > 0:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        outcome = execute(cfg, runs_dir=runs_dir, store_path=store_path, progress=False, skip_complete=True)
    except RunClaimed as exc:  # another sweep owns this point (or just finished it): nothing was started
        return RunResult("claimed", cfg.name, error=str(exc), seconds=time.perf_counter() - t0)
    except BackdoorLabError as exc:  # already recorded as failed by execute; report and go on
        return RunResult("failed", cfg.name, error=str(exc), seconds=time.perf_counter() - t0)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        return RunResult("failed", cfg.name, error=error, seconds=time.perf_counter() - t0)
    return RunResult("complete", cfg.name, outcome.run_id, headline=outcome.headline, seconds=time.perf_counter() - t0)


def _collect(get: Callable[[], RunResult], name: str, what: str) -> RunResult:
    """A worker's result (already reported through the queue unless that failed), or a
    failure naming how its process died."""
    try:
        return get()
    except Exception as exc:
        return RunResult("failed", name, error=f"{what}: {type(exc).__name__}: {exc}")


def run_sweep(
    planned: Sequence[PlannedRun],
    runs_dir: str | os.PathLike[str],
    store_path: str | os.PathLike[str] | None = None,
    engine: Literal["local", "ray"] = "local",
    workers: int = 1,
    resources: Resources | None = None,
    address: str | None = None,
    on_done: Callable[[str, str, str], None] | None = None,
    on_event: Callable[[SweepEvent], None] | None = None,
) -> SweepOutcome:
    """Run what is not complete yet; failures are collected, never raised.

    ``on_event`` gets a :class:`SweepEvent` once for the plan and then as each run
    starts, finishes or fails (counts and ETA included); the library prints nothing,
    so a caller decides where progress goes. ``on_done(status, run id or name, error)``
    is the older, end-of-run-only hook and still works.
    """
    root = Path(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    store = str(store_path or root / "results.sqlite")
    db = ResultsStore(store)
    res = resources or Resources()
    todo: list[PlannedRun] = []
    skipped: list[str] = []
    for run in planned:
        done = db.find_complete(run.config_hash)
        problem = run_folder_problem(done["run_dir"]) if done is not None else None
        if done is not None and problem is None:
            skipped.append(run.config_hash)
            continue
        if done is not None:  # the store said complete, the folder says otherwise: no longer trusted
            db.fail(done["run_id"], f"run folder is not intact: {problem}")
        todo.append(run)
    outcome = SweepOutcome(len(planned), skipped, [], [])

    def emit(event: SweepEvent) -> None:
        if event.kind == "finished":
            outcome.completed.append(event.run_id)
        elif event.kind == "failed":
            outcome.failed.append((event.name, event.error))
        elif event.kind == "claimed":
            outcome.claimed.append((event.name, event.error))
        if on_done is not None and event.kind in ("finished", "failed"):
            ident = event.run_id if event.kind == "finished" else event.name
            on_done("complete" if event.kind == "finished" else "failed", ident, event.error)
        if on_event is not None:
            on_event(event)

    if engine not in ("local", "ray"):
        raise ConfigError(f"unknown engine '{engine}' (local, ray)")
    tracker = SweepTracker(len(planned), len(skipped), len(todo), workers=max(1, workers), emit=emit)
    tracker.begin()
    if not todo:
        return outcome
    try:
        with terminate_as_interrupt():
            if engine == "local":
                _run_local(todo, str(root), store, max(1, workers), res, tracker)
            else:
                _run_ray(todo, str(root), store, res, address, tracker)
    except (KeyboardInterrupt, RunInterrupted) as exc:
        # stop promptly: the runs in flight were told to stop (and record themselves as
        # interrupted), nothing new starts; running the sweep again resumes it
        outcome.interrupted = "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else str(exc)
    return outcome


def _run_local(
    todo: Sequence[PlannedRun], root: str, store: str, workers: int, res: Resources, tracker: SweepTracker
) -> None:
    """One worker: in this process. More: a spawned process pool; each worker puts a
    :class:`RunStarted` on a Manager queue as it begins (and its result as it ends),
    which the driver drains every half second, so "started" means started, not submitted.

    Each pooled run gets a fresh process (:class:`FreshProcessPool`): a worker that took
    run after run kept what the previous ones left (allocator fragmentation, cached
    datasets and features), and in a recognition fine-tune sweep one worker grew to
    12.4 GB and the machine ran out of memory. A fresh process costs the imports (about
    2 s), small beside any run. (Not ``ProcessPoolExecutor(max_tasks_per_child=1)``:
    on Python 3.11 it can deadlock, see :mod:`~backdoorlab.experiments.fresh_processes`.)"""
    import multiprocessing

    cores = os.cpu_count() or 1
    threads = max(1, int(res.cpus)) if workers > 1 else 0  # one worker: torch's own default
    threads = min(threads, max(1, cores // workers)) if threads else 0
    if workers == 1:  # in-process: simplest to debug, no start-up cost
        for run in todo:
            _run_one(run.config.model_dump_json(), root, store, threads, tracker)
        return
    from multiprocessing.managers import SyncManager

    ctx = multiprocessing.get_context("spawn")  # no forked torch/OpenMP state
    manager = SyncManager(ctx=ctx)
    manager.start(_die_with_parent)  # the queue's server process, too, goes with the sweep
    with manager:
        reports = manager.Queue()
        pool = FreshProcessPool(workers, ctx, initializer=_die_with_parent)
        for i, run in enumerate(todo):
            pool.submit(i, _pool_run_one, run.config.model_dump_json(), root, store, threads, reports)
        try:
            while pool.outstanding:
                done = pool.poll(timeout=_POLL_SECONDS)
                tracker.drain(reports)
                for end in done:
                    tracker.finish(_collect(end.get, todo[end.key].config.name, "worker crashed"))
        except BaseException:
            pool.stop()  # its runs record themselves as interrupted
            raise


def _pool_run_one(
    config_json: str, runs_dir: str, store_path: str, threads: int, reports: _Reports | None = None
) -> RunResult:
    """:func:`_run_one` in a pool worker: an interrupted run ends the worker too.

    Its run has recorded itself as interrupted; a worker that lived on would take the
    next run (or wait forever for one from a dead sweep).
    """
    try:
        return _run_one(config_json, runs_dir, store_path, threads, reports)
    except (KeyboardInterrupt, RunInterrupted):
        os._exit(128 + 15)


def _die_with_parent() -> None:
    """Pool worker initializer: on Linux, SIGTERM this worker when the sweep process dies (even by SIGKILL).

    The worker then records its run as interrupted instead of finishing it and taking
    the next. Elsewhere this is not available, and a killed sweep's workers finish
    their current run.
    """
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _run_ray(
    todo: Sequence[PlannedRun],
    root: str,
    store: str,
    res: Resources,
    address: str | None,
    tracker: SweepTracker,
) -> None:
    """Each run is a Ray task; tasks report their start (and result) on a ``ray.util.queue.Queue``.

    Why a Ray queue rather than polling the store's ``running`` rows: the message is
    sent by the task itself the moment it runs (a row appears only after the run has
    read its config and opened the store), it names the node and process, and the
    driver needs no reads of a shared SQLite file, which on a network filesystem is
    slow. The queue is a small actor holding no CPU. Best effort: reports are sent
    without waiting (see :class:`_RayReports`), so reports of two different workers may
    reach the driver a moment out of order. The ETA assumes as many parallel runs as
    the cluster's CPUs (and GPUs) fit.
    """
    try:
        import ray
        from ray.util.queue import Queue
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'backdoorlab[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    reports = None
    try:
        tracker.workers = _ray_slots(ray.cluster_resources(), res)
        reports = Queue(actor_options={"num_cpus": 0})
        # max_calls=1: a fresh worker process per run, as in the local pool (memory)
        task = ray.remote(num_cpus=res.cpus, num_gpus=res.gpus, max_retries=0, max_calls=1)(_run_one)
        threads = max(1, int(res.cpus))
        sink = _RayReports(reports.actor)
        refs = {task.remote(r.config.model_dump_json(), root, store, threads, sink): r for r in todo}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=_POLL_SECONDS)
            tracker.drain(reports)
            for ref in done:
                tracker.finish(_collect(lambda r=ref: ray.get(r), refs[ref].config.name, "ray task failed"))
    finally:
        if reports is not None:
            reports.shutdown()
        if started_here and address is None:
            ray.shutdown()


class _RayReports:
    """A task's side of the Ray queue: sends without waiting for the queue's answer.

    Why not ``Queue.put``: it blocks in ``ray.get``, and a task blocked in ``ray.get``
    gives its CPUs back to Ray, which then starts one more run than the cluster has
    room for. A sent-and-forgotten call keeps the order of one worker's reports; the
    driver also takes results from the tasks' return values, so a late report costs
    nothing but a late line.
    """

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def put(self, item: RunStarted | RunResult) -> None:
        self.actor.put_nowait.remote(item)


def _ray_slots(cluster: dict[str, float], res: Resources) -> int:
    """How many runs the cluster fits at once (for the ETA)."""
    fits = [cluster.get("CPU", 1.0) / res.cpus] + ([cluster.get("GPU", 0.0) / res.gpus] if res.gpus else [])
    return max(1, int(min(fits)))


_POLL_SECONDS = 0.5  # how late a line may be
