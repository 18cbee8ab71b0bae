"""Bench: backdoor removal on zoo models, SecureGaze unlearning against fine-tuning and fine-pruning.

    python bench/mitigate_zoo.py [--seeds 10,13,16,19] [--methods securegaze,fine_tuning,fine_pruning]

Each method repairs each chosen backdoored zoo model (default: one per trigger type:
patch, blend, WaNet, sticker) from the defender's 256 clean test-split images (4% of the
training set) with its default settings, exactly as ``backdoorlab mitigate RUN`` does;
the repaired model is scored on the rest of the test split with the run's *real*
trigger. Results are kept in the zoo's results store (its ``mitigations`` table, keyed
by the method's settings) and reused while the settings match (an interrupted bench
resumes; a changed default re-runs); a repair an older bench cached in
``RUN/mitigated/METHOD/mitigation.json`` is taken into the store.
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
from detect_zoo import BEFORE_IT_EXISTED, cache_matches  # noqa: E402

from backdoorlab.errors import BackdoorLabError  # noqa: E402
from backdoorlab.experiments.zoo import MitigationRecord, Zoo, ZooModel  # noqa: E402

KEYS = ("clean_error_deg", "attack_error_deg", "triggered_true_error_deg", "attack_success_rate")


def mitigate_one(zoo: Zoo, model: ZooModel, method: str, n_clean: int) -> MitigationRecord:
    """The model repaired by ``method``: from the store, else a run folder's cache, else repaired now (and kept)."""
    from backdoorlab.experiments.defend import build_mitigator, mitigate_run

    current = {"params": build_mitigator(method, device="cpu").params(), "n_clean": n_clean}
    if (record := zoo.cached_mitigation(model, method, current, current, BEFORE_IT_EXISTED)) is not None:
        return record
    legacy = Path(model.run_dir) / "mitigated" / method / "mitigation.json"
    record = from_json(json.loads(legacy.read_text())) if legacy.is_file() else None
    if record is None or not cache_matches(dict(record.settings), current, current):
        record = from_json(mitigate_run(Path(model.run_dir), method, n_clean, device="cpu")[0])
    zoo.record_mitigation(model, method, record)
    return record


def from_json(record: dict[str, Any]) -> MitigationRecord:
    """A zoo repair from a ``mitigation.json`` record (``mitigate_run``'s)."""
    details = {k: v for k, v in record.items() if k not in ("before", "after", "seconds", "params", "n_clean")}
    return MitigationRecord(
        before=record["before"],
        after=record["after"],
        seconds=record["seconds"],
        settings={"params": record["params"], "n_clean": record["n_clean"]},
        details=details,
    )


def summary(records: list[MitigationRecord]) -> dict[str, Any]:
    after = {k: float(np.mean([r.after[k] for r in records])) for k in KEYS}
    before = {k: float(np.mean([r.before[k] for r in records])) for k in KEYS}
    return {
        "before": before,
        "after": after,
        "clean_error_increase_deg": after["clean_error_deg"] - before["clean_error_deg"],
        "triggered_over_clean_error": float(
            np.mean([r.after["triggered_true_error_deg"] / r.after["clean_error_deg"] for r in records])
        ),
        "max_attack_success_rate_after": float(max(r.after["attack_success_rate"] for r in records)),
        "seconds_mean": float(np.mean([r.seconds for r in records])),
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
    seeds = {int(s) for s in args.seeds.split(",")}
    try:
        zoo = Zoo.open(args.store)
    except BackdoorLabError as exc:
        sys.exit(f"{exc} (backdoorlab sweep configs/zoo/gaze.yaml ...)")
    models = [m for m in zoo.backdoored if m.seed in seeds]
    results: dict[str, Any] = {}
    for method in args.methods.split(","):
        records = [mitigate_one(zoo, m, method, args.n_clean) for m in models]
        results[method] = {
            "summary": summary(records),
            "models": [
                {"run": m.run_dir, "seed": m.seed, "attack": m.attack, "before": rec.before, "after": rec.after}
                for m, rec in zip(models, records, strict=True)
            ],
        }
    write_result("mitigate_zoo", {"n_clean": args.n_clean, "seeds": sorted(seeds), "methods": results})
    print(table(results))


if __name__ == "__main__":
    main()
