"""Bench: clean gaze error of GazeCNN and ResNet-18, and the eyes-masked control.

    python bench/clean_gaze.py --which gaze_cnn|resnet18|masked [--set key=value ...]

Each variant is one ordinary run (same code path as ``backdoorlab train``) of
``bench/configs/gaze_cnn_clean.yaml`` with a few overrides; the run folders go to
``bench/runs/`` and the headline numbers to ``bench/results/clean_gaze_<which>.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import write_result  # noqa: E402

from backdoorlab.experiments.config import load_config  # noqa: E402
from backdoorlab.experiments.run import execute  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "gaze_cnn": [],
    # ResNet-18 is ~6x the compute of GazeCNN per image: fewer images and epochs on 2 cores
    "resnet18": [
        "name=bench-resnet18",
        "model.name=resnet18",
        "model.kwargs={}",
        "data.synthetic.identities=400",
        "train.epochs=6",
        "train.lr=0.001",
    ],
    # more identities, fewer epochs: does cross-subject error keep falling with identities?
    "gaze_cnn_1000": [
        "name=bench-gaze-cnn-1000",
        "data.synthetic.identities=1000",
        "data.test_identities=100",
        "train.epochs=10",
    ],
    "gaze_cnn_1000_long": [
        "name=bench-gaze-cnn-1000-long",
        "data.synthetic.identities=1000",
        "data.test_identities=100",
        "train.epochs=13",
    ],
    # the eyes-masked control and its unmasked twin share data (400 identities) and schedule
    "gaze_cnn_400": ["name=bench-gaze-cnn-400", "data.synthetic.identities=400", "train.epochs=16"],
    "masked": [
        "name=bench-gaze-cnn-eyes-masked",
        "data.mask_eyes=true",
        "data.synthetic.identities=400",
        "train.epochs=16",
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--which", choices=sorted(VARIANTS), required=True)
    ap.add_argument("--set", action="append", default=[], help="extra config override")
    args = ap.parse_args()
    cfg = load_config(HERE / "configs" / "gaze_cnn_clean.yaml", VARIANTS[args.which] + args.set)
    outcome = execute(cfg, runs_dir=HERE / "runs", progress=False)
    m = outcome.metrics
    row = {
        "variant": args.which,
        "model": cfg.model.name,
        "clean_error_deg": m["clean_error_deg"],
        "clean_error_median_deg": m["clean_error_median_deg"],
        "n_test": m["n_test"],
        "n_train": m["n_train"],
        "epochs": cfg.train.epochs,
        "train_seconds": m["train_seconds"],
        "mask_eyes": cfg.data.mask_eyes,
        "run_dir": str(outcome.run_dir.relative_to(HERE.parent)),
        "config": cfg.model_dump(mode="json"),
    }
    out = write_result(f"clean_gaze_{args.which}", row)
    print(
        f"{args.which}: clean_error_deg={m['clean_error_deg']:.3f} (median {m['clean_error_median_deg']:.3f}, "
        f"n_test={m['n_test']}, train {m['train_seconds']:.0f} s) -> {out}"
    )


if __name__ == "__main__":
    main()
