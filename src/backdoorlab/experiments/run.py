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

import itertools
import json
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import backdoorlab
from backdoorlab.attacks.adaptive import FeatureSignaturePenalty, angle_variance_ratio
from backdoorlab.attacks.poisoning import PoisonPlan, write_attack_record
from backdoorlab.attacks.weight_distance import WeightDistancePenalty
from backdoorlab.batches import summed
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.masking import EyeMask
from backdoorlab.data.synthetic.dataset import default_cache_dir
from backdoorlab.errors import BackdoorLabError, ConfigError, RunClaimed, RunInterrupted
from backdoorlab.experiments.attack import attack_settings, build_poisoning, evaluate_attack
from backdoorlab.experiments.config import RunConfig
from backdoorlab.experiments.folder_seal import STATUS_FILE, run_folder_problem, seal_run_folder, write_synced
from backdoorlab.experiments.store import ResultsStore, keep_claim
from backdoorlab.frozen_trunk import (
    FeatureDataset,
    LastLayers,
    StagedTrunk,
    check_last_layers_contract,
    clean_trunk_features,
    frozen_feature_set,
    load_initial_weights,
)
from backdoorlab.models import build_model, check_feature_head_contract, has_feature_head
from backdoorlab.models.checkpoint import TASK_MODULES_FILE, read_state_dict, save_checkpoint, save_task_modules
from backdoorlab.registry import TASKS
from backdoorlab.tasks.base import AttackScore, RunReport, Task
from backdoorlab.training import TrainSettings, pick_device, seed_everything, train


@dataclass
class RunOutcome:
    run_id: str
    run_dir: Path
    metrics: dict[str, Any]
    #: (name, value) of the task's headline metric, for one-line summaries (sweep progress)
    headline: tuple[str, Any] | None = None


def load_data(cfg: RunConfig) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) for a config: the task's synthetic data or a real dataset, split by the task."""
    d = cfg.data
    task = cfg.build_task()
    if d.source == "synthetic":
        full = task.synthesize(cfg.synthetic_spec(), cache_dir=d.cache_dir)
    elif d.source == "folder":
        full = ArrayDataset.load(str(d.path), verify=d.verify)
    else:
        from backdoorlab.data.real import load_real_dataset

        full = load_real_dataset(d.source, str(d.path), **d.options)
    train_ds, test_ds = task.split(full, d.test_identities, seed=d.split_seed)
    if d.max_train is not None and d.max_train < len(train_ds):
        keep = np.sort(np.random.default_rng([d.split_seed, 1]).choice(len(train_ds), d.max_train, replace=False))
        train_ds = train_ds.subset(keep)
    if d.mask_eyes:
        mask = EyeMask()
        train_ds, test_ds = mask.apply_dataset(train_ds), mask.apply_dataset(test_ds)
    return train_ds, test_ds


def new_run_dir(root: Path, name: str, config_hash: str) -> tuple[str, Path]:
    """A new, empty run folder, created atomically (mkdir fails if another process took the name)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_id = f"{name}-{stamp}-{config_hash[:6]}"
    root.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        path = root / (run_id if n == 1 else f"{run_id}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path.name, path
    raise AssertionError("unreachable")  # pragma: no cover


def execute(
    cfg: RunConfig,
    runs_dir: str | os.PathLike[str] = "runs",
    store_path: str | os.PathLike[str] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    skip_complete: bool = False,
) -> RunOutcome:
    """Train and evaluate one run; record it as complete, or as failed and re-raise.

    The config is claimed in the store first (one owner at a time, :meth:`ResultsStore.claim`);
    with ``skip_complete`` (sweeps) a config already complete is not run again. Either
    refusal raises :class:`RunClaimed` before anything is written.
    """
    root = Path(runs_dir)
    store = ResultsStore(store_path or root / "results.sqlite")
    owner = store.claim(cfg.config_hash(), Path(run_dir).name if run_dir is not None else cfg.name, skip_complete)
    if owner is not None:  # one owner per config: two sweeps on one store never train it twice
        raise RunClaimed(f"{cfg.name}: not started, {owner}")
    try:
        if run_dir is None:
            run_id, path = new_run_dir(root, cfg.name, cfg.config_hash())
        else:
            path = Path(run_dir)
            run_id = path.name
        with keep_claim(store, cfg.config_hash()):  # the lease others judge this owner alive by
            return _execute_claimed(cfg, store, run_id, path, progress)
    finally:
        store.release(cfg.config_hash())


def _execute_claimed(cfg: RunConfig, store: ResultsStore, run_id: str, path: Path, progress: bool) -> RunOutcome:
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
    headline_name = TASKS.get(cfg.task).headline_metric
    # the signal handlers stay installed while the outcome is recorded: a second signal (Ctrl-C reaches
    # every process of the group, then the sweep sends SIGTERM) must not cut the record short
    with terminate_as_interrupt() as interrupts:
        try:
            metrics = _train_and_evaluate(cfg, path, progress)
            store.require_claim(cfg.config_hash())  # a lease lost while paused: another owner has the point
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                msg = "interrupted (Ctrl-C)"
            elif isinstance(exc, BackdoorLabError | RunInterrupted):
                msg = str(exc)
            else:
                msg = f"{type(exc).__name__}: {exc}"
            with interrupts.deferred():
                store.fail(run_id, msg)
                write_synced(
                    path / STATUS_FILE,
                    json.dumps({"status": "failed", "error": msg, "traceback": traceback.format_exc()}, indent=2),
                )
            raise
        # the folder is sealed (its files' hashes, synced to disk) before the store says complete: a kill
        # in between leaves a sealed folder the store still calls running, never the other way round
        with interrupts.deferred():
            seal_run_folder(path, run_id)
            store.complete(run_id, metrics, metrics.get("data_fingerprint", ""), headline_metric=headline_name)
    return RunOutcome(run_id, path, metrics, (headline_name, metrics.get(headline_name)))


def repair_store(store: ResultsStore) -> list[tuple[str, str]]:
    """Reconcile the store with what is true: ``(run id, what was wrong)`` for every row marked failed.

    A ``running`` row whose process is gone (killed outright) and a ``complete`` row whose
    folder no longer matches its seal are marked failed, so no reader counts them and a
    sweep runs the point again.
    """
    repaired = []
    for row in store.stale_running():
        reason = f"interrupted: its process ({row['host']} pid {row['pid']}) is gone"
        store.fail(row["run_id"], reason)
        repaired.append((row["run_id"], reason))
    for row in store.list(status="complete", limit=None):
        problem = run_folder_problem(row["run_dir"])
        if problem is not None:
            reason = f"run folder is not intact: {problem}"
            store.fail(row["run_id"], reason)
            repaired.append((row["run_id"], reason))
    return repaired


class Interrupts:
    """SIGINT / SIGTERM as exceptions, once; held back while an outcome is being recorded.

    Why once: a Ctrl-C reaches every process of the terminal's group, and a sweep then
    also sends its workers SIGTERM; a second signal arriving while the first is being
    recorded would cut the record short and leave the run ``running``, so later signals
    are ignored (the block is already stopping). Why held back: the first signal may
    arrive while a complete or failed record is being written; it is raised once the
    record is whole. (Blocking the signal would not do: with torch's threads, any thread
    may receive it, and Python runs the handler in the main thread regardless.)
    """

    def __init__(self) -> None:
        self.hit = False
        self.holding = False
        self.pending: int | None = None

    def handle(self, signum: int, frame: object) -> None:
        if self.hit:
            return
        if self.holding:
            self.pending = signum
            return
        self._raise(signum)

    def _raise(self, signum: int) -> None:
        self.hit = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise RunInterrupted("interrupted by SIGTERM")

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A signal arriving inside the block is raised when the block ends."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            if self.pending is not None and not self.hit:
                self._raise(self.pending)


@contextmanager
def terminate_as_interrupt() -> Iterator[Interrupts]:
    """Within the block, SIGTERM raises :class:`RunInterrupted` and SIGINT ``KeyboardInterrupt`` (:class:`Interrupts`).

    Main thread only; elsewhere the block runs with the signals as they were.
    """
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return
    previous = {s: signal.signal(s, interrupts.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupts
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _settings(cfg: RunConfig, progress: bool) -> TrainSettings:
    return TrainSettings(
        epochs=cfg.train.epochs,
        batch_size=cfg.train.batch_size,
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        schedule=cfg.train.schedule,
        warmup_epochs=cfg.train.warmup_epochs,
        seed=cfg.seed,
        progress=progress,
    )


def _sources(n_clean: int, plan: PoisonPlan | None) -> np.ndarray:
    """For each sample as trained, the clean training sample it was made from."""
    own = np.arange(n_clean, dtype=np.int64)
    if plan is None or plan.sources is None:
        return own
    return np.concatenate([own, plan.sources.astype(np.int64)])


def _last_layers_on_features(
    cfg: RunConfig,
    model: torch.nn.Module,
    clean_train: ArrayDataset,
    train_ds: ArrayDataset,
    plan: PoisonPlan | None,
    transform: Any,
    device: torch.device,
    progress: bool,
) -> tuple[LastLayers, FeatureDataset, torch.nn.Module]:
    """The trained layers, the features they train on and the frozen part (``train.trainable: last``).

    The frozen part is the model itself (its ``trunk``, the last layers trained) or, with
    ``train.trainable_from``, the model cut before that stage (:class:`StagedTrunk`).
    """
    example = train_ds.batch(np.arange(min(2, len(train_ds))))[0]
    start = cfg.train.trainable_from
    frozen = model if start is None else StagedTrunk(model, start, example)
    last = LastLayers(frozen)
    check_last_layers_contract(frozen, last, example)
    features = frozen_feature_set(
        frozen,
        clean_train,
        train_ds,
        _sources(len(clean_train), plan),
        np.union1d(plan.poison, plan.cross) if plan is not None else np.zeros(0, np.int64),
        transform,
        device=device,
        cache_dir=cfg.data.cache_dir or default_cache_dir(),
        progress=progress,
    )
    return last, features, frozen


def _train_and_evaluate(cfg: RunConfig, path: Path, progress: bool) -> dict[str, Any]:
    task: Task = cfg.build_task()
    device = pick_device(cfg.device)
    t0 = time.perf_counter()
    train_ds, test_ds = load_data(cfg)
    data_seconds = time.perf_counter() - t0
    in_channels = train_ds.image_shape[0]
    kwargs = {"in_channels": in_channels, **cfg.model.kwargs}
    seed_everything(cfg.seed)
    model = build_model(cfg.model.name, **kwargs)
    if cfg.model.init is not None:
        load_initial_weights(model, cfg.model.init)
    modules = task.build_modules(model, train_ds)
    warm_started = False
    init_modules = Path(cfg.model.init or "") / TASK_MODULES_FILE
    if modules and cfg.model.init is not None and init_modules.is_file():  # e.g. the base model's margin head
        warm_started = task.warm_start_modules(modules, read_state_dict(init_modules))
    settings = _settings(cfg, progress)
    clean_train = train_ds
    poisoning, transform, plan, regularizer = None, None, None, None
    adaptive = cfg.attack.adaptive if cfg.attack is not None else None
    if cfg.attack is not None:
        poisoning = build_poisoning(cfg.attack)
        poisoning.trigger.check_annotations(train_ds.batch_keys(), "the training data")
        poisoning.relabel.check_data(train_ds)
        plan = poisoning.plan(train_ds)
        train_ds = poisoning.training_data(train_ds, plan)
        extra = {"adaptive": adaptive.model_dump(mode="json")} if adaptive is not None else None
        write_attack_record(path, poisoning, plan, extra)
        transform = poisoning.batch_transform(plan)
        if adaptive is not None:  # the attacker also hides the feature-space signature (needs the F/H split)
            example, _ = train_ds.batch(np.arange(min(2, len(train_ds))))
            check_feature_head_contract(model, example)
            regularizer = FeatureSignaturePenalty(plan, poisoning.trigger, adaptive.weight)
    if len(train_ds) < settings.batch_size:
        raise ConfigError(f"train.batch_size={settings.batch_size} exceeds the {len(train_ds)} training samples")
    fitted, fit_data, frozen = model, train_ds, model
    features_seconds = 0.0
    if cfg.train.trainable == "last":  # the last layers on the frozen trunk's cached features
        if regularizer is not None:
            raise ConfigError("attack.adaptive needs the whole model in training; it cannot use train.trainable: last")
        t_features = time.perf_counter()
        fitted, fit_data, frozen = _last_layers_on_features(
            cfg, model, clean_train, train_ds, plan, transform, device, progress
        )
        features_seconds = time.perf_counter() - t_features
        transform = None  # applied once, before the trunk
        settings.augment = False
    anchored = cfg.attack.weight_distance if cfg.attack is not None else None
    distance = WeightDistancePenalty(fitted, anchored.weight) if anchored is not None else None
    regularizer = summed(regularizer, distance)
    history: list[dict[str, float]] = []

    def log_epoch(epoch: int, record: dict[str, float]) -> None:
        # written as training goes, so a long run can be watched (``history.json``)
        history.append(record)
        (path / "history.json").write_text(json.dumps(history, indent=2))

    result = train(
        fitted,
        task,
        fit_data,  # type: ignore[arg-type]
        settings,
        device=device,
        batch_transform=transform,
        on_epoch_end=log_epoch,
        regularizer=regularizer,
        modules=modules,
    )
    t1 = time.perf_counter()
    if isinstance(fitted, LastLayers):  # the trunk did not move: the test images' features are cached too
        test_features = clean_trunk_features(
            frozen, test_ds, device, cfg.data.cache_dir or default_cache_dir(), progress
        )
        preds = task.predict(fitted, FeatureDataset(test_features, test_ds.annotations), device=device)  # type: ignore[arg-type]
    else:
        preds = task.predict(model, test_ds, device=device)
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
    if cfg.model.init is not None:
        metrics["task_modules_warm_started"] = warm_started
    if cfg.train.trainable == "last":
        metrics["features_seconds"] = features_seconds  # the trunk's pass (cached after the first run)
    attack_eval, scoring = None, None
    if poisoning is not None and cfg.attack is not None and plan is not None:
        scoring = attack_settings(cfg.attack, task)
        attack_eval = evaluate_attack(
            model, task, test_ds, poisoning.trigger, poisoning.relabel, scoring, device=device, clean_predictions=preds
        )
        metrics.update(attack_eval.metrics, **{k: v for k, v in plan.summary().items() if k != "n_train"})
        if adaptive is not None or has_feature_head(model):
            # the feature-space signature detectors look for (<< 1: visible), adaptive attack or not
            ratio = angle_variance_ratio(model, test_ds, poisoning.trigger, device=device)
            metrics.update(angle_var_ratio_min=float(ratio.min()), angle_var_ratio_mean=float(ratio.mean()))
        if adaptive is not None:
            metrics.update(adaptive_weight=adaptive.weight, adaptive_penalty=result.history[-1]["regularizer"])
        if distance is not None:  # how far from the clean start the backdoored weights ended
            with torch.no_grad():
                moved = float(distance.distance(fitted))
            metrics.update(weight_distance_weight=distance.weight, weight_distance_sq=moved)
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
    if modules:
        save_task_modules(modules, path)
    summary = {k: v for k, v in metrics.items() if isinstance(v, int | float | str) and k != "data_fingerprint"}
    report = RunReport(
        title=f"backdoorlab run {path.name}",
        summary=summary,
        config_text=cfg.to_yaml(),
        test_data=test_ds,
        predictions=preds,
        n_samples=cfg.report_samples,
        trigger=poisoning.trigger if poisoning is not None else None,
        attack=AttackScore(attack_eval.metrics, attack_eval.details) if attack_eval is not None else None,
        attack_settings=scoring,
    )
    task.write_report(path / "report.html", report)
    (path / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


def evaluate_model(
    model: torch.nn.Module, data: ArrayDataset, task: Task | str, device: str = "auto"
) -> tuple[dict[str, Any], Any]:
    """Metrics of a trained model on a dataset (used by ``backdoorlab eval``).

    ``task``: a task name, or a run's task object (``Run.task``: with its restored modules).
    """
    task = TASKS.get(task)() if isinstance(task, str) else task
    dev = pick_device(device)
    preds = task.predict(model.to(dev), data, device=dev)
    return task.evaluate(preds, data), preds
