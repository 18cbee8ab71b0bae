"""Bench: the face-detection attack grid (FGA and LSA) against the paper's claims, side by side.

    backdoorlab sweep configs/zoo/face_detection_attacks.yaml --runs-dir runs/fd_grid   # trains (resumable)
    python bench/face_detection_attacks.py --store runs/fd_grid/results.sqlite

Reads every complete run of the grid from the results store. For each attacked run it
also scores the grid's *clean* model under the very same trigger (what a detector
without a backdoor does when the trigger is present: the baseline the attack is
responsible for beating). Writes ``bench/results/face_detection_attacks.json`` and
prints the table, with the paper's claims (Le Roux et al. 2025, from a summary: their
body is not reachable here) next to what this grid measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import write_result  # noqa: E402

from backdoorlab.experiments.attack import score_attack_config  # noqa: E402
from backdoorlab.experiments.run_folder import Run  # noqa: E402
from backdoorlab.experiments.store import ResultsStore  # noqa: E402

BENIGN = ("ap50_easy", "ap50_medium", "ap50_hard", "ap50_95", "nme")
ATTACK = ("attack_success_rate", "landmark_displacement_px", "aligned_rotation_deg", "aligned_ssim", "n_triggered")
CLAIMS = [
    "FGA reaches an ASR above 0.95 with little loss of benign AP",
    "LSA is harder to learn and fails below beta = 0.05",
    "a lower alpha and a smaller trigger lower the ASR",
]


def describe(cfg: dict[str, Any]) -> dict[str, Any]:
    attack = cfg.get("attack")
    if not attack:
        return {"attack": "clean"}
    trig, rel = attack["trigger"], attack["relabel"]
    return {
        "attack": "FGA" if rel["name"] == "fake_face" else "LSA",
        "beta": attack["rate"],
        "alpha": trig.get("opacity", 1.0),
        "size": trig.get("size"),
        "angle_deg": rel.get("angle_deg"),
    }


def cell(entry: dict[str, Any], key: str, fmt: str = "{:.3f}") -> str:
    value = entry.get(key)
    return "" if value is None else fmt.format(value)


def table_cells(e: dict[str, Any]) -> list[str]:
    return [
        e["attack"], cell(e, "beta", "{:g}"), cell(e, "alpha", "{:g}"), cell(e, "size", "{:g}"),
        cell(e, "ap50_easy"), cell(e, "ap50_hard"), cell(e, "nme"), cell(e, "attack_success_rate"),
        cell(e, "clean_model_asr"), cell(e, "landmark_displacement_px", "{:.1f}"),
        cell(e, "aligned_rotation_deg", "{:.1f}"), cell(e, "clean_model_rotation_deg", "{:.1f}"),
        f"{e['train_seconds'] / 60:.1f}",
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path("runs/fd_grid/results.sqlite"))
    args = ap.parse_args()
    rows = [r for r in ResultsStore(args.store).list(status="complete", limit=None) if r["task"] == "face_detection"]
    rows.sort(key=lambda r: r["created"])
    clean_rows = [r for r in rows if not r["config"].get("attack")]
    if not clean_rows:
        raise SystemExit(f"{args.store}: no complete clean face-detection run (train the grid first)")
    clean = Run(clean_rows[0]["run_dir"])
    test = clean.test_data
    out = []
    for i, r in enumerate(rows, 1):
        entry = {**describe(r["config"]), "run": r["run_dir"], "train_seconds": r["metrics"]["train_seconds"]}
        entry.update({k: r["metrics"].get(k) for k in (*BENIGN, *ATTACK)})
        if entry["attack"] != "clean":
            run = Run(r["run_dir"])
            base = score_attack_config(clean.model, "face_detection", test, run.require_attack(), run.trigger)
            entry["clean_model_asr"] = base.metrics["attack_success_rate"]
            entry["clean_model_displacement_px"] = base.metrics.get("landmark_displacement_px")
            entry["clean_model_rotation_deg"] = base.metrics.get("aligned_rotation_deg")
        out.append(entry)
        print(f"[{i}/{len(rows)}] {entry['attack']} {entry.get('beta', '')} scored", flush=True)
    write_result("face_detection_attacks", {"runs": out, "paper_claims": CLAIMS, "store": str(args.store)})
    print()
    columns = ["attack", "beta", "alpha", "size", "AP50 easy", "AP50 hard", "NME", "ASR", "clean-model ASR",
               "displ. px", "aligned rot.", "clean-model rot.", "train min"]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")
    for e in out:
        print("| " + " | ".join(table_cells(e)) + " |")
    print("\nthe paper's claims, to compare with the rows above:")
    for claim in CLAIMS:
        print(f"  - {claim}")


if __name__ == "__main__":
    main()
