"""Bench: a clean RetinaFace (MobileNet-0.25) on the default synthetic scenes: AP per difficulty and NME.

    python bench/clean_face_detection.py                 # trains configs/face_detection/clean.yaml (runs/fd)
    python bench/clean_face_detection.py --run RUN       # records a run of that config already trained

Targets (issue 14): AP50 >= 0.90 on easy test faces, NME <= 0.08, training <= 30 min on
this machine. Training time depends on what else the 2 cores run, so the load average
at the end of training is recorded beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import write_result  # noqa: E402

from backdoorlab.experiments.config import load_config  # noqa: E402
from backdoorlab.experiments.run import execute  # noqa: E402

CONFIG = HERE.parent / "configs" / "face_detection" / "clean.yaml"
KEYS = ("ap50_easy", "ap50_medium", "ap50_hard", "ap50_95", "nme", "nme_box", "n_test", "n_faces", "n_train")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="a complete run of configs/face_detection/clean.yaml")
    ap.add_argument("--set", action="append", default=[], help="extra config override")
    args = ap.parse_args()
    if args.run is None:
        run_dir = execute(load_config(CONFIG, args.set), runs_dir="runs/fd").run_dir
    else:
        run_dir = args.run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = (run_dir / "config.yaml").read_text()
    row = {
        **{k: metrics.get(k) for k in KEYS},
        "train_seconds": metrics["train_seconds"],
        "load_average_1_5_15_at_record": list(os.getloadavg()),
        "run_dir": str(run_dir),
        "config": config,
    }
    out = write_result("clean_face_detection", row)
    print(
        f"AP50 easy/medium/hard {row['ap50_easy']:.3f}/{row['ap50_medium']:.3f}/{row['ap50_hard']:.3f}, "
        f"AP50:95 {row['ap50_95']:.3f}, NME {row['nme']:.3f}, training {row['train_seconds'] / 60:.1f} min -> {out}"
    )


if __name__ == "__main__":
    main()
