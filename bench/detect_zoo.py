"""Bench: backdoor detection on the gaze model zoo (``configs/zoo/gaze.yaml``).

    backdoorlab sweep configs/zoo/gaze.yaml --runs-dir runs/zoo --workers 2     # build the zoo first
    python bench/detect_zoo.py --jobs 2          # every method in BENCH_METHODS

Protocol. Clean models with seeds 0-4 are *reference* models: each method calibrates its
threshold on them (``Detector.fit``, at most 10% of references flagged). Every other model
(clean seeds 5-9 and all backdoored ones) is *evaluated*. Each method gets the same
defender clean set: ``--n-clean`` images of the run's test split (identities never seen
in training). Per model the verdict is cached in ``RUN/defence/<method>/verdict.json``,
so an interrupted bench resumes. Reported per method, overall and per attack type
(clean evaluation models against that type's backdoored models): AUROC, TPR at FPR <= 0.1,
accuracy at the calibrated threshold, the angle between the estimated and the real target
on detected models, and detection seconds as a fraction of the model's training time
(same thread count: the zoo trains and this bench inspects one model per core).

Output: ``bench/results/detect_zoo.json`` and a table. Another zoo (``--store``, e.g. the
ResNet-18 slice of ``configs/zoo/gaze_resnet18.yaml``) writes ``detect_zoo_TAG.json``
with ``--tag TAG``, calibrated on its own ``--reference-seeds``, or with ``--reference-store``
on another zoo's reference clean models (the held-out slice of ``configs/zoo/gaze_holdout.yaml``,
whose every model is then evaluated).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS, write_result  # noqa: E402

from backdoorlab.report.zoo_report import write_zoo_report  # noqa: E402

REFERENCE_SEEDS = tuple(range(5))  # clean seeds that calibrate (--reference-seeds)
# name in the tables -> (detector, the settings this bench runs it with; CPU-sized)
BENCH_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "securegaze": ("securegaze", {}),
    # the default before the screened starts: one start from P = 0, 300 steps (explore_steps has no effect
    # with one start; 50, its value then, keeps the verdicts cached before it was lowered valid)
    "securegaze_no_scan": ("securegaze", {"scan_starts": 0, "explore_steps": 50, "steps": 300}),
    # the directed search: 4 starts pulled towards far-apart clean outputs, 40 steps each, the best continued to 300
    "securegaze_directed": (
        "securegaze",
        {"restarts": 4, "explore_steps": 40, "pull": 1.0, "scan_starts": 0, "steps": 300},
    ),
    "neural_cleanse": ("neural_cleanse", {"restarts": 2, "steps": 150}),
}
# Settings a method gained after verdicts were cached, each with the value it was introduced at
# (which reproduced what the method did before it had the setting). A setting missing here counts
# at its current default: list every setting that changes behaviour by itself, or a later change
# of its default would silently reuse stale verdicts (as scan_starts would have). Settings that
# only matter through a listed one (scan_images through scan_starts) need not be.
BEFORE_IT_EXISTED: dict[str, Any] = {
    "restarts": 1,
    "pull": 0.0,
    "target_lr": 0.02,
    "explore_steps": 50,
    "scan_starts": 0,
    "scan_shapes": [[0.2, 0.2]],  # squares only, before the bars
    "freeze_batchnorm": False,
    "paired": False,  # SecureGaze unlearning before the paired, self-distilled batches
    "clean_targets": "label",
}


def zoo_runs(store: Path) -> list[dict[str, Any]]:
    """Complete zoo runs: folder, seed, attack type, real target, training seconds."""
    con = sqlite3.connect(store)
    out = []
    for run_dir, cfg_json, metrics_json in con.execute(
        "select run_dir, config_json, metrics_json from runs where status = 'complete' order by created"
    ):
        cfg, metrics = json.loads(cfg_json), json.loads(metrics_json or "{}")
        attack = cfg.get("attack")
        relabel = (attack or {}).get("relabel", {})
        out.append(
            {
                "run_dir": run_dir,
                "seed": cfg["seed"],
                "attack": attack["trigger"]["name"] if attack else "clean",
                "relabel": relabel.get("name"),
                "target_deg": relabel.get("target_deg"),
                "train_seconds": metrics.get("train_seconds"),
                "attack_success_rate": metrics.get("attack_success_rate"),
                "adaptive": bool((attack or {}).get("adaptive")),
            }
        )
    return out


def reference_runs(store: Path, reference_seeds: tuple[int, ...]) -> list[dict[str, Any]]:
    """The reference clean models of another zoo, to calibrate on (a held-out zoo has no references of its own)."""
    if not store.is_file():
        sys.exit(f"{store} not found: build that zoo first")
    refs = [r for r in zoo_runs(store) if is_reference(r, reference_seeds)]
    if not refs:
        sys.exit(f"{store} has no complete clean model with a reference seed ({', '.join(map(str, reference_seeds))})")
    return refs


def inspect_one(name: str, run_dir: str, n_clean: int) -> dict[str, Any]:
    """Verdict of one model (cached in ``RUN/defence/NAME/`` while the settings match)."""
    import torch

    torch.set_num_threads(1)
    from backdoorlab.experiments.defend import build_detector, detect_run

    method, params = BENCH_METHODS[name]
    folder = Path(run_dir) / "defence" / name
    cached = folder / "verdict.json"
    if cached.is_file():
        v = json.loads(cached.read_text())
        current = build_detector(method, params, "cpu").params()
        defaults = build_detector(method, {}, "cpu").params()
        if cache_matches(v["details"]["params"], current, defaults) and v["details"]["n_clean"] == n_clean:
            return v
    verdict, _ = detect_run(Path(run_dir), method, n_clean, params, device="cpu", out_dir=folder)
    return verdict.to_json()


def cache_matches(cached: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any]) -> bool:
    """Whether a verdict made with ``cached`` settings is one the ``current`` settings would make.

    Every setting is compared (so changing a method's default invalidates the cache), except
    the device; a setting the method gained after the verdict was made counts at the value
    that reproduces the old behaviour: :data:`BEFORE_IT_EXISTED`, else its default.
    """
    flat_cached, flat_current, flat_defaults = _flatten(cached), _flatten(current), _flatten(defaults)
    return all(
        flat_cached.get(k, BEFORE_IT_EXISTED.get(k.rsplit(".", 1)[-1], flat_defaults.get(k))) == v
        for k, v in flat_current.items()
        if k.rsplit(".", 1)[-1] != "device"
    )


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings (a mitigator's detector and fine-tuning) as one level of dotted keys."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def angle_deg(a: list[float], b: list[float]) -> float:
    from backdoorlab.geometry import angular_error_deg

    return float(angular_error_deg(np.radians([a]), np.radians([b]))[0])


def is_reference(run: dict[str, Any], reference_seeds: tuple[int, ...] = REFERENCE_SEEDS) -> bool:
    return run["attack"] == "clean" and run["seed"] in reference_seeds


# A backdoored model whose attack success rate (with its real trigger, on its own test split)
# is below this did not learn its backdoor: it is reported in a group of its own, since no
# detector of backdoors can be faulted for not finding one that is not there.
LEARNED_ASR = 0.5


def kind(run: dict[str, Any]) -> str:
    """The attack group of a backdoored run: trigger name; adaptive, shift and unlearned variants apart."""
    if run["adaptive"]:
        return f"{run['attack']} (adaptive)"
    if run["relabel"] != "target":
        return f"{run['attack']} ({run['relabel']} relabel)"
    if (run["attack_success_rate"] or 0.0) < LEARNED_ASR:
        return f"{run['attack']} (not learned, ASR < {LEARNED_ASR})"
    return str(run["attack"])


def summarise(
    method: str,
    runs: list[dict[str, Any]],
    verdicts: list[dict[str, Any]],
    reference_seeds: tuple[int, ...] = REFERENCE_SEEDS,
) -> dict[str, Any]:
    from backdoorlab.defenses.base import calibrated_threshold
    from backdoorlab.metrics.detection import accuracy_at, auroc, tpr_at_fpr

    pairs = list(zip(runs, verdicts, strict=True))
    ref = [v["score"] for r, v in pairs if is_reference(r, reference_seeds)]
    threshold = calibrated_threshold(ref, 0.1)
    ev = [(r, v) for r, v in pairs if not is_reference(r, reference_seeds)]
    clean = [(r, v) for r, v in ev if r["attack"] == "clean"]
    backdoored = [(r, v) for r, v in ev if r["attack"] != "clean"]
    groups = {
        "overall": backdoored,
        "overall, fixed target, learned, not adaptive": [(r, v) for r, v in backdoored if kind(r) == r["attack"]],
    }
    for r, v in backdoored:
        groups.setdefault(kind(r), []).append((r, v))

    def metrics(bd: list[tuple[dict, dict]]) -> dict[str, Any]:  # type: ignore[type-arg]
        labels = np.array([0] * len(clean) + [1] * len(bd))
        scores = np.array([v["score"] for _, v in clean + bd])
        detected_targets = [
            angle_deg(v["estimated_target_deg"], r["target_deg"])
            for r, v in bd
            if v["score"] >= threshold and r["relabel"] == "target" and v.get("estimated_target_deg")
        ]
        return {
            "n_clean": len(clean),
            "n_backdoored": len(bd),
            "auroc": auroc(scores, labels),
            "tpr_at_fpr_0.1": tpr_at_fpr(scores, labels, 0.1),
            "accuracy": accuracy_at(scores, labels, threshold),
            "target_error_deg_mean": float(np.mean(detected_targets)) if detected_targets else None,
            "n_detected_with_target": len(detected_targets),
        }

    seconds = [v["seconds"] for _, v in ev]
    ratios = [v["seconds"] / r["train_seconds"] for r, v in ev if r["train_seconds"]]
    return {
        "threshold": threshold,
        "reference_scores": ref,
        "groups": {k: metrics(g) for k, g in groups.items()},
        "seconds_mean": float(np.mean(seconds)),
        "seconds_over_train_mean": float(np.mean(ratios)) if ratios else None,
        "models": [
            {
                **{k: r[k] for k in ("run_dir", "seed", "attack", "target_deg", "attack_success_rate", "adaptive")},
                **{k: v.get(k) for k in ("score", "estimated_target_deg", "seconds")},
                "reference": is_reference(r, reference_seeds),
                "group": "clean" if r["attack"] == "clean" else kind(r),
            }
            for r, v in pairs
        ],
    }


def _mark(text: str, met: bool) -> str:
    return f"{text} ({'met' if met else 'missed'})"


def table(results: dict[str, Any]) -> str:
    """Methods x attack groups, each figure marked against the issue's target (printed and in the README)."""
    lines = [
        "| method | backdoored models | clean / backdoored | AUROC (target >= 0.95) | TPR at FPR <= 0.1 | accuracy "
        "| target error on detected (target <= 5 deg) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, res in results.items():
        for group in sorted(res["groups"], key=lambda g: (not g.startswith("overall"), g)):
            m = res["groups"][group]
            te = m["target_error_deg_mean"]
            te_txt = "-" if te is None else _mark(f"{te:.1f} ({m['n_detected_with_target']} models)", te <= 5)
            auc = _mark(f"{m['auroc']:.2f}", m["auroc"] >= 0.95)
            lines.append(
                f"| {method} | {group} | {m['n_clean']} / {m['n_backdoored']} | {auc} "
                f"| {m['tpr_at_fpr_0.1']:.2f} | {m['accuracy']:.2f} | {te_txt} |"
            )
        ratio = res["seconds_over_train_mean"]
        lines.append(
            f"| {method} | time per model | | {res['seconds_mean']:.0f} s, "
            f"{_mark(f'{ratio:.2f}x its training time', ratio <= 0.5)} (target <= 0.5x) | | | |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("runs/zoo/results.sqlite"))
    ap.add_argument("--methods", default=",".join(BENCH_METHODS), help=f"some of {', '.join(BENCH_METHODS)}")
    ap.add_argument("--n-clean", type=int, default=256)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--report-only", action="store_true", help="skip detection: rewrite the HTML from the JSON")
    ap.add_argument("--tag", default="", help="another zoo: results go to detect_zoo_TAG.json/.html")
    ap.add_argument("--reference-seeds", default=",".join(map(str, REFERENCE_SEEDS)), help="clean seeds that calibrate")
    ap.add_argument(
        "--reference-store",
        type=Path,
        help="calibrate on the reference clean models of another zoo (every model of --store is then evaluated)",
    )
    args = ap.parse_args()
    name = f"detect_zoo_{args.tag}" if args.tag else "detect_zoo"
    refs = tuple(int(v) for v in args.reference_seeds.split(","))
    if args.report_only:
        print(write_zoo_report(RESULTS / f"{name}.json", RESULTS / f"{name}.html"))
        return
    if not args.store.is_file():
        sys.exit(f"{args.store} not found: build the zoo first (see this script's docstring)")
    runs = zoo_runs(args.store)
    if args.reference_store:
        if clash := sorted(r["seed"] for r in runs if is_reference(r, refs)):
            sys.exit(f"clean models of {args.store} have reference seeds {clash}: they would calibrate, not be scored")
        runs = reference_runs(args.reference_store, refs) + runs
    results: dict[str, Any] = {}
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        for method in args.methods.split(","):
            jobs = [pool.submit(inspect_one, method, r["run_dir"], args.n_clean) for r in runs]
            verdicts = [j.result() for j in jobs]
            detector, params = BENCH_METHODS[method]
            summary = summarise(method, runs, verdicts, refs)
            results[method] = {"detector": detector, "params": params, **summary}
            print(f"{method}: done", flush=True)
    record = {"n_clean": args.n_clean, "reference_seeds": list(refs), "methods": results}
    if args.reference_store:
        record["reference_store"] = str(args.reference_store)
    out = write_result(name, record)
    write_zoo_report(out, RESULTS / f"{name}.html")
    print(table(results))


if __name__ == "__main__":
    main()
