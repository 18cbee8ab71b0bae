"""Run a detector or a mitigator on a trained run: what ``backdoorlab detect`` / ``mitigate`` and the bench call.

The defender's clean set is carved out of the run's *test* split (identities never seen
in training), never from the training data: ``n_clean`` images picked by a seeded
permutation. The rest of the test split is kept for scoring a repaired model, so the
images a mitigator tuned on never score it. The real trigger is used only to score the
result (the benchmark knows it; the defence does not).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image
from torch import nn

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.defenses.base import Detector, Mitigator, PopulationDetector, Verdict
from backdoorlab.defenses.settings import DefenceConfig
from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.defence_config import defence_config, parse_params
from backdoorlab.experiments.folder_seal import seal_run_folder
from backdoorlab.experiments.run import evaluate_model
from backdoorlab.experiments.run_folder import Run
from backdoorlab.experiments.store import ResultsStore
from backdoorlab.models.checkpoint import load_checkpoint, read_card, save_checkpoint
from backdoorlab.training import pick_device

__all__ = [
    "build_detector", "build_mitigator", "clean_runs", "detect_population", "detect_run", "mitigate_run",
    "parse_params",
]  # fmt: skip


def build_detector(method: str, params: dict[str, Any] | None = None, device: str = "auto") -> Detector:
    """A detector by registered name; ``params`` are its settings (flat, ``tune.lr``-style dotted keys allowed)."""
    return cast(Detector, defence_config(method, "detection", {"device": device, **(params or {})}).build())


def build_mitigator(method: str, params: dict[str, Any] | None = None, device: str = "auto") -> Mitigator:
    """A mitigator by registered name; ``tune.*`` params set the fine-tuning schedule, the others the method."""
    return cast(Mitigator, defence_config(method, "mitigation", {"device": device, **(params or {})}).build())


def _settings(
    run: Run, shape: str, method: str | None, params: dict[str, Any] | None, device: str, config: DefenceConfig | None
) -> DefenceConfig:
    """The validated settings: ``config`` as given, else ``method`` (default: the task's) with ``params``."""
    if config is not None:
        return config
    return defence_config(method or run.task.default_defence, shape, {"device": device, **(params or {})})


def save_examples(examples: np.ndarray | None, folder: Path) -> list[str]:
    """Write reversed-trigger images as PNGs; return their file names."""
    if examples is None:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, img in enumerate(examples):
        name = f"reversed_{i:02d}.png"
        Image.fromarray(img).save(folder / name)
        names.append(name)
    return names


def detect_run(
    run_dir: Path,
    method: str | None = None,
    n_clean: int = 256,
    params: dict[str, Any] | None = None,
    references: list[Path] | None = None,
    device: str = "auto",
    out_dir: Path | None = None,
    unsafe_load: bool = False,
    config: DefenceConfig | None = None,
) -> tuple[Verdict, Path]:
    """Inspect one run's model; write ``verdict.json`` and the reversed-trigger images.

    ``config`` (validated settings, e.g. from ``--config``) replaces ``method``, ``params`` and ``device``;
    without either, the method is the task's default defence.
    """
    run = Run(run_dir, unsafe_load)
    config = _settings(run, "detection", method, params, device, config)
    method, detector = config.method, cast(Detector, config.build())
    task = run.task
    detector.check_needs(task=task)  # before loading anything: a method for another task is refused at once
    model = run.model
    clean, _ = run.defender_split(n_clean)
    detector.check_needs(task=task, model=model, clean_data=clean)
    if references:
        ref_models = [load_checkpoint(r, unsafe=unsafe_load)[0] for r in references]
        detector.fit(ref_models, clean)
    verdict = detector.inspect(model, clean)
    folder = out_dir or run_dir / "defence" / method
    verdict.details["examples"] = save_examples(verdict.examples, folder)
    verdict.details["references"] = [str(r) for r in references or []]
    verdict.details["settings_hash"] = config.settings_hash()
    return verdict, verdict.write(folder / "verdict.json")


def clean_runs(store: str | os.PathLike[str]) -> list[Path]:
    """The folders of a results store's complete runs trained without an attack (a reference zoo), oldest first."""
    if not Path(store).is_file():
        raise BackdoorLabError(f"results store {store} not found")
    rows = ResultsStore(store).list(status="complete", limit=None, oldest_first=True)
    return [Path(r["run_dir"]) for r in rows if not r["config"].get("attack")]


def detect_population(
    run_dirs: list[Path],
    references: list[Path],
    config: DefenceConfig,
    out_dir: Path | None = None,
    unsafe_load: bool = False,
) -> list[tuple[Verdict, Path]]:
    """Fit a population detector once on ``references`` (clean runs), then inspect each of ``run_dirs``.

    A run that is also a reference is refused: the density was fitted on it, so its score
    says nothing. Each verdict goes to ``RUN/defence/METHOD/verdict.json``, or to
    ``OUT_DIR/RUN_NAME/verdict.json``.
    """
    detector = cast(PopulationDetector, config.build())
    resolved = {Path(r).resolve() for r in references}
    if both := [str(r) for r in run_dirs if Path(r).resolve() in resolved]:
        raise BackdoorLabError(f"{', '.join(both)}: also a reference; a fitted-on network cannot be judged")
    detector.fit([load_checkpoint(r, unsafe=unsafe_load)[0] for r in references])
    out = []
    for run_dir in run_dirs:
        verdict = detector.inspect(Run(run_dir, unsafe_load).model)
        verdict.details["references"] = [str(r) for r in references]
        verdict.details["settings_hash"] = config.settings_hash()
        folder = out_dir / Path(run_dir).name if out_dir else run_dir / "defence" / config.method
        out.append((verdict, verdict.write(folder / "verdict.json")))
    return out


def backdoor_metrics(model: nn.Module, run: Run, data: ArrayDataset, device: str = "auto") -> dict[str, Any]:
    """The task's clean metrics, and the run's real backdoor's summary metrics when it has one, on ``data``."""
    out, _ = evaluate_model(model, data, run.task, device=device)
    if run.attack is not None:
        ev = run.score_attack(model, data, pick_device(device))
        out.update({k: ev.metrics[k] for k in run.task.attack_summary_metrics if k in ev.metrics})
    return out


def mitigate_run(
    run_dir: Path,
    method: str | None = None,
    n_clean: int = 256,
    params: dict[str, Any] | None = None,
    device: str = "auto",
    out_dir: Path | None = None,
    unsafe_load: bool = False,
    config: DefenceConfig | None = None,
) -> tuple[dict[str, Any], Path]:
    """Repair one run's model; save it as a checkpoint with a ``mitigation.json`` of before/after metrics.

    ``config`` (validated settings, e.g. from ``--config``) replaces ``method``, ``params`` and ``device``.
    The mitigator fine-tunes with the run's task unless it brings its own.
    """
    run = Run(run_dir, unsafe_load)
    config = _settings(run, "mitigation", method, params, device, config)
    method, mitigator, device = config.method, cast(Mitigator, config.build()), config.device
    task = run.task
    mitigator.check_needs(task=task)
    if mitigator.task is None:
        mitigator.task = task
    model = run.model
    clean, held_out = run.defender_split(n_clean)
    mitigator.check_needs(task=task, model=model, clean_data=clean)
    before = backdoor_metrics(model, run, held_out, device)
    t0 = time.perf_counter()
    repaired = mitigator.repair(model, clean)
    seconds = time.perf_counter() - t0
    after = backdoor_metrics(repaired, run, held_out, device)
    folder = out_dir or run_dir / "mitigated" / method
    card = read_card(run_dir)
    save_checkpoint(repaired.cpu(), folder, {**card, "mitigated_from": str(run_dir), "mitigation": method})
    for name in ("config.yaml", "attack.json", "trigger.safetensors"):  # so `eval` works on it like on a run
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, folder / name)
    record = {
        "method": method,
        "run": str(run_dir),
        "n_clean": n_clean,
        "n_scored": len(held_out),
        "seconds": seconds,
        "before": before,
        "after": after,
        "params": mitigator.params(),
        "settings_hash": config.settings_hash(),
    }
    tmp = folder / f".mitigation.json.partial-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    tmp.replace(folder / "mitigation.json")
    seal_run_folder(folder, f"{Path(run_dir).name}/mitigated/{method}")  # checkable like a run folder, last
    return record, folder / "mitigation.json"
