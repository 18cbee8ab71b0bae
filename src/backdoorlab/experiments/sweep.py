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
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from backdoorlab.errors import BackdoorLabError, ConfigError
from backdoorlab.experiments.config import (
    RunConfig,
    apply_overrides,
    read_yaml_mapping,
    validate_config,
    validate_model,
)
from backdoorlab.experiments.store import ResultsStore


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
        base = read_yaml_mapping(bp)
    return spec, base


def _nest(flat: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in flat.items()]


def expand(spec: SweepSpec, base: dict[str, Any], origin: str = "sweep") -> list[PlannedRun]:
    """Every run of the sweep, validated before anything starts (duplicates removed)."""
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
        raw = apply_overrides(common, [*_nest(point), f"name={spec.name}-{digest}"])
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


def _run_one(config_json: str, runs_dir: str, store_path: str, threads: int) -> tuple[str, str, str]:
    """Worker entry point: (status, run id or name, error). Never raises, so one run cannot stop the sweep."""
    import torch

    from backdoorlab.experiments.run import execute

    if threads > 0:
        torch.set_num_threads(threads)
    cfg = RunConfig.model_validate_json(config_json)
    try:
        outcome = execute(cfg, runs_dir=runs_dir, store_path=store_path, progress=False)
    except BackdoorLabError as exc:  # already recorded as failed by execute; report and go on
        return "failed", cfg.name, str(exc)
    except Exception as exc:
        return "failed", cfg.name, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    return "complete", outcome.run_id, ""


def run_sweep(
    planned: Sequence[PlannedRun],
    runs_dir: str | os.PathLike[str],
    store_path: str | os.PathLike[str] | None = None,
    engine: Literal["local", "ray"] = "local",
    workers: int = 1,
    resources: Resources | None = None,
    address: str | None = None,
    on_done: Callable[[str, str, str], None] | None = None,
) -> SweepOutcome:
    """Run what is not complete yet; failures are collected, never raised."""
    root = Path(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    store = str(store_path or root / "results.sqlite")
    db = ResultsStore(store)
    res = resources or Resources()
    todo: list[PlannedRun] = []
    skipped: list[str] = []
    for run in planned:
        if db.find_complete(run.config_hash) is not None:
            skipped.append(run.config_hash)
        else:
            todo.append(run)
    outcome = SweepOutcome(len(planned), skipped, [], [])

    def record(result: tuple[str, str, str]) -> None:
        status, ident, error = result
        if status == "complete":
            outcome.completed.append(ident)
        else:
            outcome.failed.append((ident, error))
        if on_done is not None:
            on_done(status, ident, error)

    if not todo:
        return outcome
    if engine == "local":
        _run_local(todo, str(root), store, max(1, workers), res, record)
    elif engine == "ray":
        _run_ray(todo, str(root), store, res, address, record)
    else:
        raise ConfigError(f"unknown engine '{engine}' (local, ray)")
    return outcome


def _run_local(
    todo: Sequence[PlannedRun],
    root: str,
    store: str,
    workers: int,
    res: Resources,
    record: Callable[[tuple[str, str, str]], None],
) -> None:
    import multiprocessing

    cores = os.cpu_count() or 1
    threads = max(1, int(res.cpus)) if workers > 1 else 0  # one worker: torch's own default
    threads = min(threads, max(1, cores // workers)) if threads else 0
    if workers == 1:  # in-process: simplest to debug, no start-up cost
        for run in todo:
            record(_run_one(run.config.model_dump_json(), root, store, threads))
        return
    ctx = multiprocessing.get_context("spawn")  # no forked torch/OpenMP state
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(_run_one, r.config.model_dump_json(), root, store, threads): r for r in todo}
        for fut in as_completed(futures):
            try:
                record(fut.result())
            except Exception as exc:  # the worker process itself died
                record(("failed", futures[fut].config.name, f"worker crashed: {type(exc).__name__}: {exc}"))


def _run_ray(
    todo: Sequence[PlannedRun],
    root: str,
    store: str,
    res: Resources,
    address: str | None,
    record: Callable[[tuple[str, str, str]], None],
) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'backdoorlab[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        task = ray.remote(num_cpus=res.cpus, num_gpus=res.gpus, max_retries=0)(_run_one)
        threads = max(1, int(res.cpus))
        refs = {task.remote(r.config.model_dump_json(), root, store, threads): r for r in todo}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    record(ray.get(ref))
                except Exception as exc:  # the task's worker died
                    record(("failed", refs[ref].config.name, f"ray task failed: {type(exc).__name__}: {exc}"))
    finally:
        if started_here and address is None:
            ray.shutdown()
