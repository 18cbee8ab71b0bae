"""Run-time monitors against the face-detection backdoors (FGA, LSA): how many triggered images each flags.

    PYTHONPATH=src python bench/face_monitors.py --clean RUN --fga RUN --lsa RUN [--n-fit 100] [--far 0.01]

For each detector (a clean one, an FGA one, an LSA one; run folders, e.g. from
``bench/face_monitors_train.py``) and each monitor (``geometry``, ``transform``,
``aux_cnn`` = ``aux_landmarker`` with its own CNN, ``aux_dlib`` = with dlib's predictor,
skipped when dlib is absent):

1. the run's test split is cut (seeded) into ``--n-fit`` images the monitor is fitted on
   and the held-out rest; all are clean;
2. the monitor is calibrated on the held-out clean images at ``--far`` (at most that share
   of them flagged; with 100 images and 1%, exactly one may be);
3. the held-out images are triggered with the FGA run's trigger and with the LSA run's
   trigger (only images where the trigger landed count: the LSA trigger needs a face of
   its minimum size); reported: the share flagged, the share flagged among images where
   the attack *succeeded* on this detector, and AUROC (held-out clean vs triggered);
   on the clean detector these are a control (a monitor that flags the patch itself, not
   the backdoor's behaviour, flags there too);
4. cost: CPU seconds (this process) to score the held-out clean images over CPU seconds of
   one detector pass on them (the task's prediction with post-processing), timed right
   before the monitor's scoring, after a warm-up pass, same threads. CPU time, because on
   a shared machine wall time drifts with the other jobs.

Writes ``bench/results/face_monitors.json`` (``--name``) and prints a table.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from common import write_result

from backdoorlab.defenses.face_monitors import AuxLandmarkerMonitor, GeometryMonitor, TransformMonitor
from backdoorlab.defenses.face_monitors.common import as_images, detect
from backdoorlab.experiments.run_folder import Run
from backdoorlab.metrics.average_precision import box_iou
from backdoorlab.metrics.detection import auroc
from backdoorlab.metrics.landmarks import nme_per_face

MONITORS = ("geometry", "transform", "aux_cnn", "aux_dlib")


def build(name: str, model: torch.nn.Module) -> Any:
    if name == "geometry":
        return GeometryMonitor(model, device="cpu")
    if name == "transform":
        return TransformMonitor(model, device="cpu")
    return AuxLandmarkerMonitor(model, landmarker="cnn" if name == "aux_cnn" else "dlib", device="cpu")


def triggered(run: Run, data: Any) -> tuple[np.ndarray, np.ndarray, Any]:
    """(uint8 triggered images, bool: the trigger landed, the placement) of ``run``'s trigger on ``data``."""
    idx = np.arange(len(data))
    images, ann = data.batch(idx)
    out, placement = run.trigger.place(images, ann, idx)
    if placement.instances is not None:
        landed = placement.instances.numpy() >= 0
    else:
        landed = ~torch.isnan(placement.boxes).any(1).numpy()
    return as_images(out)[1], landed, placement


def attack_succeeded(run: Run, preds: list[dict[str, np.ndarray]], data: Any, placement: Any) -> np.ndarray:
    """(N,) per image: the run's attack did what it was trained to on this detector (the task's success rule)."""
    settings = run.attack_settings
    relabel = run.relabel
    ok = np.zeros(len(preds), bool)
    if relabel.name == "fake_face":
        details = run.task.score_attack(preds, data, relabel, settings, [placement]).details
        return np.nan_to_num(details["best_iou"], nan=0.0) >= settings.iou
    from backdoorlab.tasks.face_detection.task import ground_truth

    gts = ground_truth(data)
    for i, j in enumerate(placement.instances.tolist()):
        if j < 0:
            continue
        keep = preds[i]["scores"] >= settings.score_threshold
        boxes, lms = preds[i]["boxes"][keep], preds[i]["landmarks"][keep]
        if not len(boxes):
            continue
        ious = box_iou(gts[i]["boxes"][j : j + 1], boxes)[0]
        k = int(ious.argmax())
        if ious[k] < settings.iou:
            continue
        true, box, vis = gts[i]["landmarks"][j : j + 1], gts[i]["boxes"][j : j + 1], gts[i]["visible"][j : j + 1]
        target = relabel.rotate(torch.as_tensor(true), torch.as_tensor(box)).numpy()
        to_target = nme_per_face(lms[k : k + 1], target, vis, gt_boxes=box)[0]
        to_true = nme_per_face(lms[k : k + 1], true, vis, gt_boxes=box)[0]
        ok[i] = to_target <= settings.nme_tolerance and to_target < to_true
    return ok


def timed_pass(model: torch.nn.Module, images: torch.Tensor) -> float:
    """CPU seconds of this process for one detector pass (CPU time: the machine is shared, wall time drifts)."""
    t0 = time.process_time()
    detect(model, images)
    return time.process_time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clean", required=True)
    p.add_argument("--fga", required=True)
    p.add_argument("--lsa", required=True)
    p.add_argument("--monitors", default=",".join(MONITORS))
    p.add_argument("--n-fit", type=int, default=100)
    p.add_argument("--far", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="face_monitors")
    p.add_argument("--note", default="", help="recorded with the results (e.g. the scale of provisional models)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs = {"clean": Run(args.clean), "fga": Run(args.fga), "lsa": Run(args.lsa)}
    attacks = {"fga": runs["fga"], "lsa": runs["lsa"]}
    names = [m for m in args.monitors.split(",") if m]
    if "aux_dlib" in names and not AuxLandmarkerMonitor.dlib_available():
        print("aux_dlib: skipped (the dlib extra is not installed)", flush=True)
        names.remove("aux_dlib")
    results: dict[str, Any] = {}
    for role, run in runs.items():
        model, test = run.model.eval(), run.test_data
        order = np.random.default_rng([0, 7]).permutation(len(test))
        fit_data, held = test.subset(np.sort(order[: args.n_fit])), test.subset(np.sort(order[args.n_fit :]))
        fit_images, held_images = as_images(fit_data)[1], as_images(held)[1]
        held_tensor = as_images(held_images)[0]
        detect(model, held_tensor)  # warm-up: the first pass pays one-off costs (allocations, prior caches)
        views = {}
        for attack, arun in attacks.items():
            images, landed, placement = triggered(arun, held)
            preds = detect(model, as_images(images)[0])
            success = attack_succeeded(arun, preds, held, placement) if role == attack else np.zeros(len(held), bool)
            views[attack] = (images, landed, success)
        entry: dict[str, Any] = {
            "run": str(run.folder),
            "n_fit": len(fit_images),
            "n_held": len(held_images),
            "attack_success_on_held": {a: float(v[2][v[1]].mean()) for a, v in views.items() if a == role},
            "monitors": {},
        }
        for name in names:
            mon = build(name, model)
            t0 = time.perf_counter()
            mon.fit(fit_images)
            fit_s = time.perf_counter() - t0
            forward_s = timed_pass(model, held_tensor)  # measured next to the monitor's own, under the same load
            t0 = time.process_time()
            clean_scores = mon.score(held_images)
            score_s = time.process_time() - t0
            threshold = mon.calibrate(clean_scores, args.far)
            row: dict[str, Any] = {
                "fit_seconds": fit_s,
                "detector_cpu_seconds": forward_s,
                "score_cpu_seconds": score_s,
                "cost_ratio": score_s / forward_s,
                "threshold": threshold,
                "clean_flagged": float(np.mean(clean_scores >= threshold)),
                "fit_report": getattr(mon, "fit_report_", {}),
                "params": mon.params(),
            }
            for attack, (images, landed, success) in views.items():
                bad = mon.score(images[landed])
                labels = np.r_[np.zeros(len(clean_scores)), np.ones(len(bad))]
                row[attack] = {
                    "n_triggered": int(landed.sum()),
                    "flagged": float(np.mean(bad >= threshold)),
                    "auroc": auroc(np.r_[clean_scores, bad], labels),
                    "n_attack_succeeded": int(success[landed].sum()),
                    "flagged_where_attack_succeeded": (
                        float(np.mean(bad[success[landed]] >= threshold)) if success[landed].any() else None
                    ),
                }
            entry["monitors"][name] = row
            print(
                f"[{role}] {name}: fit {fit_s:.1f}s, cost x{row['cost_ratio']:.1f}, "
                + ", ".join(f"{a} flagged {row[a]['flagged']:.2f} AUROC {row[a]['auroc']:.2f}" for a in views),
                flush=True,
            )
        results[role] = entry
    payload = {"false_alarm_rate": args.far, "note": args.note, "results": results}
    out = write_result(args.name, payload)
    print_table(results)
    print(f"wrote {out}")


def print_table(results: dict[str, Any]) -> None:
    head = (
        f"{'detector':8} {'monitor':10} {'cost':>6} {'clean':>6} | {'FGA flag':>8} {'(succ.)':>8} {'AUROC':>6} "
        f"| {'LSA flag':>8} {'(succ.)':>8} {'AUROC':>6}"
    )
    print(head)
    print("-" * len(head))

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for role, entry in results.items():
        for name, row in entry["monitors"].items():
            f, ls = row["fga"], row["lsa"]
            print(
                f"{role:8} {name:10} {row['cost_ratio']:>5.1f}x {row['clean_flagged']:>6.2f} | "
                f"{f['flagged']:>8.2f} {num(f['flagged_where_attack_succeeded']):>8} {f['auroc']:>6.2f} | "
                f"{ls['flagged']:>8.2f} {num(ls['flagged_where_attack_succeeded']):>8} {ls['auroc']:>6.2f}"
            )


if __name__ == "__main__":
    main()
