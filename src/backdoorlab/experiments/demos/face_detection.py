"""The face-detection demo (``backdoorlab demo face_detection``): a clean, an FGA and an LSA RetinaFace.

One command trains three RetinaFace models on the same synthetic scenes with the same
schedule (``configs/demo_face_detection.yaml``): a clean one, one poisoned with the Face
Generation Attack (a checkerboard patch away from the faces -> a face there) and one
poisoned with the Landmark Shift Attack (a patch on a face's cheek -> its landmarks
rotated). Each attack is scored on its backdoored model and, as the baseline, on the
clean model (the same triggered test scenes). It prints the results table and writes to
``out``: the three run folders with their reports, ``summary.json`` (the table, the
runs, the scale and the time each stage took) and ``demo.html`` (the table, detections
on triggered scenes side by side, the ArcFace-aligned crops, and the run-time monitors
registered for the task, when there are any). ``quick`` shrinks everything so that a
test runs the same code path in seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from markupsafe import escape
from rich.console import Console
from rich.table import Table

from backdoorlab.attacks.relabel import build_relabel
from backdoorlab.defenses.base import RuntimeMonitor
from backdoorlab.experiments.attack import attack_settings, evaluate_attack, load_run_attack
from backdoorlab.experiments.config import RunConfig, validate_config
from backdoorlab.experiments.demos import merge, packaged_config, with_threads, write_summary
from backdoorlab.experiments.run import RunOutcome, execute, load_data
from backdoorlab.models.checkpoint import load_checkpoint
from backdoorlab.registry import DEFENCES, TASKS
from backdoorlab.report.run_report import table_section
from backdoorlab.tasks.face_detection import demo as page

NAME = "face_detection"
ALIASES = ("detection",)  # the name issue 14 gave it: `backdoorlab demo detection`
DEFAULT = False
DEFAULT_OUT = Path("runs/demo_face_detection")
SUMMARY = "a clean, an FGA and an LSA RetinaFace on synthetic scenes; detections and aligned crops"

#: (metric key, column header) of the results table; benign metrics on clean test scenes
COLUMNS = (
    ("ap50_easy", "AP50 easy"),
    ("ap50_hard", "AP50 hard"),
    ("nme", "NME"),
    ("fga_asr", "FGA ASR"),
    ("lsa_asr", "LSA ASR"),
    ("lsa_detected", "LSA found"),
    ("landmark_displacement_px", "LM shift px"),
    ("aligned_rotation_deg", "crop rot. deg"),
)
ROWS = {"clean": "clean model", "fga": "FGA model", "lsa": "LSA model"}
TABLE_NOTE = (
    "AP50 (easy, hard) and NME (inter-ocular) on the clean test scenes; FGA ASR: share of triggered scenes with a "
    "face of score >= threshold at IoU >= iou with the trigger; LSA ASR: share of detected triggered faces whose "
    "landmarks are within nme_tolerance of the rotated target and nearer to it than to the truth; LSA found: share "
    "of triggered faces detected (IoU >= iou); LM shift: mean distance of the found faces' predicted landmarks from "
    "the true ones; crop rot.: mean |rotation| of the ArcFace "
    "alignment from predicted landmarks against the true one. The clean model's attack columns are the baseline "
    "(same trigger, same scenes). A dash: not measured."
)


@dataclass
class FaceDetectionDemoOutcome:
    runs: dict[str, RunOutcome]
    table: dict[str, dict[str, Any]]
    summary: Path
    page: Path


def _packaged() -> dict[str, Any]:
    return packaged_config("demo_face_detection.yaml")


def demo_configs(quick: bool = False) -> dict[str, RunConfig]:
    """clean, fga, lsa: the same data, model and schedule; the last two add their attack."""
    raw = _packaged()
    run = merge(raw["run"], raw["quick"]) if quick else dict(raw["run"])
    if quick:
        run["name"] = run["name"].replace("demo-fd", "demo-fd-quick", 1)
    configs = {"clean": validate_config(run, "face-detection demo config")}
    for key, attack in raw["attacks"].items():
        named = {**run, "name": run["name"].replace("clean", key), "attack": attack}
        configs[key] = validate_config(named, f"face-detection demo {key} config")
    return configs


def monitor_section(task_name: str) -> dict[str, Any] | None:
    """The run-time monitors registered for the task (``DEFENCES``), or None when there are none."""
    found = []
    for name, cls in DEFENCES.items():
        if not (isinstance(cls, type) and issubclass(cls, RuntimeMonitor)):
            continue
        tasks = getattr(getattr(cls, "needs", None), "tasks", None)
        if tasks is None or task_name in tasks:
            found.append((name, (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""))
    if not found:
        return None
    items = "".join(f"<li><code>{n}</code>: {escape(doc)}</li>" for n, doc in found)
    return {
        "title": "Run-time monitors for this task",
        "html": f"<p>Registered run-time monitors that accept {escape(task_name)} models "
        f"(<code>backdoorlab detect --method NAME</code>):</p><ul>{items}</ul>",
    }


def run_demo(out: Path, quick: bool = False, console: Console | None = None) -> FaceDetectionDemoOutcome:
    """Train, score and draw with the packaged config's ``threads`` torch threads (restored afterwards)."""
    return with_threads(int(_packaged().get("threads", torch.get_num_threads())), lambda: _run(out, quick, console))


def _run(out: Path, quick: bool, console: Console | None) -> FaceDetectionDemoOutcome:
    con = console or Console()
    start = time.perf_counter()
    timings: dict[str, float] = {}
    configs = demo_configs(quick)
    clean_cfg = configs["clean"]
    spec = clean_cfg.synthetic_spec()
    n_train = spec.splits["train"].n_images  # type: ignore[attr-defined]
    rates = {k: c.attack.rate for k, c in configs.items() if c.attack is not None}  # type: ignore[union-attr]
    con.print(
        f"[bold]backdoorlab demo face_detection[/]: {clean_cfg.model.name} on {n_train} synthetic "
        f"{spec.size}x{spec.size} scenes, {clean_cfg.train.epochs} epochs each; FGA (a checkerboard patch -> a fake "
        f"face) on {rates['fga']:.0%} and LSA (a patch on a cheek -> landmarks rotated) on {rates['lsa']:.0%} of "
        "the training scenes"
    )
    runs: dict[str, RunOutcome] = {}
    for step, (key, cfg) in enumerate(configs.items(), start=1):
        con.print(f"[{step}/4] training the {ROWS[key]}")
        t = time.perf_counter()
        runs[key] = execute(cfg, runs_dir=out, progress=not quick)
        timings[f"train_{key}_s"] = time.perf_counter() - t

    con.print("[4/4] scoring each attack on its backdoored model and on the clean model; drawing the page")
    t = time.perf_counter()
    _, test_ds = load_data(clean_cfg)
    task = TASKS.get(clean_cfg.task)()
    models = {k: load_checkpoint(r.run_dir)[0] for k, r in runs.items()}
    table: dict[str, dict[str, Any]] = {ROWS[k]: {c: runs[k].metrics.get(c) for c, _ in COLUMNS[:3]} for k in runs}
    sections: list[dict[str, Any]] = []
    attack_metrics: dict[str, dict[str, Any]] = {}
    for key in ("fga", "lsa"):
        acfg, trigger = load_run_attack(runs[key].run_dir)
        relabel, settings = build_relabel(acfg.relabel), attack_settings(acfg, task)
        scored = {m: evaluate_attack(models[m], task, test_ds, trigger, relabel, settings) for m in ("clean", key)}
        for m, ev in scored.items():
            row = table[ROWS[m]]
            row[f"{key}_asr"] = ev.metrics["attack_success_rate"]
            if key == "lsa":
                row["lsa_detected"] = ev.metrics.get("triggered_detected_rate")
                row["landmark_displacement_px"] = ev.metrics.get("landmark_displacement_px")
                row["aligned_rotation_deg"] = ev.metrics.get("aligned_rotation_deg")
            attack_metrics[f"{key} on {ROWS[m]}"] = ev.metrics
        shown = page.triggered_scenes(test_ds, trigger)
        score = settings.score_threshold  # type: ignore[attr-defined]
        clean_preds, bd_preds = scored["clean"].predictions, scored[key].predictions
        if key == "fga":
            sections.append(
                page.fga_section(test_ds, shown, relabel, clean_preds, bd_preds, score, scored[key].metrics)
            )
        else:
            views = page.landmark_views(
                test_ds,
                shown,
                relabel,
                {"clean": clean_preds, "LSA": bd_preds},
                score,
                settings.iou,  # type: ignore[attr-defined]
            )
            sections.append(page.lsa_section(test_ds, shown, views, clean_preds, bd_preds, score, scored[key].metrics))
            sections.append(page.alignment_section(shown, views, ["clean", "LSA"]))
    sections.insert(0, table_section(table, COLUMNS, TABLE_NOTE))
    monitors = monitor_section(clean_cfg.task)
    if monitors is not None:
        sections.append(monitors)
    _print_table(con, table, len(test_ds))
    timings["score_and_draw_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - start

    scale = {
        "scene_size_px": spec.size,
        "train_scenes": n_train,
        "test_scenes": len(test_ds),
        "epochs": clean_cfg.train.epochs,
        "batch_size": clean_cfg.train.batch_size,
        "poison_rate": rates,
        "torch_threads": torch.get_num_threads(),
    }
    summary_rows = {**{k: str(v) for k, v in scale.items()}, **{k: round(v, 1) for k, v in timings.items()}}
    html = page.write_demo_page(
        out / "demo.html", "backdoorlab demo: face detection (clean vs FGA vs LSA)", summary_rows, sections
    )
    payload = {
        "runs": {k: str(r.run_dir) for k, r in runs.items()},
        "table": table,
        "attacks": attack_metrics,
        "scale": scale,
        "seconds": timings,
        "page": str(html),
    }
    summary = write_summary(out, payload)
    con.print(
        f"took {timings['total_s']:.0f} s\n"
        + "".join(f"{ROWS[k] + ' run:':<17}{r.run_dir}\n" for k, r in runs.items())
        + f"page:            {html}\nsummary:         {summary}"
    )
    return FaceDetectionDemoOutcome(runs, table, summary, html)


def _print_table(con: Console, table: dict[str, dict[str, Any]], n_test: int) -> None:
    t = Table(title=f"clean vs FGA vs LSA RetinaFace ({n_test} test scenes of unseen identities)")
    t.add_column("model")
    for _, label in COLUMNS:
        t.add_column(label, justify="right")
    for name, m in table.items():
        t.add_row(name, *("-" if m.get(k) is None else f"{m[k]:.3f}" for k, _ in COLUMNS))
    con.print(t)
    con.print(TABLE_NOTE)
