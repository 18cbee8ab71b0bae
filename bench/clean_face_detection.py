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

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import write_result  # noqa: E402

from backdoorlab.experiments.config import load_config  # noqa: E402
from backdoorlab.experiments.run import execute  # noqa: E402
from backdoorlab.experiments.run_folder import Run  # noqa: E402
from backdoorlab.metrics.landmarks import landmark_errors, nme_per_face  # noqa: E402
from backdoorlab.tasks.face_detection.task import ground_truth  # noqa: E402

YAW_BINS = ((0, 15), (15, 35), (35, 61))
WIDTH_BINS = ((0, 16), (16, 32), (32, 64), (64, 1024))

CONFIG = HERE.parent / "configs" / "face_detection" / "clean.yaml"
KEYS = ("ap50_easy", "ap50_medium", "ap50_hard", "ap50_95", "nme", "nme_box", "n_test", "n_faces", "n_train")


def landmark_breakdown(run_dir: Path) -> dict[str, object]:
    """Where the landmark error comes from: per point, as a share of the face width, by head yaw.

    Faces matched at IoU 0.5 with all five landmarks visible; the mean NME is dominated by
    small and turned faces (a small inter-ocular distance), so medians are given too.
    """
    run = Run(run_dir)
    data = run.test_data
    preds = run.task.predict(run.model, data)
    gts = ground_truth(data)
    errors = landmark_errors(preds, gts, iou=0.5)
    assert data.instances is not None
    keep = np.asarray([bool(gts[i]["visible"][j].all()) for i, j in zip(errors.image, errors.gt, strict=True)])
    widths = np.asarray(
        [gts[i]["boxes"][j, 2] - gts[i]["boxes"][j, 0] for i, j in zip(errors.image, errors.gt, strict=True)]
    )
    yaw = np.asarray([data.instances.rows(i)["yaw"][j] for i, j in zip(errors.image, errors.gt, strict=True)])
    share = errors.point_error_px[keep] / widths[keep, None]
    out: dict[str, object] = {
        "faces": int(keep.sum()),
        "nme_median": float(np.median(errors.nme[keep])),
        "point_error_over_width_mean": [round(float(v), 4) for v in share.mean(0)],
        "by_abs_yaw": {},
    }
    out["by_width_px"] = by_width(errors.nme[keep], widths[keep], template_nme(run, gts, errors)[keep])
    for lo, hi in YAW_BINS:
        m = (np.abs(yaw[keep]) >= lo) & (np.abs(yaw[keep]) < hi)
        out["by_abs_yaw"][f"{lo}-{hi}"] = {  # type: ignore[index]
            "faces": int(m.sum()),
            "error_over_width_median": float(np.median(share[m].mean(1))) if m.any() else None,
            "nme_median": float(np.median(errors.nme[keep][m])) if m.any() else None,
        }
    return out


def template_nme(run: Run, gts: list[dict[str, np.ndarray]], errors: object) -> np.ndarray:
    """Per matched face: the NME of a fixed landmark template (the training faces' mean, relative to their
    box) placed in the face's *true* box: what a detector that learnt nothing about pose would score."""
    train = ground_truth(run.splits[0].subset(np.arange(min(1000, len(run.splits[0])))))
    rel = [
        (lm - box[:2]) / (box[2:] - box[:2])
        for g in train
        for box, lm, vis in zip(g["boxes"], g["landmarks"], g["visible"], strict=True)
        if vis.all() and (box[2:] - box[:2]).min() > 4
    ]
    template = np.mean(rel, axis=0)
    pairs = list(zip(errors.image, errors.gt, strict=True))  # type: ignore[attr-defined]
    boxes = np.stack([gts[i]["boxes"][j] for i, j in pairs])
    true = np.stack([gts[i]["landmarks"][j] for i, j in pairs])
    visible = np.stack([gts[i]["visible"][j] for i, j in pairs])
    placed = boxes[:, None, :2] + template[None] * (boxes[:, None, 2:] - boxes[:, None, :2])
    return nme_per_face(placed, true, visible, gt_boxes=boxes)


def by_width(nme: np.ndarray, widths: np.ndarray, template: np.ndarray) -> dict[str, object]:
    """Median NME of the model and of the pose-blind template, per true face width (pixels)."""
    out: dict[str, object] = {}
    for lo, hi in WIDTH_BINS:
        m = (widths >= lo) & (widths < hi)
        out[f"{lo}-{hi}"] = {
            "faces": int(m.sum()),
            "nme_median": float(np.median(nme[m])) if m.any() else None,
            "nme_mean": float(np.mean(nme[m])) if m.any() else None,
            "template_nme_median": float(np.median(template[m])) if m.any() else None,
        }
    return out


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
        "landmarks": landmark_breakdown(run_dir),
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
