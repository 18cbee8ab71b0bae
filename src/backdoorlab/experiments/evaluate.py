"""``backdoorlab eval``: score a trained model on its own test split or on other data.

Real datasets come at their own resolution and channel count; the model card records
the input shape the model was trained on, and images are adapted to it (area resize,
grey <-> RGB) so a model trained on synthetic faces can be scored on MPIIFaceGaze.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import ConfigError, DatasetError
from backdoorlab.experiments.attack import load_attack, load_run_attack, load_run_config, score_attack_config
from backdoorlab.experiments.config import AttackConfig
from backdoorlab.experiments.run import evaluate_model, load_data
from backdoorlab.experiments.run_folder import Run
from backdoorlab.models.checkpoint import load_checkpoint
from backdoorlab.training import pick_device
from backdoorlab.triggers import Trigger, build_trigger


def adapt_images(ds: ArrayDataset, shape: tuple[int, int, int]) -> ArrayDataset:
    """Resize/convert images to (C, H, W) = ``shape``; pixel annotations are rescaled with them."""
    c, h, w = shape
    if ds.image_shape == (c, h, w):
        return ds
    imgs = np.asarray(ds.images)
    out = np.empty((len(imgs), h, w, c), np.uint8)
    for i, im in enumerate(imgs):
        r = cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA) if im.shape[:2] != (h, w) else im
        if r.ndim == 2:
            r = r[..., None]
        if r.shape[-1] == 1 and c == 3:
            r = np.repeat(r, 3, -1)
        elif r.shape[-1] == 3 and c == 1:
            r = cv2.cvtColor(r, cv2.COLOR_RGB2GRAY)[..., None]
        out[i] = r
    src_h, src_w = ds.image_shape[1:]
    keep = dict(ds.annotations)
    scale = np.asarray([w / src_w, h / src_h], np.float32)
    for key in ("landmarks", "eye_corners"):  # pixel coordinates follow the resize
        if key in keep:
            keep[key] = np.asarray(keep[key], np.float32) * scale
    if "face_box" in keep:
        keep["face_box"] = np.asarray(keep["face_box"], np.float32) * np.tile(scale, 2)
    return ArrayDataset(
        out, keep, {**{k: v for k, v in ds.meta.items() if k != "fingerprint"}, "adapted_to": list(shape)}
    )


def resolve_data(spec: str, run_dir: Path) -> ArrayDataset:
    """'run' -> the run's test split; a folder -> ArrayDataset; KIND:PATH -> a real loader."""
    if spec == "run":
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(
                f"{run_dir / 'config.yaml'} is missing: cannot rebuild the run's test split (pass --data)"
            )
        return load_data(load_run_config(run_dir)[0])[1]
    m = re.match(r"^([a-z-]+):(.+)$", spec)
    if m and not Path(spec).exists():
        from backdoorlab.data.real import load_real_dataset

        return load_real_dataset(m.group(1), m.group(2))
    p = Path(spec)
    if not p.exists():
        raise DatasetError(f"--data {spec}: no such dataset folder (or use KIND:PATH for a real dataset)")
    return ArrayDataset.load(p)


def card_task(card: dict[str, Any], run_dir: Path) -> str:
    """The task a model was trained for, from its card (every card written by backdoorlab names it)."""
    task = card.get("task")
    if not isinstance(task, str):
        raise ConfigError(f"{run_dir / 'model.json'} names no task: cannot tell how to evaluate this model")
    return task


def resolve_attack(attack: str | None, run_dir: Path, task: str) -> tuple[AttackConfig, Trigger] | None:
    """The trigger to score: ``--attack`` (a YAML file or an attacked run's folder), else the run's own."""
    if attack is None:
        if (run_dir / "config.yaml").is_file() and load_run_config(run_dir)[0].attack is not None:
            return load_run_attack(run_dir)
        return None
    p = Path(attack)
    if p.is_dir():
        return load_run_attack(p)
    cfg = load_attack(p, task)
    return cfg, build_trigger(cfg.trigger)


def evaluate_run(
    run_dir: Path,
    data: str = "run",
    unsafe_load: bool = False,
    device: str = "auto",
    attack: str | None = None,
) -> tuple[dict[str, Any], Path]:
    """Clean metrics, plus attack metrics when a trigger is given or the run was attacked."""
    model, card = load_checkpoint(run_dir, unsafe=unsafe_load)
    task = card_task(card, run_dir)
    chosen = resolve_attack(attack, run_dir, task)  # before the data: a bad --attack fails fast
    ds = resolve_data(data, run_dir)
    if "input_shape" in card:
        ds = adapt_images(ds, tuple(card["input_shape"]))  # type: ignore[arg-type]
    if chosen is not None:  # before any work: the trigger may need landmarks this data lacks
        chosen[1].check_annotations(ds.batch_keys(), f"--data {data}")
    # a run folder's task comes with the modules it trained (a margin head: closed-set identities)
    task_object = Run(run_dir).task if (run_dir / "config.yaml").is_file() else task
    metrics, _ = evaluate_model(model, ds, task_object, device=device)
    metrics["data"] = data
    if chosen is not None:
        acfg, trigger = chosen
        result = score_attack_config(model, task_object, ds, acfg, trigger, pick_device(device))
        metrics.update(result.metrics)
        metrics["attack"] = attack or "run"
    name = data if attack is None else f"{data}+{Path(attack).stem}"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:80] or "data"
    out = run_dir / "eval" / f"{slug}.json"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    tmp.replace(out)
    return metrics, out
