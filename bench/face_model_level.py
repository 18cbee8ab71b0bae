"""Bench: model-level defences on face detectors: LSA reversal, flicker on rendered clips, fine-tuning / fine-pruning.

    PYTHONPATH=src python bench/face_model_level.py --clean RUN --fga RUN --lsa RUN [--clips 40] [--n-clean 256]

The three runs are grid models (``configs/zoo/face_detection_attacks.yaml``: the clean
seed-0 model, FGA and LSA at beta = 0.1). Three parts, each as ``backdoorlab`` runs it:

1. ``lsa_reversal`` (``backdoorlab detect RUN --method lsa_reversal``, default settings)
   on every detector: the score (the rotation, in degrees, that a small patch makes all
   held-out faces share at least) and the signed angle it found. The threshold is the
   method's placeholder; the point is whether the LSA model scores apart from the others.
   Beside it the oracle: the LSA run's real trigger on the same clean faces, read out the
   way the search reads them (mean and SD of the rotation, and the score it would give).
2. ``flicker`` on ``--clips`` rendered clips of the test split (16 frames, default
   motion): half fit and calibrate the monitor (clean clips, ``--far``), the other half are
   scored clean and with the LSA run's trigger on every other frame; reported per
   detector: the share of triggered clips flagged and AUROC (held-out clean vs triggered).
   On the clean detector this is a control: there the trigger does nothing to learn from.
3. ``fine_tuning`` and ``fine_pruning`` (``backdoorlab mitigate RUN --method ...``, default
   schedules, ``--n-clean`` clean test scenes for the defender; fine-pruning also at prune
   ratios 0.5 and 0.2 besides its default 0.8) on the FGA and LSA models: the task's
   metrics and the attack's before and after, on the rest of the test split.

Writes ``bench/results/face_model_level.json`` (``--name``) and prints the tables. With
``--parts`` naming some of the parts, the others are kept from that file when it is about
the same three runs (the provenance is then the last command's).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import write_result
from table_common import load_result

from backdoorlab.data.synthetic.scene_sequences import render_scene_clips, trigger_frames
from backdoorlab.defenses import LandmarkShiftReversal
from backdoorlab.defenses.face_monitors.flicker import FlickerMonitor
from backdoorlab.experiments.defend import backdoor_metrics, detect_run, mitigate_run
from backdoorlab.experiments.run_folder import Run
from backdoorlab.metrics.detection import auroc
from backdoorlab.tasks.face_detection.task import ground_truth

#: (label, method, settings): the defaults, and fine-pruning gentler than its default ratio (0.8: the
#: detector's feature maps are 64 channels wide, and keeping 13 of them leaves nothing to fine-tune back)
MITIGATORS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("fine_tuning", "fine_tuning", {}),
    ("fine_pruning", "fine_pruning", {}),
    ("fine_pruning_0.5", "fine_pruning", {"prune_ratio": 0.5}),
    ("fine_pruning_0.2", "fine_pruning", {"prune_ratio": 0.2}),
)
#: what the mitigation table shows, before -> after
MITIGATION_KEYS = (
    "ap50_easy", "ap50_hard", "nme", "attack_success_rate", "landmark_displacement_px", "aligned_rotation_deg",
)  # fmt: skip


def reversal(runs: dict[str, Run], n_clean: int) -> dict[str, Any]:
    """The search's verdict per detector, and the oracle: what the LSA run's *real* trigger does, read the same way."""
    out = {}
    for role, run in runs.items():
        verdict, path = detect_run(run.folder, "lsa_reversal", n_clean, device="cpu")
        theta = real_trigger_rotations(run, runs["lsa"], n_clean)
        out[role] = {
            "score": verdict.score,
            "estimates": verdict.estimates,
            "std_rotation_deg": verdict.details["std_rotation_deg"],
            "seconds": verdict.seconds,
            "verdict": str(path),
            "real_trigger": {
                "faces": len(theta),
                "mean_deg": float(theta.mean()),
                "std_deg": float(theta.std()),
                "score": float(abs(theta.mean()) - theta.std()),
            },
        }
        print(
            f"[lsa_reversal] {role}: score {verdict.score:.2f}, {verdict.estimates}, {verdict.seconds:.0f}s; "
            f"real trigger {theta.mean():+.1f} +- {theta.std():.1f} deg on {len(theta)} faces",
            flush=True,
        )
    return out


def real_trigger_rotations(run: Run, lsa: Run, n_clean: int) -> np.ndarray:
    """Per face that carries the LSA run's trigger in the defender's clean set: its rotation on ``run``'s model."""
    clean, _ = run.defender_split(n_clean)
    idx = np.arange(len(clean))
    images, ann = clean.batch(idx)
    triggered, placement = lsa.trigger.place(images, ann, idx)
    image, boxes, theta = LandmarkShiftReversal(device="cpu").rotations(run.model, clean, triggered)
    gts = ground_truth(clean)
    chosen = placement.instances.numpy()  # the face of each image that got the trigger (-1: none)
    hit = [chosen[i] >= 0 and np.allclose(box, gts[i]["boxes"][chosen[i]]) for i, box in zip(image, boxes, strict=True)]
    return theta[np.asarray(hit, bool)]


def predicted_clips(run: Run, clips: list[Any]) -> list[list[dict[str, np.ndarray]]]:
    model = run.model.eval()
    return [run.task.predict(model, clip) for clip in clips]


def flicker(runs: dict[str, Run], n_clips: int, far: float) -> dict[str, Any]:
    """Fit on the first half of the clips, calibrate and score on the second: clean vs LSA-triggered frames."""
    lsa = runs["lsa"]
    spec = lsa.config.synthetic_spec()
    t0 = time.perf_counter()
    clips = render_scene_clips(spec, range(n_clips), split="test")
    frames = np.arange(0, len(clips[0]), 2)
    triggered = [trigger_frames(c, lsa.trigger, frames) for c in clips]
    print(f"[flicker] rendered {n_clips} clips in {time.perf_counter() - t0:.0f}s", flush=True)
    half = n_clips // 2
    out = {}
    for role in ("clean", "lsa"):
        run = runs[role]
        clean_preds, bad_preds = predicted_clips(run, clips), predicted_clips(run, triggered[half:])
        mon = FlickerMonitor(device="cpu").fit(clean_preds[:half])
        clean_scores = mon.score(clean_preds[half:])
        bad = mon.score(bad_preds)
        threshold = mon.calibrate(clean_scores, far)
        labels = np.r_[np.zeros(len(clean_scores)), np.ones(len(bad))]
        out[role] = {
            "n_fit": half,
            "n_scored": len(bad),
            "clean_median_jump_deg": mon.scale_,
            "threshold": threshold,
            "clean_flagged": float(np.mean(clean_scores >= threshold)),
            "triggered_flagged": float(np.mean(bad >= threshold)),
            "auroc": auroc(np.r_[clean_scores, bad], labels),
            "clean_scores": clean_scores.tolist(),
            "triggered_scores": bad.tolist(),
        }
        print(
            f"[flicker] {role}: triggered flagged {out[role]['triggered_flagged']:.2f}, AUROC {out[role]['auroc']:.2f}",
            flush=True,
        )
    return out


def mitigation(runs: dict[str, Run], n_clean: int) -> dict[str, Any]:
    """Each repair's before/after, and a reference: the clean detector under the same trigger, same scenes."""
    out: dict[str, Any] = {}
    for role in ("fga", "lsa"):
        _, held_out = runs[role].defender_split(n_clean)
        reference = backdoor_metrics(runs["clean"].model, runs[role], held_out, device="cpu")
        out[f"{role}/clean model"] = {"before": reference, "after": None, "seconds": None, "n_scored": len(held_out)}
        for label, method, params in MITIGATORS:
            folder = runs[role].folder
            out_dir = folder / "mitigated" / label
            record, _ = mitigate_run(folder, method, n_clean, params, device="cpu", out_dir=out_dir)
            out[f"{role}/{label}"] = {k: record[k] for k in ("before", "after", "seconds", "n_clean", "n_scored")}
            out[f"{role}/{label}"]["params"] = params
            b, a = record["before"], record["after"]
            print(
                f"[{label}] {role}: "
                + ", ".join(f"{k} {_num(b.get(k))} -> {_num(a.get(k))}" for k in MITIGATION_KEYS if k in b),
                flush=True,
            )
    return out


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def print_tables(result: dict[str, Any]) -> None:
    if "reversal" in result:
        print("\nlsa_reversal: score (deg), angle found (deg); the real LSA trigger: mean +- SD (deg), its score")
        for role, r in result["reversal"].items():
            t = r["real_trigger"]
            print(
                f"  {role:6} {r['score']:7.2f} {_num(r['estimates'].get('angle_deg')):>8} ({r['seconds']:.0f}s)"
                f"  {t['mean_deg']:+6.1f} +- {t['std_deg']:5.1f} {t['score']:7.2f}"
            )
    if "flicker" in result:
        print("\nflicker: detector, triggered clips flagged, AUROC")
        for role, r in result["flicker"].items():
            print(f"  {role:6} {r['triggered_flagged']:6.2f} {r['auroc']:6.2f}")
    if "mitigation" in result:
        print("\nmitigation (before -> after)")
        for key, r in result["mitigation"].items():
            keys = [k for k in MITIGATION_KEYS if k in r["before"]]
            after = r["after"] or {}
            cells = [f"{k} {_num(r['before'].get(k))}->{_num(after.get(k))}" for k in keys]
            print(f"  {key:20} " + ", ".join(cells) + (f" ({r['seconds']:.0f}s)" if r["seconds"] else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clean", required=True, type=Path)
    p.add_argument("--fga", required=True, type=Path)
    p.add_argument("--lsa", required=True, type=Path)
    p.add_argument("--parts", default="reversal,flicker,mitigation")
    p.add_argument("--clips", type=int, default=40)
    p.add_argument("--n-clean", type=int, default=256)
    p.add_argument("--far", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="face_model_level")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs = {"clean": Run(args.clean), "fga": Run(args.fga), "lsa": Run(args.lsa)}
    parts = set(args.parts.split(","))
    result: dict[str, Any] = {"runs": {k: str(r.folder) for k, r in runs.items()}, "far": args.far}
    previous = load_result(args.name)
    if previous and previous.get("runs") == result["runs"]:  # the parts not run now stay as measured before
        result.update({k: v for k, v in previous.items() if k in ("reversal", "flicker", "mitigation")})
    if "reversal" in parts:
        result["reversal"] = reversal(runs, args.n_clean)
    if "flicker" in parts:
        result["flicker"] = flicker(runs, args.clips, args.far)
    if "mitigation" in parts:
        result["mitigation"] = mitigation(runs, args.n_clean)
    out = write_result(args.name, result)
    print_tables(result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
