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
from typing import Any

import numpy as np
from PIL import Image
from torch import nn

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.defenses.base import Detector, Mitigator, Verdict
from backdoorlab.defenses.tuning import FineTuneSettings
from backdoorlab.errors import ConfigError
from backdoorlab.experiments.attack import load_run_attack, load_run_config, score_attack_config
from backdoorlab.experiments.run import evaluate_model, load_data
from backdoorlab.models.checkpoint import load_checkpoint, read_card, save_checkpoint
from backdoorlab.training import pick_device

DETECTORS = ("securegaze", "neural_cleanse")
MITIGATORS = ("securegaze", "fine_tuning", "fine_pruning")


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """``key=value`` strings (values parsed as JSON when they can be) -> keyword arguments."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _construct(cls: type, params: dict[str, Any], what: str) -> Any:
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def build_detector(method: str, params: dict[str, Any] | None = None, device: str = "auto") -> Detector:
    """A detector by name; ``params`` are its constructor settings."""
    kw = {"device": device, **(params or {})}
    if method == "securegaze":
        from backdoorlab.defenses.securegaze import SecureGaze

        return _construct(SecureGaze, kw, "securegaze")
    if method == "neural_cleanse":
        from backdoorlab.defenses.neural_cleanse import NeuralCleanse

        return _construct(NeuralCleanse, kw, "neural_cleanse")
    raise ConfigError(f"unknown detection method {method!r}; choose one of {', '.join(DETECTORS)}")


def fine_tune_settings(params: dict[str, Any], what: str) -> FineTuneSettings:
    """Pop the ``tune.KEY`` entries of ``params`` into the mitigator's fine-tuning schedule.

    Why a prefix: SecureGaze's own settings share names with the schedule (``seed``,
    ``batch_size``, ``lr``), so ``--param tune.lr=2e-4`` is the fine-tuning rate and
    ``--param lr=1e-2`` the generator's.
    """
    tune = {key.removeprefix("tune."): params.pop(key) for key in [k for k in params if k.startswith("tune.")]}
    return _construct(FineTuneSettings, tune, f"{what} (tune.*)")


def build_mitigator(method: str, params: dict[str, Any] | None = None, device: str = "auto") -> Mitigator:
    """A mitigator by name; ``tune.*`` params set the fine-tuning schedule, the others the method."""
    params = dict(params or {})
    settings = fine_tune_settings(params, method)
    if method == "securegaze":
        from backdoorlab.defenses.securegaze import SecureGaze, SecureGazeUnlearning

        own = {k: params.pop(k) for k in ("paired", "mix", "clean_targets") if k in params}  # the rest: the detector's
        detector = _construct(SecureGaze, {"device": device, **params}, "securegaze")
        return _construct(
            SecureGazeUnlearning, {"device": device, **own, "detector": detector, "settings": settings}, "securegaze"
        )
    if method == "fine_tuning":
        from backdoorlab.defenses.fine_tuning import FineTuning

        return _construct(FineTuning, {"device": device, **params, "settings": settings}, "fine_tuning")
    if method == "fine_pruning":
        from backdoorlab.defenses.fine_pruning import FinePruning

        return _construct(FinePruning, {"device": device, **params, "settings": settings}, "fine_pruning")
    raise ConfigError(f"unknown mitigation method {method!r}; choose one of {', '.join(MITIGATORS)}")


def defender_split(run_dir: Path, n_clean: int, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """(defender's clean set, held-out scoring set) from the run's test split."""
    cfg, _ = load_run_config(run_dir)
    _, test = load_data(cfg)
    if n_clean >= len(test):
        raise ConfigError(f"--n-clean {n_clean} leaves no held-out images: the run's test split has {len(test)} images")
    order = np.random.default_rng([seed, 11]).permutation(len(test))
    return test.subset(np.sort(order[:n_clean])), test.subset(np.sort(order[n_clean:]))


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
    method: str = "securegaze",
    n_clean: int = 256,
    params: dict[str, Any] | None = None,
    references: list[Path] | None = None,
    device: str = "auto",
    out_dir: Path | None = None,
    unsafe_load: bool = False,
) -> tuple[Verdict, Path]:
    """Inspect one run's model; write ``verdict.json`` and the reversed-trigger images."""
    detector = build_detector(method, params, device)
    model, _ = load_checkpoint(run_dir, unsafe=unsafe_load)
    clean, _ = defender_split(run_dir, n_clean)
    if references:
        ref_models = [load_checkpoint(r, unsafe=unsafe_load)[0] for r in references]
        detector.fit(ref_models, clean)
    verdict = detector.inspect(model, clean)
    folder = out_dir or run_dir / "defence" / method
    verdict.details["examples"] = save_examples(verdict.examples, folder)
    verdict.details["references"] = [str(r) for r in references or []]
    return verdict, verdict.write(folder / "verdict.json")


def backdoor_metrics(model: nn.Module, run_dir: Path, data: ArrayDataset, device: str = "auto") -> dict[str, Any]:
    """Clean error, and the run's real backdoor metrics when it has one, on ``data``."""
    dev = pick_device(device)
    cfg, _ = load_run_config(run_dir)
    out, _ = evaluate_model(model, data, cfg.task, device=device)
    if cfg.attack is not None:
        attack, trigger = load_run_attack(run_dir)
        ev = score_attack_config(model, cfg.task, data, attack, trigger, dev)
        keep = ("attack_error_deg", "triggered_true_error_deg", "attack_success_rate")
        out.update({k: ev.metrics[k] for k in keep if k in ev.metrics})
    return out


def mitigate_run(
    run_dir: Path,
    method: str = "securegaze",
    n_clean: int = 256,
    params: dict[str, Any] | None = None,
    device: str = "auto",
    out_dir: Path | None = None,
    unsafe_load: bool = False,
) -> tuple[dict[str, Any], Path]:
    """Repair one run's model; save it as a checkpoint with a ``mitigation.json`` of before/after metrics."""
    mitigator = build_mitigator(method, params, device)
    model, _ = load_checkpoint(run_dir, unsafe=unsafe_load)
    clean, held_out = defender_split(run_dir, n_clean)
    before = backdoor_metrics(model, run_dir, held_out, device)
    t0 = time.perf_counter()
    repaired = mitigator.repair(model, clean)
    seconds = time.perf_counter() - t0
    after = backdoor_metrics(repaired, run_dir, held_out, device)
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
    }
    tmp = folder / f".mitigation.json.partial-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    tmp.replace(folder / "mitigation.json")
    return record, folder / "mitigation.json"
