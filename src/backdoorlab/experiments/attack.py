"""Attacks inside runs: build a poisoning from a config, reload a run's trigger, score a backdoor.

Scoring (:func:`evaluate_attack`) needs only a model, a test set and a trigger +
relabel, so the same numbers come out of an attacked run, of ``backdoorlab eval
--attack`` on any model (a clean model's "attack success" is the baseline), and later
of defences that report before/after.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backdoorlab.data.arrays import ArrayDataset, tensor_to_images
from backdoorlab.errors import BackdoorLabError, CheckpointError, ConfigError
from backdoorlab.experiments.config import AttackConfig, RunConfig, load_config, read_yaml_mapping, validate_model
from backdoorlab.metrics.attack import attack_metrics, target_spread_deg
from backdoorlab.metrics.image_quality import psnr_db, ssim
from backdoorlab.poisoning import Poisoning, RateSelector
from backdoorlab.relabel import Relabel, build_relabel
from backdoorlab.triggers import Trigger, build_trigger

IMAGE_QUALITY_PSNR_CAP_DB = 100.0  # an unchanged image has infinite PSNR; cap it so means stay finite


def build_poisoning(cfg: AttackConfig) -> Poisoning:
    return Poisoning(
        RateSelector(cfg.rate, cfg.seed), build_trigger(cfg.trigger), build_relabel(cfg.relabel), seed=cfg.seed
    )


def load_attack(source: str | Path) -> AttackConfig:
    """An attack section from a YAML file (``attack:`` mapping, or the section itself)."""
    p = Path(source)
    if p.is_dir():
        return load_run_attack(p)[0]
    if not p.is_file():
        raise ConfigError(f"--attack {source}: no such file or run folder")
    raw = read_yaml_mapping(p, "attack file")
    return validate_model(AttackConfig, raw.get("attack", raw), str(p))


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
    return load_config(cfg_path, context={"trigger_state": state}), state


def load_run_attack(run_dir: Path) -> tuple[AttackConfig, Trigger]:
    """The attack of a backdoored run, with the trigger state it was trained with."""
    cfg, state = load_run_config(run_dir)
    if cfg.attack is None:
        raise ConfigError(f"run {run_dir.name} is not an attacked run (its config has no 'attack' section)")
    return cfg.attack, build_trigger(cfg.attack.trigger, state)


@dataclass
class AttackEvaluation:
    metrics: dict[str, Any]
    predictions: np.ndarray  # (N, 2) on triggered inputs
    targets: np.ndarray  # (N, 2) attacker's intended gaze
    psnr: np.ndarray  # (N,) per image, capped
    ssim: np.ndarray  # (N,)


@torch.no_grad()
def evaluate_attack(
    model: torch.nn.Module,
    data: ArrayDataset,
    trigger: Trigger,
    relabel: Relabel,
    tolerance_deg: float = 5.0,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> AttackEvaluation:
    """Attack metrics of ``model`` on ``data`` with the trigger applied to every sample."""
    data.require("gaze")
    was_training = model.training
    model.eval()
    preds, psnrs, ssims = [], [], []
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)))
        images, ann = data.batch(idx)
        triggered = trigger(images, ann, idx)
        preds.append(model(triggered.to(device)).float().cpu())
        psnrs.append(psnr_db(images, triggered).clamp(max=IMAGE_QUALITY_PSNR_CAP_DB))
        ssims.append(ssim(images, triggered))
    model.train(was_training)
    pred = torch.cat(preds).numpy().astype(np.float64)
    true = np.asarray(data.annotations["gaze"], np.float64)
    targets = relabel.targets(true).numpy().astype(np.float64)
    try:
        metrics: dict[str, Any] = dict(attack_metrics(pred, true, targets, tolerance_deg))
    except ValueError as exc:  # e.g. every test sample already within the tolerance of its target
        raise BackdoorLabError(f"cannot score the attack on this data: {exc}") from None
    psnr_all, ssim_all = torch.cat(psnrs).numpy(), torch.cat(ssims).numpy()
    metrics.update(
        psnr_db=float(psnr_all.mean()),
        ssim=float(ssim_all.mean()),
        triggered_output_spread_deg=target_spread_deg(pred),
    )
    return AttackEvaluation(metrics, pred, targets, psnr_all, ssim_all)


def triggered_images(data: ArrayDataset, trigger: Trigger, indices: np.ndarray) -> np.ndarray:
    """uint8 (M, H, W, C) triggered versions of some samples (for reports and figures)."""
    images, ann = data.batch(indices)
    return tensor_to_images(trigger(images, ann, indices))
