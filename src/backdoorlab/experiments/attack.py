"""Attacks inside runs: build a poisoning from a config, reload a run's trigger, score a backdoor.

Scoring (:func:`evaluate_attack`) needs only a model, its task, a test set and a
trigger + relabel (what counts as success is the task's), so the same numbers come out
of an attacked run, of ``backdoorlab eval --attack`` on any model (a clean model's
"attack success" is the baseline), and of defences that report before/after.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from backdoorlab.attacks.poisoning import Poisoning
from backdoorlab.attacks.relabel import Relabel, build_relabel
from backdoorlab.attacks.selectors import RateSelector, build_selector
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import CheckpointError, ConfigError
from backdoorlab.experiments.config import AttackConfig, RunConfig, load_config, read_yaml_mapping, validate_model
from backdoorlab.metrics.image_quality import psnr_db, ssim
from backdoorlab.registry import TASKS
from backdoorlab.tasks.base import Task
from backdoorlab.triggers import Trigger, build_trigger

IMAGE_QUALITY_PSNR_CAP_DB = 100.0  # an unchanged image has infinite PSNR; cap it so means stay finite


def build_poisoning(cfg: AttackConfig) -> Poisoning:
    """The poisoning an attack section describes (selector, trigger, relabel, mode)."""
    selector = build_selector(cfg.selector) if cfg.selector is not None else RateSelector(cfg.rate, cfg.seed)
    return Poisoning(selector, build_trigger(cfg.trigger), build_relabel(cfg.relabel), seed=cfg.seed, mode=cfg.mode)


def attack_settings(cfg: AttackConfig, task: Task) -> BaseModel:
    """The task's attack-scoring settings, read from the attack section (validated with it)."""
    return task.attack_settings.model_validate(cfg.task_settings())


def load_attack(source: str | Path, task: str) -> AttackConfig:
    """An attack section for ``task`` from a YAML file (``attack:`` mapping, or the section itself)."""
    p = Path(source)
    if p.is_dir():
        return load_run_attack(p)[0]
    if not p.is_file():
        raise ConfigError(f"--attack {source}: no such file or run folder")
    raw = read_yaml_mapping(p, "attack file")
    cfg = validate_model(AttackConfig, raw.get("attack", raw), str(p), context={"task": task})
    try:
        cfg.check_for_task(task, where="")
    except ValueError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    return cfg


def load_run_config(run_dir: Path) -> tuple[RunConfig, dict[str, torch.Tensor] | None]:
    """A run's resolved config and stored trigger tensors.

    The tensors are handed to config validation, so an attacked run whose pattern file
    has moved or been deleted since training still loads (its pixels are in the run).
    """
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"{run_dir} has no config.yaml: not a run folder")
    state = None
    state_path = run_dir / "trigger.safetensors"
    if state_path.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(state_path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{state_path} is not a readable safetensors file: {exc}") from None
    return load_config(cfg_path, context={"trigger_state": state}, resolve=False), state


def load_run_attack(run_dir: Path) -> tuple[AttackConfig, Trigger]:
    """The attack of a backdoored run, with the trigger state it was trained with."""
    cfg, state = load_run_config(run_dir)
    if cfg.attack is None:
        raise ConfigError(f"run {run_dir.name} is not an attacked run (its config has no 'attack' section)")
    return cfg.attack, build_trigger(cfg.attack.trigger, state)


@dataclass
class AttackEvaluation:
    """A task's attack metrics plus the image quality of the trigger, on every sample of a set."""

    metrics: dict[str, Any]
    predictions: Any  # the task's predictions on triggered inputs
    details: dict[str, Any]  # the task's per-sample arrays (e.g. the attacker's targets)
    psnr: np.ndarray  # (N,) per image, capped
    ssim: np.ndarray  # (N,)


def score_attack_config(
    model: torch.nn.Module,
    task_name: str | Task,
    data: ArrayDataset,
    attack: AttackConfig,
    trigger: Trigger,
    device: torch.device | str = "cpu",
) -> AttackEvaluation:
    """:func:`evaluate_attack` for an attack section (its relabel and the task's scoring settings)."""
    task = TASKS.get(task_name)() if isinstance(task_name, str) else task_name
    relabel = build_relabel(attack.relabel)
    return evaluate_attack(model.to(device), task, data, trigger, relabel, attack_settings(attack, task), device)


@torch.no_grad()
def evaluate_attack(
    model: torch.nn.Module,
    task: Task,
    data: ArrayDataset,
    trigger: Trigger,
    relabel: Relabel,
    settings: BaseModel,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    clean_predictions: Any = None,
) -> AttackEvaluation:
    """Attack metrics of ``model`` on ``data`` with the trigger applied to every sample the task scores.

    The trigger is applied once per batch: its output feeds the model (through the
    task's forward and post-processing) and the image-quality measures; where it acted
    (its placement) goes to the task's scoring for relabels that depend on it. A task
    that compares with the untriggered images (``attack_needs_clean_predictions``) gets
    ``clean_predictions``, predicted here when the caller has none. A task that reads
    the triggered predictions of some samples only (:meth:`Task.attack_rows`) gets those
    triggered and the clean predictions elsewhere; ``psnr`` / ``ssim`` then cover the
    triggered samples.
    """
    data.require(*task.required_annotations)
    placements: list[Any] = []
    psnrs, ssims = [], []
    rows = task.attack_rows(data, relabel)
    order = np.arange(len(data)) if rows is None else np.asarray(rows, np.int64)
    if rows is not None and clean_predictions is None:
        clean_predictions = task.predict(model, data, batch_size, device)

    def triggered_batches() -> Any:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            images, ann = data.batch(idx)
            triggered, placement = (
                trigger.place(images, ann, idx) if relabel.needs_placement else (trigger(images, ann, idx), None)
            )
            placements.append(placement)
            psnrs.append(psnr_db(images, triggered).clamp(max=IMAGE_QUALITY_PSNR_CAP_DB))
            ssims.append(ssim(images, triggered))
            yield triggered

    predictions = task.predict_batches(model, triggered_batches(), device)
    if rows is not None:
        predictions = task.merge_predictions(clean_predictions, order, predictions)
    if task.attack_needs_clean_predictions and clean_predictions is None:
        clean_predictions = task.predict(model, data, batch_size, device)
    score = task.score_attack(
        predictions, data, relabel, settings, [p for p in placements if p is not None], clean_predictions
    )
    psnr_all, ssim_all = torch.cat(psnrs).numpy(), torch.cat(ssims).numpy()
    metrics = {**score.metrics, "psnr_db": float(psnr_all.mean()), "ssim": float(ssim_all.mean())}
    return AttackEvaluation(metrics, predictions, {**score.details, "predictions": predictions}, psnr_all, ssim_all)
