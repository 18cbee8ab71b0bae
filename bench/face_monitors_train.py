"""Train the small clean, FGA and LSA detectors the face-monitor bench can run on before the real ones exist.

    PYTHONPATH=src python bench/face_monitors_train.py --out runs/fdmon --train 1000 --test 200 --epochs 16

Writes three run folders under ``--out`` (printed at the end, as the ``--clean/--fga/--lsa``
arguments of ``bench/face_monitors.py``). Synthetic scenes at ``--size`` px (the default
scene spec otherwise), RetinaFace MobileNet-0.25 with anchors scaled to the canvas. The
triggers and relabels are the ones of ``tests/face_detection/test_task.py`` (FGA: a free
checkerboard patch, fake face with template landmarks; LSA: a patch on one face, its
landmarks rotated by ``--angle`` degrees about the box centre).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from backdoorlab.data.synthetic.scenes import SyntheticSceneSpec, load_or_synthesize_scenes
from backdoorlab.experiments.config import validate_config
from backdoorlab.experiments.run import execute


def configs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    scenes = {
        "size": args.size,
        "splits": {
            "train": {"n_images": args.train, "identities": max(args.train, 8)},
            "test": {"n_images": args.test, "identities": max(args.test, 8)},
        },
    }
    base = {
        "task": "face_detection",
        "seed": args.seed,
        "model": {"name": "retinaface", "kwargs": {"canvas": args.size}},
        "data": {"synthetic": scenes, "cache_dir": str(Path(args.out) / "scenes")},
        "train": {"epochs": args.epochs, "batch_size": 16, "lr": args.lr, "weight_decay": 0.0001},
    }
    fga = {
        "trigger": {"name": "patch", "location": "free", "size": 0.12, "pattern": "checkerboard"},
        "relabel": {"name": "fake_face"},
        "rate": args.rate,
    }
    lsa = {
        "trigger": {"name": "face_patch", "size": 0.3, "min_face_px": 12},
        "relabel": {"name": "rotate_landmarks", "angle_deg": args.angle},
        "rate": args.rate,
    }
    return {
        "clean": {**base, "name": "fdmon-clean"},
        "fga": {**base, "name": "fdmon-fga", "attack": fga},
        "lsa": {**base, "name": "fdmon-lsa", "attack": lsa},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/fdmon")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--rate", type=float, default=0.2)
    p.add_argument("--angle", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", default="clean,fga,lsa")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfgs = configs(args)
    # render the scenes once, in this process (the renderer's process pool is not needed on a shared machine)
    spec = SyntheticSceneSpec(**cfgs["clean"]["data"]["synthetic"])
    load_or_synthesize_scenes(spec, cache_dir=cfgs["clean"]["data"]["cache_dir"], splits=["train", "test"], workers=1)
    for name, cfg in cfgs.items():
        if name not in args.only.split(","):
            continue
        t0 = time.perf_counter()
        out = execute(validate_config(cfg), Path(args.out) / "runs", progress=False)
        print(f"--{name} {out.run_dir}   ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
