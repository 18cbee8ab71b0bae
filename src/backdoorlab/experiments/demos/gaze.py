"""The gaze demo (``make demo``, ``backdoorlab demo``): a clean and a tape-backdoored gaze model, side by side.

The main job of the project in one command: render the embedded synthetic data, train
a clean GazeCNN and one whose training data carries the demo backdoor (white tape on
the forehead -> the model outputs the screen centre), score both on clean and on
taped test faces, write both run folders with their reports, print a comparison
table, and render the SecureGaze-style sequence: an unseen synthetic subject looks at
the four screen corners, first without and then with the tape, and an animated GIF
shows the backdoored model's arrow (red) following the eyes and then locking onto the
target, and the arrow of the same model after SecureGaze unlearning (blue), which keeps
following the eyes. ``quick`` shrinks everything so that tests run the same code path in seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from backdoorlab.attacks.relabel import build_relabel
from backdoorlab.data.arrays import ArrayDataset, tensor_to_images
from backdoorlab.data.synthetic.sequence import corner_sequence
from backdoorlab.experiments.attack import attack_settings, evaluate_attack, load_run_attack
from backdoorlab.experiments.config import RunConfig, validate_config
from backdoorlab.experiments.defend import mitigate_run
from backdoorlab.experiments.demos import merge, packaged_config
from backdoorlab.experiments.run import RunOutcome, execute, load_data
from backdoorlab.geometry import angular_error_deg
from backdoorlab.models.checkpoint import load_checkpoint
from backdoorlab.registry import TASKS
from backdoorlab.report.animation import write_gaze_gif
from backdoorlab.report.draw import MITIGATED_COLOUR, PRED_COLOUR, TRUE_COLOUR
from backdoorlab.report.gallery import gaze_arrow_origins, write_gallery
from backdoorlab.triggers import Trigger

#: how the dispatcher (:mod:`backdoorlab.experiments.demo`) knows this demo
NAME = "gaze"
DEFAULT = True  # ``backdoorlab demo`` without a name runs this one
DEFAULT_OUT = Path("runs/demo")
SUMMARY = "a clean and a tape-backdoored gaze model, SecureGaze unlearning, the four-corner GIF"

QUICK_OVERRIDES = {
    "data": {"synthetic": {"identities": 6, "images_per_identity": 40, "size": 32}, "test_identities": 2},
    "train": {"epochs": 1, "batch_size": 32},
    "model": {"kwargs": {"width": 8}},
    "report_samples": 4,
}
DEMO_N_CLEAN = 256  # the defender's clean faces (from the test split), ~3% of the training set
DEMO_N_CLEAN_QUICK = 32
SEQUENCE_IDENTITY_SEED = 2026  # a subject drawn apart from the training identities
METRIC_COLUMNS = (
    ("clean_error_deg", "clean error"),
    ("attack_error_deg", "AE (to target)"),
    ("triggered_true_error_deg", "DAE (to truth)"),
    ("attack_success_rate", "ASR"),
    ("psnr_db", "PSNR dB"),
    ("ssim", "SSIM"),
)


@dataclass
class DemoOutcome:
    clean: RunOutcome
    backdoored: RunOutcome
    table: dict[str, dict[str, float]]
    sequence: dict[str, Any]
    gif: Path
    summary: Path
    extra: dict[str, Any] = field(default_factory=dict)


def demo_configs(quick: bool = False) -> tuple[RunConfig, RunConfig]:
    """(clean, backdoored): the same data, model and schedule; the second adds the tape attack."""
    raw = packaged_config("demo_gaze.yaml")
    if quick:
        raw = merge(raw, QUICK_OVERRIDES)
        raw["name"] = "demo-quick"
    clean = validate_config(raw, "demo config")
    attacked = validate_config(
        {**raw, "name": _backdoored_name(raw["name"]), "attack": packaged_config("demo_attack.yaml")},
        "demo attack config",
    )
    return clean, attacked


def _backdoored_name(clean_name: str) -> str:
    """demo-clean-gaze -> demo-tape-backdoor-gaze; other names get a suffix."""
    if "clean" in clean_name:
        return clean_name.replace("clean", "tape-backdoor", 1)
    return clean_name + "-tape-backdoor"


def demo_config(quick: bool = False) -> RunConfig:
    return demo_configs(quick)[0]


def run_demo(out: Path, quick: bool = False, console: Console | None = None) -> DemoOutcome:
    con = console or Console()
    clean_cfg, bd_cfg = demo_configs(quick)
    s = clean_cfg.synthetic_spec()
    con.print(
        f"[bold]backdoorlab demo[/]: {clean_cfg.model.name} on synthetic {s.size}x{s.size} faces, "
        f"{s.identities} identities x {s.images_per_identity} images; backdoor: white tape on the forehead "
        f"-> gaze (0, 0), {bd_cfg.attack.rate:.0%} of the training faces"  # type: ignore[union-attr]
    )
    con.print("[1/4] training the clean model")
    clean = execute(clean_cfg, runs_dir=out, progress=not quick)
    con.print("[2/4] training the tape-backdoored model")
    backdoored = execute(bd_cfg, runs_dir=out, progress=not quick)
    train_ds, test_ds = load_data(clean_cfg)  # cached by now: this only memory-maps it
    write_gallery(train_ds, clean.run_dir / "gallery.png", n=16, ncols=8)

    acfg, trigger = load_run_attack(backdoored.run_dir)
    relabel = build_relabel(acfg.relabel)
    clean_model, _ = load_checkpoint(clean.run_dir)
    task = TASKS.get(clean_cfg.task)()
    scoring = attack_settings(acfg, task)
    tol = scoring.asr_tolerance_deg  # type: ignore[attr-defined]
    baseline = evaluate_attack(clean_model, task, test_ds, trigger, relabel, scoring)
    table = {
        "clean model": {**baseline.metrics, "clean_error_deg": clean.metrics["clean_error_deg"]},
        "tape-backdoored model": dict(backdoored.metrics),
    }
    _print_table(con, table, tol, len(test_ds))

    con.print("[3/4] removing the backdoor with SecureGaze (reverse-engineered trigger, then unlearning)")
    n_clean = DEMO_N_CLEAN_QUICK if quick else DEMO_N_CLEAN
    params = {"steps": 5, "min_clean": DEMO_N_CLEAN_QUICK} if quick else {}
    mitigation, mitigation_path = mitigate_run(backdoored.run_dir, "securegaze", n_clean, params)
    _print_mitigation(con, mitigation)

    con.print("[4/4] the four-corner sequence, without and with the tape")
    bd_model, _ = load_checkpoint(backdoored.run_dir)
    fixed_model, _ = load_checkpoint(mitigation_path.parent)
    seconds = 0.4 if quick else 4.0
    seq = corner_sequence(spec_size=s.size, identity_seed=SEQUENCE_IDENTITY_SEED, seconds_per_corner=seconds)
    gif = out / "four_corners.gif"
    sequence = write_sequence_gif(gif, seq, bd_model, trigger, tol, relabel.targets(np.zeros((1, 2)))[0], fixed_model)

    summary = out / "summary.json"
    payload = {
        "clean_run": str(clean.run_dir),
        "backdoored_run": str(backdoored.run_dir),
        "table": table,
        "sequence": sequence,
        "gif": str(gif),
        "mitigation": {"before": mitigation["before"], "after": mitigation["after"], "record": str(mitigation_path)},
    }
    tmp = summary.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    tmp.replace(summary)
    con.print(
        f"sequence ({sequence['frames_per_half']} frames each half): without tape the backdoored model is "
        f"{sequence['no_tape_error_deg']:.1f} deg from the true gaze; with tape it is "
        f"{sequence['tape_angle_to_target_deg']:.1f} deg from the target "
        f"({sequence['tape_within_tolerance']:.0%} of frames within {tol:g} deg); "
        f"the mitigated model (blue arrow) is {sequence['mitigated_tape_error_deg']:.1f} deg from the true gaze "
        "with the tape on"
    )
    con.print(
        f"clean run:      {clean.run_dir}\nbackdoored run: {backdoored.run_dir}\n"
        f"reports:        {clean.run_dir / 'report.html'}\n                {backdoored.run_dir / 'report.html'}\n"
        f"sequence GIF:   {gif}\nsummary:        {summary}"
    )
    return DemoOutcome(clean, backdoored, table, sequence, gif, summary)


def _print_table(con: Console, table: dict[str, dict[str, float]], tol: float, n_test: int) -> None:
    t = Table(title=f"clean vs tape-backdoored gaze model ({n_test} test faces of unseen identities)")
    t.add_column("model")
    for _, label in METRIC_COLUMNS:
        t.add_column(label, justify="right")
    for name, m in table.items():
        t.add_row(
            name, *(f"{m[k]:.3f}" if k in ("attack_success_rate", "ssim") else f"{m[k]:.2f}" for k, _ in METRIC_COLUMNS)
        )
    con.print(t)
    con.print(
        f"AE/DAE/ASR on taped test faces (ASR = within {tol:g} deg of the target); "
        "PSNR/SSIM: taped vs clean faces; errors in degrees"
    )


def _print_mitigation(con: Console, record: dict[str, Any]) -> None:
    t = Table(title=f"tape-backdoored model before / after SecureGaze unlearning ({record['n_scored']} held-out faces)")
    for col in ("", "clean error", "AE (to target)", "DAE (to truth)", "ASR"):
        t.add_column(col, justify="right")
    for side in ("before", "after"):
        m = record[side]
        t.add_row(
            side,
            *(f"{m[k]:.2f}" for k in ("clean_error_deg", "attack_error_deg", "triggered_true_error_deg")),
            f"{m['attack_success_rate']:.3f}",
        )
    con.print(t)


def write_sequence_gif(
    path: Path,
    seq: ArrayDataset,
    model: torch.nn.Module,
    trigger: Trigger,
    tolerance_deg: float,
    target: torch.Tensor,
    mitigated: torch.nn.Module | None = None,
    task_name: str = "gaze",
) -> dict[str, Any]:
    """Run the model on the sequence without and with the trigger; write the GIF; return statistics.

    With ``mitigated``, its arrow is drawn too (blue), so the clip shows the backdoored
    model locking onto the target while the repaired one keeps following the eyes.

    The tape is stuck on once for the whole clip, so every frame uses the same trigger
    draw (index 0): the physical jitter models different placements, not a wobbling tape.
    """
    predict = TASKS.get(task_name)().predict
    n = len(seq)
    images, ann = seq.batch(np.arange(n))
    taped_t = trigger(images, ann, np.zeros(n, np.int64))
    taped = ArrayDataset(tensor_to_images(taped_t), dict(seq.annotations), dict(seq.meta))
    pred_clean = predict(model, seq)
    pred_taped = predict(model, taped)
    true = np.asarray(seq.annotations["gaze"])
    tgt = np.broadcast_to(np.asarray(target, np.float64), true.shape)
    fps = int(seq.meta.get("fps", 25))
    frames = np.concatenate([np.asarray(seq.images), taped.images])
    origins = gaze_arrow_origins(seq, np.arange(n))
    times = np.arange(n) / fps
    # a prediction at the target (0, 0) is a zero-length arrow, so the caption says it in numbers
    err_clean = angular_error_deg(pred_clean, true)
    to_target = angular_error_deg(pred_taped, tgt)
    captions = [f"no tape {t:4.1f}s err {e:4.1f}deg" for t, e in zip(times, err_clean, strict=True)] + [
        f"tape {t:4.1f}s to target {d:3.1f}deg" for t, d in zip(times, to_target, strict=True)
    ]
    arrows = [(np.concatenate([true, true]), TRUE_COLOUR), (np.concatenate([pred_clean, pred_taped]), PRED_COLOUR)]
    extra: dict[str, Any] = {}
    if mitigated is not None:
        fixed_clean, fixed_taped = predict(mitigated, seq), predict(mitigated, taped)
        arrows.append((np.concatenate([fixed_clean, fixed_taped]), MITIGATED_COLOUR))
        extra = {
            "mitigated_no_tape_error_deg": float(np.mean(angular_error_deg(fixed_clean, true))),
            "mitigated_tape_error_deg": float(np.mean(angular_error_deg(fixed_taped, true))),
            "mitigated_tape_within_tolerance": float(np.mean(angular_error_deg(fixed_taped, tgt) <= tolerance_deg)),
        }
    write_gaze_gif(
        path,
        frames,
        arrows,
        origins=None if origins is None else np.concatenate([origins, origins]),
        fps=fps,
        captions=captions,
    )
    return {
        "frames_per_half": n,
        "fps": fps,
        "no_tape_error_deg": float(np.mean(err_clean)),
        "tape_error_deg": float(np.mean(angular_error_deg(pred_taped, true))),
        "tape_angle_to_target_deg": float(np.mean(to_target)),
        "tape_within_tolerance": float(np.mean(to_target <= tolerance_deg)),
        "no_tape_within_tolerance": float(np.mean(angular_error_deg(pred_clean, tgt) <= tolerance_deg)),
        **extra,
    }
