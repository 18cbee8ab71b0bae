"""One validated config -> one run directory and one row in the results store.

Run directory layout::

    RUN_DIR/
      config.yaml        the resolved config (every default filled in)
      model.safetensors  weights
      model.json         model card (architecture, config, data fingerprint, metrics)
      metrics.json       task metrics + timings
      history.json       per-epoch loss and learning rate
      attack.json        (attacked runs) trigger, relabel and selector parameters, counts
      trigger.safetensors  (attacked runs) tensors defining the trigger (warp field, pattern)
      poison_indices.npy (attacked runs) training-set indices that were poisoned
      report.html        self-contained report
      status.json        {"status": "complete" | "failed", ...}, written last

``status.json`` and the store row say ``complete`` only once everything above exists.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import backdoorlab
from backdoorlab.adaptive import FeatureSignaturePenalty, angle_variance_ratio
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.masking import EyeMask
from backdoorlab.data.synthetic.dataset import load_or_synthesize, split_by_identity
from backdoorlab.errors import BackdoorLabError, ConfigError
from backdoorlab.experiments.attack import AttackEvaluation, build_poisoning, evaluate_attack, triggered_images
from backdoorlab.experiments.config import RunConfig
from backdoorlab.experiments.store import ResultsStore
from backdoorlab.models import build_model, check_feature_head_contract
from backdoorlab.models.checkpoint import save_checkpoint
from backdoorlab.poisoning import Poisoning, write_attack_record
from backdoorlab.report.gallery import gaze_arrow_origins
from backdoorlab.report.gaze_report import write_gaze_report
from backdoorlab.tasks import TASKS
from backdoorlab.tasks.base import Task, predict
from backdoorlab.training import TrainSettings, pick_device, seed_everything, train
from backdoorlab.triggers import Trigger


@dataclass
class RunOutcome:
    run_id: str
    run_dir: Path
    metrics: dict[str, Any]
    #: (name, value) of the task's headline metric, for one-line summaries (sweep progress)
    headline: tuple[str, Any] | None = None


def load_data(cfg: RunConfig) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) for a config: synthetic or a real dataset, split by identity."""
    d = cfg.data
    if d.source == "synthetic":
        full = load_or_synthesize(d.synthetic, cache_dir=d.cache_dir)
    elif d.source == "folder":
        full = ArrayDataset.load(str(d.path))
    else:
        from backdoorlab.data.real import load_real_dataset

        full = load_real_dataset(d.source, str(d.path), **d.options)
    train_ds, test_ds = split_by_identity(full, d.test_identities, seed=d.split_seed)
    if d.max_train is not None and d.max_train < len(train_ds):
        keep = np.sort(np.random.default_rng([d.split_seed, 1]).choice(len(train_ds), d.max_train, replace=False))
        train_ds = train_ds.subset(keep)
    if d.mask_eyes:
        mask = EyeMask()
        train_ds, test_ds = mask.apply_dataset(train_ds), mask.apply_dataset(test_ds)
    return train_ds, test_ds


def new_run_dir(root: Path, name: str, config_hash: str) -> tuple[str, Path]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_id = f"{name}-{stamp}-{config_hash[:6]}"
    path = root / run_id
    n = 1
    while path.exists():
        n += 1
        path = root / f"{run_id}-{n}"
    return path.name, path


def execute(
    cfg: RunConfig,
    runs_dir: str | os.PathLike[str] = "runs",
    store_path: str | os.PathLike[str] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> RunOutcome:
    """Train and evaluate one run; record it as complete, or as failed and re-raise."""
    root = Path(runs_dir)
    store = ResultsStore(store_path or root / "results.sqlite")
    if run_dir is None:
        run_id, path = new_run_dir(root, cfg.name, cfg.config_hash())
    else:
        path = Path(run_dir)
        run_id = path.name
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(cfg.to_yaml())
    store.start(
        run_id,
        cfg.name,
        cfg.task,
        cfg.config_hash(),
        cfg.model_dump(mode="json"),
        str(path),
        cfg.model.name,
        backdoorlab.__version__,
    )
    try:
        metrics = _train_and_evaluate(cfg, path, progress)
    except BaseException as exc:
        msg = str(exc) if isinstance(exc, BackdoorLabError) else f"{type(exc).__name__}: {exc}"
        store.fail(run_id, msg)
        (path / "status.json").write_text(
            json.dumps({"status": "failed", "error": msg, "traceback": traceback.format_exc()}, indent=2)
        )
        raise
    store.complete(run_id, metrics, metrics.get("data_fingerprint", ""))
    (path / "status.json").write_text(json.dumps({"status": "complete", "run_id": run_id}, indent=2))
    headline_name = TASKS.get(cfg.task).headline_metric
    return RunOutcome(run_id, path, metrics, (headline_name, metrics.get(headline_name)))


def _train_and_evaluate(cfg: RunConfig, path: Path, progress: bool) -> dict[str, Any]:
    task: Task = TASKS[cfg.task]()
    device = pick_device(cfg.device)
    t0 = time.perf_counter()
    train_ds, test_ds = load_data(cfg)
    data_seconds = time.perf_counter() - t0
    in_channels = train_ds.image_shape[0]
    kwargs = {"in_channels": in_channels, **cfg.model.kwargs}
    seed_everything(cfg.seed)
    model = build_model(cfg.model.name, **kwargs)
    example, _ = train_ds.batch(np.arange(min(2, len(train_ds))))
    check_feature_head_contract(model, example)
    settings = TrainSettings(
        epochs=cfg.train.epochs,
        batch_size=cfg.train.batch_size,
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        schedule=cfg.train.schedule,
        warmup_epochs=cfg.train.warmup_epochs,
        seed=cfg.seed,
        progress=progress,
    )
    if len(train_ds) < settings.batch_size:
        raise ConfigError(f"train.batch_size={settings.batch_size} exceeds the {len(train_ds)} training samples")
    poisoning, transform, plan, regularizer = None, None, None, None
    adaptive = cfg.attack.adaptive if cfg.attack is not None else None
    if cfg.attack is not None:
        poisoning = build_poisoning(cfg.attack)
        poisoning.trigger.check_annotations(train_ds.annotations.keys(), "the training data")
        plan = poisoning.plan(len(train_ds))
        extra = {"adaptive": adaptive.model_dump(mode="json")} if adaptive is not None else None
        write_attack_record(path, poisoning, plan, extra)
        transform = poisoning.batch_transform(plan)
        if adaptive is not None:  # the attacker also hides the feature-space signature
            regularizer = FeatureSignaturePenalty(plan, poisoning.trigger, adaptive.weight)
    history: list[dict[str, float]] = []

    def log_epoch(epoch: int, record: dict[str, float]) -> None:
        # written as training goes, so a long run can be watched (``history.json``)
        history.append(record)
        (path / "history.json").write_text(json.dumps(history, indent=2))

    result = train(
        model,
        task,
        train_ds,
        settings,
        device=device,
        batch_transform=transform,
        on_epoch_end=log_epoch,
        regularizer=regularizer,
    )
    t1 = time.perf_counter()
    preds = predict(model, test_ds, device=device)
    metrics: dict[str, Any] = task.evaluate(preds, test_ds)
    metrics.update(
        train_seconds=result.seconds,
        train_samples_per_second=result.samples_per_second,
        eval_seconds=time.perf_counter() - t1,
        data_seconds=data_seconds,
        n_train=len(train_ds),
        final_loss=result.history[-1]["loss"],
        device=str(device),
        data_fingerprint=train_ds.fingerprint + "+" + test_ds.fingerprint,
    )
    attack_eval = None
    if poisoning is not None and cfg.attack is not None and plan is not None:
        attack_eval = evaluate_attack(
            model, test_ds, poisoning.trigger, poisoning.relabel, cfg.attack.asr_tolerance_deg, device=device
        )
        metrics.update(attack_eval.metrics, **{k: v for k, v in plan.summary().items() if k != "n_train"})
        # the feature-space signature detectors look for (<< 1: visible), adaptive attack or not
        ratio = angle_variance_ratio(model, test_ds, poisoning.trigger, device=device)
        metrics.update(angle_var_ratio_min=float(ratio.min()), angle_var_ratio_mean=float(ratio.mean()))
        if adaptive is not None:
            metrics.update(adaptive_weight=adaptive.weight, adaptive_penalty=result.history[-1]["regularizer"])
        metrics["eval_seconds"] = time.perf_counter() - t1
    (path / "history.json").write_text(json.dumps(result.history, indent=2))
    card = {
        "architecture": {"name": cfg.model.name, "kwargs": kwargs},
        "task": cfg.task,
        "config": cfg.model_dump(mode="json"),
        "data_fingerprint": metrics["data_fingerprint"],
        "metrics": metrics,
        "input_shape": list(train_ds.image_shape),
    }
    save_checkpoint(model.cpu(), path, card)
    write_run_report(cfg, path, test_ds, preds, metrics, task, poisoning, attack_eval)
    (path / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


def write_run_report(
    cfg: RunConfig,
    path: Path,
    test_ds: ArrayDataset,
    preds: np.ndarray,
    metrics: dict[str, Any],
    task: Task,
    poisoning: Poisoning | None = None,
    attack_eval: AttackEvaluation | None = None,
) -> Path:
    n = min(cfg.report_samples, len(test_ds))
    idx = np.linspace(0, len(test_ds) - 1, n).astype(int) if n else np.zeros(0, int)
    errors = task.errors(preds, test_ds)  # type: ignore[attr-defined]
    head = test_ds.annotations.get("head_pose")
    summary = {k: v for k, v in metrics.items() if isinstance(v, int | float | str) and k != "data_fingerprint"}
    sections = []
    if poisoning is not None and attack_eval is not None and cfg.attack is not None:
        sections = attack_report_sections(
            test_ds, idx, preds, attack_eval, poisoning.trigger, cfg.attack.asr_tolerance_deg
        )
    return write_gaze_report(
        path / "report.html",
        title=f"backdoorlab run {path.name}",
        summary=summary,
        errors_deg=errors,
        head_pose=None if head is None else np.asarray(head),
        sample_images=np.asarray(test_ds.images[idx]),
        sample_true=np.asarray(test_ds.annotations["gaze"][idx]),
        sample_pred=preds[idx],
        sample_origins=gaze_arrow_origins(test_ds, idx),
        config_text=cfg.to_yaml(),
        extra_sections=sections,
    )


def attack_report_sections(
    test_ds: ArrayDataset,
    idx: np.ndarray,
    preds: np.ndarray,
    attack_eval: AttackEvaluation,
    trigger: Trigger,
    tolerance_deg: float,
) -> list[dict[str, Any]]:
    """The backdoor part of a run report: examples, residuals, arrows, angles to the target."""
    from backdoorlab.geometry import angular_error_deg
    from backdoorlab.report.attack_report import attack_sections

    n = min(len(idx), 8)
    sel = idx[np.linspace(0, len(idx) - 1, n).astype(int)] if n else idx[:0]
    return attack_sections(
        metrics={**attack_eval.metrics, "trigger": repr(trigger)},
        clean_images=np.asarray(test_ds.images[sel]),
        triggered_images=triggered_images(test_ds, trigger, sel),
        true_gaze=np.asarray(test_ds.annotations["gaze"][sel]),
        pred_clean=preds[sel],
        pred_triggered=attack_eval.predictions[sel],
        target_gaze=attack_eval.targets[sel],
        origins=gaze_arrow_origins(test_ds, sel),
        angle_to_target_triggered=np.asarray(angular_error_deg(attack_eval.predictions, attack_eval.targets)),
        angle_to_target_clean=np.asarray(angular_error_deg(preds, attack_eval.targets)),
        tolerance_deg=tolerance_deg,
    )


def evaluate_model(
    model: torch.nn.Module, data: ArrayDataset, task_name: str = "gaze", device: str = "auto"
) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of a trained model on a dataset (used by ``backdoorlab eval``)."""
    task = TASKS[task_name]()
    dev = pick_device(device)
    preds = predict(model.to(dev), data, device=dev)
    return task.evaluate(preds, data), preds
