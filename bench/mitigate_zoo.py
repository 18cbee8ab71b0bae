"""Bench: backdoor removal on zoo models, SecureGaze unlearning against fine-tuning and fine-pruning.

    python bench/mitigate_zoo.py [--seeds 10,13,16,19] [--methods securegaze,fine_tuning,fine_pruning]

Each method repairs each chosen backdoored zoo model (default: one per trigger type:
patch, blend, WaNet, sticker) from the defender's 256 clean test-split images (4% of the
training set) with its default settings, exactly as ``backdoorlab mitigate RUN`` does;
the repaired model is scored on the rest of the test split with the run's *real*
trigger. Results are cached in ``RUN/mitigated/METHOD/mitigation.json`` while the
method's settings match (an interrupted bench resumes; a changed default re-runs).
Targets from the issue: attack success rate <= 0.05 after SecureGaze, triggered true
error within 2x the clean error, clean error increase <= 0.5 deg.

Output: ``bench/results/mitigate_zoo.json`` and a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import write_result  # noqa: E402
from detect_zoo import cache_matches, zoo_runs  # noqa: E402

KEYS = ("clean_error_deg", "attack_error_deg", "triggered_true_error_deg", "attack_success_rate")


def mitigate_one(method: str, run_dir: str, n_clean: int) -> dict[str, Any]:
    from backdoorlab.experiments.defend import build_mitigator, mitigate_run

    cached = Path(run_dir) / "mitigated" / method / "mitigation.json"
    if cached.is_file():
        record = json.loads(cached.read_text())
        current = build_mitigator(method, device="cpu").params()
        if record["n_clean"] == n_clean and cache_matches(record["params"], current, current):
            return record
    record, _ = mitigate_run(Path(run_dir), method, n_clean, device="cpu")
    return record


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    after = {k: float(np.mean([r["after"][k] for r in records])) for k in KEYS}
    before = {k: float(np.mean([r["before"][k] for r in records])) for k in KEYS}
    return {
        "before": before,
        "after": after,
        "clean_error_increase_deg": after["clean_error_deg"] - before["clean_error_deg"],
        "triggered_over_clean_error": float(
            np.mean([r["after"]["triggered_true_error_deg"] / r["after"]["clean_error_deg"] for r in records])
        ),
        "max_attack_success_rate_after": float(max(r["after"]["attack_success_rate"] for r in records)),
        "seconds_mean": float(np.mean([r["seconds"] for r in records])),
    }


def _mark(met: bool) -> str:
    return "(met)" if met else "(missed)"


def table(results: dict[str, Any]) -> str:
    lines = [
        "| method | models | ASR before -> after (target <= 0.05) | triggered true error / clean error "
        "(target <= 2) | clean error change (target <= +0.5 deg) | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method, res in results.items():
        s = res["summary"]
        asr, ratio = s["after"]["attack_success_rate"], s["triggered_over_clean_error"]
        delta = s["clean_error_increase_deg"]
        lines.append(
            f"| {method} | {len(res['models'])} | {s['before']['attack_success_rate']:.3f} -> {asr:.3f} "
            f"{_mark(asr <= 0.05)} (worst {s['max_attack_success_rate_after']:.3f}) "
            f"| {ratio:.2f} {_mark(ratio <= 2)} | {delta:+.2f} {_mark(delta <= 0.5)} | {s['seconds_mean']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("runs/zoo/results.sqlite"))
    ap.add_argument("--seeds", default="10,13,16,19")
    ap.add_argument("--methods", default="securegaze,fine_tuning,fine_pruning")
    ap.add_argument("--n-clean", type=int, default=256)
    args = ap.parse_args()
    if not args.store.is_file():
        sys.exit(f"{args.store} not found: build the zoo first (backdoorlab sweep configs/zoo/gaze.yaml ...)")
    seeds = {int(s) for s in args.seeds.split(",")}
    runs = [r for r in zoo_runs(args.store) if r["seed"] in seeds and r["attack"] != "clean"]
    results: dict[str, Any] = {}
    for method in args.methods.split(","):
        records = [mitigate_one(method, r["run_dir"], args.n_clean) for r in runs]
        results[method] = {
            "summary": summary(records),
            "models": [
                {
                    "run": r["run_dir"],
                    "seed": r["seed"],
                    "attack": r["attack"],
                    "before": rec["before"],
                    "after": rec["after"],
                }
                for r, rec in zip(runs, records, strict=True)
            ],
        }
    write_result("mitigate_zoo", {"n_clean": args.n_clean, "seeds": sorted(seeds), "methods": results})
    print(table(results))


if __name__ == "__main__":
    main()
