"""The demo (``make demo``): train and evaluate a clean gaze model on synthetic faces.

Until the attack issue lands, the main job is the clean pipeline end to end: render
the embedded data, train GazeCNN, evaluate cross-subject, write the run folder, the
report and a gallery, and print a summary. ``quick`` shrinks everything so that tests
can run the same code path in seconds.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from backdoorlab.experiments.config import RunConfig, validate_config
from backdoorlab.experiments.run import RunOutcome, execute, load_data
from backdoorlab.report.gallery import write_gallery

QUICK_OVERRIDES = {
    "data": {"synthetic": {"identities": 6, "images_per_identity": 40, "size": 32}, "test_identities": 2},
    "train": {"epochs": 1, "batch_size": 32},
    "model": {"kwargs": {"width": 8}},
    "report_samples": 4,
}


def demo_config(quick: bool = False) -> RunConfig:
    raw = yaml.safe_load((resources.files("backdoorlab") / "configs" / "demo_gaze.yaml").read_text())
    if quick:
        raw = _merge(raw, QUICK_OVERRIDES)
        raw["name"] = "demo-quick"
    return validate_config(raw, "demo config")


def _merge(base: dict, extra: dict) -> dict:  # type: ignore[type-arg]
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def run_demo(out: Path, quick: bool = False, console: Console | None = None) -> RunOutcome:
    con = console or Console()
    cfg = demo_config(quick)
    con.print(
        f"[bold]backdoorlab demo[/]: {cfg.name} — {cfg.model.name} on synthetic "
        f"{cfg.data.synthetic.size}x{cfg.data.synthetic.size} faces, "
        f"{cfg.data.synthetic.identities} identities x {cfg.data.synthetic.images_per_identity} images"
    )
    outcome = execute(cfg, runs_dir=out, progress=not quick)
    train_ds, _ = load_data(cfg)  # cached by now: this only memory-maps it
    gallery = write_gallery(train_ds, outcome.run_dir / "gallery.png", n=16, ncols=8)
    m = outcome.metrics
    table = Table(title="clean gaze model (cross-subject test identities)")
    for col in ("model", "clean_error_deg", "median", "n_test", "train_seconds"):
        table.add_column(col, justify="right")
    table.add_row(
        cfg.model.name,
        f"{m['clean_error_deg']:.2f}",
        f"{m['clean_error_median_deg']:.2f}",
        str(m["n_test"]),
        f"{m['train_seconds']:.0f}",
    )
    con.print(table)
    con.print(f"run folder: {outcome.run_dir}\nreport:     {outcome.run_dir / 'report.html'}\ngallery:    {gallery}")
    return outcome
