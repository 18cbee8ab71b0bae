"""Train a tiny attacked gaze run and inspect it with SecureGaze, through the CLI; print the numbers as JSON.

Not collected (no ``test_`` prefix): :mod:`tests.invariants.test_gaze_pinned` runs it in a
subprocess whose CPU kernels are pinned (see there), and compares its output with the
values recorded before the core redesign (``pinned_gaze.json``). Usage::

    python tests/invariants/pinned_gaze_run.py WORK_DIR > numbers.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from helpers_experiments import seed_synthetic_cache, tiny_config  # noqa: E402

# metrics that measure the machine, not the model: excluded from the comparison
TIMING_KEYS = ("train_seconds", "train_samples_per_second", "eval_seconds", "data_seconds", "device")


def main(work: Path) -> dict:
    from typer.testing import CliRunner

    from backdoorlab.cli import app

    cache = work / "cache"
    seed_synthetic_cache(cache)
    cfg = tiny_config(cache, name="pinned")
    cfg["train"].update(epochs=12, lr=0.005)
    cfg["attack"] = {
        "trigger": {"name": "patch", "size": 0.25, "center": [0.8, 0.8]},
        "relabel": {"name": "target", "target_deg": [-20.0, 25.0]},
        "rate": 0.3,
        "seed": 0,
    }
    path = work / "pinned.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    out = runner.invoke(app, ["train", str(path), "--runs-dir", str(work / "runs"), "--quiet"])
    if out.exit_code != 0:
        raise SystemExit(f"train failed: {out.output}")
    run = next(p for p in (work / "runs").iterdir() if p.is_dir())
    metrics = json.loads((run / "metrics.json").read_text())
    params = ["steps=30", "explore_steps=10", "batch_size=32", "min_clean=32", "device=cpu", "threshold=1.0"]
    out = runner.invoke(
        app, ["detect", str(run), "--n-clean", "48", *[a for p in params for a in ("--param", p)]]
    )
    if out.exit_code != 0:
        raise SystemExit(f"detect failed: {out.output}")
    verdict = json.loads((run / "defence" / "securegaze" / "verdict.json").read_text())
    return {
        "metrics": {k: v for k, v in sorted(metrics.items()) if k not in TIMING_KEYS},
        "history": json.loads((run / "history.json").read_text()),
        "securegaze_score": verdict["score"],
        "securegaze_variance_ratio": verdict["details"].get("variance_ratio"),
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=2, sort_keys=True))
