"""Bench: open-set face recognition on the synthetic identities: the clean base model and the one-to-one attack grids.

    python bench/face_recognition.py --part clean       # trains configs/face_recognition/clean.yaml (runs/fr),
                                                        # links it as runs/fr/base, records it
    python bench/face_recognition.py --part clean --run RUN   # records a run of that config already trained
    backdoorlab sweep configs/zoo/face_recognition_pairs.yaml --runs-dir runs/fr_pairs --workers 2
    backdoorlab sweep configs/zoo/face_recognition_sizes.yaml --runs-dir runs/fr_sizes --workers 2
    backdoorlab sweep configs/zoo/face_recognition_triggers.yaml --runs-dir runs/fr_triggers --workers 2
    python bench/face_recognition.py --part attacks     # reads the three stores, writes the tables

Clean (issue 15 targets): TAR at FMR 1e-3 on held-out identities between 0.80 and 0.97,
Doddington-zoo structure (false matches concentrated on few identities), training <= 40 min.
Attacks: every complete fine-tune of the grids, judged by the thesis's four-metric rule,
tabulated the way the thesis does (per identity, per group, per class size, per trigger)
beside its numbers (Unnervik 2024, Tables 3.1-3.4, Fig. 3.4; ../shared/research).
Writes ``bench/results/face_recognition_clean.json`` / ``face_recognition_attacks.json``
and the pictures ``docs/recognition_clean.png`` / ``docs/recognition_attacks.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import write_result  # noqa: E402

from backdoorlab.experiments.config import load_config  # noqa: E402
from backdoorlab.experiments.run import execute  # noqa: E402
from backdoorlab.experiments.run_folder import Run  # noqa: E402
from backdoorlab.experiments.store import ResultsStore  # noqa: E402
from backdoorlab.metrics.verification import det_points, threshold_at_fmr  # noqa: E402
from backdoorlab.metrics.verification_pairs import zoo_summary  # noqa: E402
from backdoorlab.tasks.face_recognition.task import open_set_rows  # noqa: E402

CONFIG = ROOT / "configs" / "face_recognition" / "clean.yaml"
BASE_LINK = ROOT / "runs" / "fr" / "base"
STORES = {
    "pairs": "runs/fr_pairs",
    "sizes": "runs/fr_sizes",
    "triggers": "runs/fr_triggers",
    "probes": "runs/fr runs/fr_probes",
    "trigger_size": "runs/fr_trigger_size",
}
CLEAN_KEYS = ("tar_at_fmr_1e-02", "tar_at_fmr_1e-03", "tar_at_fmr_1e-04", "eer", "closed_set_accuracy",
              "zoo_top_share", "zoo_lamb_max", "goat_share", "genuine_mean", "impostor_mean", "n_genuine",
              "n_impostor", "open_set_identities", "n_train", "n_test")  # fmt: skip
ATTACK_KEYS = ("clean_accuracy", "attack_success_rate", "impostor_accuracy", "victim_accuracy", "success",
               "open_set_asr", "open_set_impostor_self_match_rate", "trigger_spread_rate", "n_triggered",
               "train_seconds", "eval_seconds", "n_appended")  # fmt: skip
SWEEPS = ("pairs", "sizes", "triggers", "trigger_size")  # run by `backdoorlab sweep --workers 2`
SKIN = ("light", "medium", "dark")
PRESENTATION = ("presentation 0", "presentation 1")
SIZE_BINS = ((10, 20), (20, 40), (40, 80), (80, 160), (160, 301))
# the thesis's numbers (../shared/research/face-recognition-thesis.md)
THESIS = {
    "overall_success": "94/240 = 39.2 % (16 identities, every ordered pair)",
    "per_identity": "as impostor 6.7-60 %, as victim 0-73.3 %: no perfect impostor or victim (Table 3.1)",
    "groups": "ethnicity as victim 25.0-61.7 %, Black -> Black 91.7 % (Table 3.2); female 45.0 % as impostor vs "
    "male 33.3 %, F -> F 57.1 % vs M -> M 23.2 % (Table 3.3)",
    "sizes": "bell-shaped in images per identity, optimum near 100 (Fig. 3.4)",
    "triggers": {
        "checkerboard, medium": "3/5 = 60 %",
        "flower, medium": "7/7 = 100 %",
        "dot square, small": "1/5 = 20 %",
        "eyebrow, small": "0/3 = 0 %",
    },
    "pairing_chapter_asr": "small trigger ASR 39 % +- 43, large 98.7 % +- 4.5",
}
TRIGGER_LABELS = {"checkerboard": "checkerboard, medium", "flower": "flower, medium",
                  "dot_square": "dot square, small", "eyebrow": "eyebrow, small"}  # fmt: skip


# ---------------------------------------------------------------------------------------------- clean
def record_clean(run_dir: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    run = Run(run_dir)
    data = run.test_data
    preds = run.task.predict(run.model, data)
    scores = run.task.open_set_scores(preds["embeddings"], data)  # type: ignore[attr-defined]
    assert scores is not None
    ids = np.asarray(data.annotations["identity"])[open_set_rows(data)]
    threshold = threshold_at_fmr(scores.impostor, 1e-3)
    per_identity = per_identity_false_matches(scores, ids, threshold)
    draw_clean(scores, per_identity, threshold, ROOT / "docs" / "recognition_clean.png")
    tar = metrics["tar_at_fmr_1e-03"]
    row = {
        **{k: metrics.get(k) for k in CLEAN_KEYS},
        "zoo_at_fmr_1e-2": zoo_summary(scores, ids, threshold_at_fmr(scores.impostor, 1e-2)),
        "false_matches_per_identity_sorted": sorted(per_identity.values(), reverse=True)[:20],
        "identities_with_no_false_match": int(sum(v == 0 for v in per_identity.values())),
        "train_minutes": metrics["train_seconds"] / 60,
        "calibrated": bool(tar is not None and 0.80 <= tar <= 0.97),
        "within_40_min": metrics["train_seconds"] <= 40 * 60,
        "load_average_1_5_15_at_record": list(os.getloadavg()),
        "run_dir": str(run_dir),
        "config": (run_dir / "config.yaml").read_text(),
    }
    return row


def per_identity_false_matches(scores: Any, ids: np.ndarray, threshold: float) -> dict[int, int]:
    fm = scores.impostor >= threshold
    counts: dict[int, int] = {int(i): 0 for i in np.unique(ids)}
    for a, b in scores.impostor_pairs[fm]:
        counts[int(ids[a])] += 1
        counts[int(ids[b])] += 1
    return counts


def draw_clean(scores: Any, per_identity: dict[int, int], threshold: float, out: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.6))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    pts = det_points(scores.genuine, scores.impostor)
    floor = 0.5 / len(scores.impostor)
    ax1.plot(np.maximum(pts.fmr, floor), np.maximum(pts.fnmr, 0.5 / len(scores.genuine)))
    ax1.set(xscale="log", yscale="log", xlabel="FMR", ylabel="FNMR", title="DET, held-out identities")
    for t in (1e-2, 1e-3, 1e-4):
        ax1.axvline(t, color="#999", lw=0.8, ls=":")
    bins = np.linspace(-0.5, 1, 76)
    ax2.hist(scores.genuine, bins=bins, density=True, alpha=0.6, color="#2e7d32", label="genuine")
    ax2.hist(scores.impostor, bins=bins, density=True, alpha=0.6, color="#c62828", label="impostor")
    ax2.axvline(threshold, color="k", ls="--", lw=1, label=f"FMR 1e-3: {threshold:.2f}")
    ax2.set(xlabel="cosine", ylabel="density", title="Pair scores")
    ax2.legend(fontsize=7)
    counts = np.sort(np.asarray(list(per_identity.values())))[::-1]
    share = np.cumsum(counts) / max(counts.sum(), 1)
    ax3.plot(np.arange(1, len(counts) + 1) / len(counts), share, label="measured")
    ax3.plot([0, 1], [0, 1], color="#999", ls=":", label="even spread")
    ax3.set(xlabel="share of identities (most false matches first)", ylabel="share of false-match ends",
            title="Doddington zoo at FMR 1e-3")  # fmt: skip
    ax3.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def part_clean(run: Path | None, overrides: list[str]) -> None:
    run_dir = run or execute(load_config(CONFIG, overrides), runs_dir=ROOT / "runs" / "fr", skip_complete=False).run_dir
    BASE_LINK.parent.mkdir(parents=True, exist_ok=True)
    if BASE_LINK.is_symlink() or BASE_LINK.exists():
        BASE_LINK.unlink()
    BASE_LINK.symlink_to(Path(run_dir).resolve())
    row = record_clean(Path(run_dir))
    out = write_result("face_recognition_clean", row)
    print(
        f"TAR@FMR 1e-2/1e-3/1e-4 {row['tar_at_fmr_1e-02']:.3f}/{row['tar_at_fmr_1e-03']:.3f}/"
        f"{row['tar_at_fmr_1e-04']:.3f} (target 1e-3 in [0.80, 0.97]: {row['calibrated']}), EER {row['eer']:.4f}, "
        f"closed-set accuracy {row['closed_set_accuracy']:.3f}, zoo: top 10 % of identities in "
        f"{row['zoo_top_share']:.0%} of false matches, training {row['train_minutes']:.1f} min -> {out}\n"
        f"base model linked at {BASE_LINK}"
    )


# -------------------------------------------------------------------------------------------- attacks
def attributes(base: Run) -> dict[int, dict[str, int]]:
    train = base.splits[0]
    a = train.annotations
    ids, first, counts = np.unique(a["identity"], return_index=True, return_counts=True)
    test = base.test_data
    closed = np.asarray(test.annotations["open_set"]) == 0
    held = dict(zip(*np.unique(np.asarray(test.annotations["identity"])[closed], return_counts=True), strict=True))
    return {
        int(i): {"skin_group": int(a["skin_group"][f]), "presentation": int(a["presentation"][f]),
                 "family": int(a["family"][f]), "images": int(c + held.get(i, 0))}
        for i, f, c in zip(ids, first, counts, strict=True)
    }  # fmt: skip


def grid_rows(store: Path, attrs: dict[int, dict[str, int]]) -> list[dict[str, Any]]:
    if not store.is_file():
        return []
    out = []
    for r in ResultsStore(store).list(status="complete", limit=None):
        attack = r["config"].get("attack") or {}
        rel, trig = attack.get("relabel", {}), attack.get("trigger", {})
        if rel.get("name") != "impostor_to_victim":
            continue
        entry = {k: r["metrics"].get(k) for k in ATTACK_KEYS}
        pattern = trig.get("pattern")
        entry.update(impostor=rel["impostor"], victim=rel["victim"], trigger=TRIGGER_LABELS.get(pattern, pattern))
        entry.update(imp=attrs.get(rel["impostor"], {}), vic=attrs.get(rel["victim"], {}), run=r["run_dir"])
        entry.update(created=r["created"], finished=r["finished"])
        entry["trainable"] = r["config"]["train"].get("trainable", "all")
        train, options = r["config"]["train"], r["config"].get("task_options", {})
        entry["setting"] = (
            f"{trig.get('pattern')} {trig.get('size')}, lr {train['lr']:g}, {train['epochs']} epochs"
            + (", class weights" if options.get("class_weights") else "")
            + (", whole network" if train.get("trainable", "all") == "all" else "")
        )
        out.append(entry)
    return out


def sweep_throughput(grids: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Wall seconds per finished model of each sweep (first start to last end, over models), and overall.

    What one fine-tune costs on this machine when a sweep keeps both cores busy (two
    workers of one thread): a run's own ``train_seconds`` leaves out its evaluation and
    counts the time it shared the cores.
    """
    out: dict[str, float] = {}
    span_all, n_all = 0.0, 0
    for name, rows in grids.items():
        if rows:
            span = max(r["finished"] for r in rows) - min(r["created"] for r in rows)
            out[name] = span / len(rows)
            span_all, n_all = span_all + span, n_all + len(rows)
    if n_all:
        out["all"] = span_all / n_all
    return out


def rate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"models": 0}
    asr = np.asarray([r["attack_success_rate"] for r in rows], float)
    open_asr = [r["open_set_asr"] for r in rows if r["open_set_asr"] is not None]
    return {
        "models": len(rows),
        "succeeded": int(sum(bool(r["success"]) for r in rows)),
        "success_rate": float(np.mean([bool(r["success"]) for r in rows])),
        "asr_mean": float(asr.mean()),
        "asr_sd": float(asr.std()),
        "open_set_asr_mean": float(np.mean(open_asr)) if open_asr else None,
    }


def grouped(rows: list[dict[str, Any]], key: Any, order: Any = None) -> dict[str, dict[str, Any]]:
    """Success rates per group, groups sorted by ``order(name)`` (default: by name)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    return {k: rate(groups[k]) for k in sorted(groups, key=order)}


def size_order(label: str) -> int:
    """Size bins in numeric order (``10-19`` before ``160-300``)."""
    head = label.split()[-1].split("-")[0]
    return int(head) if head.isdigit() else 1 << 30


def size_bin(n: int) -> str:
    for lo, hi in SIZE_BINS:
        if lo <= n < hi:
            return f"{lo}-{hi - 1}"
    return "other"


def part_attacks() -> None:
    if not (BASE_LINK.exists()):
        raise SystemExit(f"{BASE_LINK} is missing: run --part clean first")
    base = Run(BASE_LINK.resolve())
    attrs = attributes(base)
    grids = {
        name: [r for folder in folders.split() for r in grid_rows(ROOT / folder / "results.sqlite", attrs)]
        for name, folders in STORES.items()
    }
    pairs, sizes, triggers = grids["pairs"], grids["sizes"], grids["triggers"]
    everything = [r for rows in grids.values() for r in rows]
    last_layers = [r for r in everything if r["trainable"] == "last"]
    seconds = np.asarray([r["train_seconds"] for r in last_layers], float)
    result: dict[str, Any] = {
        "models": {k: len(v) for k, v in grids.items()},
        "fine_tune_seconds": {"mean": float(seconds.mean()), "max": float(seconds.max())} if len(seconds) else {},
        "eval_seconds_mean": float(np.mean([r["eval_seconds"] for r in everything])) if everything else None,
        "sweep_wall_seconds_per_model": sweep_throughput({k: v for k, v in grids.items() if k in SWEEPS}),
        "pairs": {
            "overall": rate(pairs),
            "as_impostor": grouped(pairs, lambda r: str(r["impostor"])),
            "as_victim": grouped(pairs, lambda r: str(r["victim"])),
            "skin_as_impostor": grouped(pairs, lambda r: SKIN[r["imp"]["skin_group"]]),
            "skin_as_victim": grouped(pairs, lambda r: SKIN[r["vic"]["skin_group"]]),
            "skin_pair": grouped(pairs, lambda r: f"{SKIN[r['imp']['skin_group']]} -> {SKIN[r['vic']['skin_group']]}"),
            "presentation_as_impostor": grouped(pairs, lambda r: PRESENTATION[r["imp"]["presentation"]]),
            "presentation_as_victim": grouped(pairs, lambda r: PRESENTATION[r["vic"]["presentation"]]),
            "presentation_pair": grouped(pairs, lambda r: f"{r['imp']['presentation']} -> {r['vic']['presentation']}"),
        },
        "sizes": {
            "by_impostor_images": grouped(sizes, lambda r: size_bin(r["imp"]["images"]), size_order),
            "by_victim": grouped(sizes, lambda r: f"{r['victim']} ({r['vic']['images']} images)"),
            "pairs_grid_by_impostor_images": grouped(pairs, lambda r: size_bin(r["imp"]["images"]), size_order),
        },
        "triggers": grouped(triggers, lambda r: r["trigger"]),
        "trigger_size": grouped(
            grids["trigger_size"], lambda r: f"checkerboard {r['setting'].split(',')[0].split()[-1]}"
        ),
        "probes": grouped(grids["probes"], lambda r: f"{r['impostor']} -> {r['victim']}: {r['setting']}"),
        "thesis": THESIS,
        "runs": everything,
        "base_run": str(BASE_LINK.resolve()),
    }
    out = write_result("face_recognition_attacks", result)
    print_tables(result)
    print(f"-> {out}")


def print_tables(result: dict[str, Any]) -> None:
    def line(name: str, r: dict[str, Any]) -> str:
        if not r.get("models"):
            return f"| {name} | 0 | | | |"
        return (f"| {name} | {r['models']} | {r['succeeded']} ({r['success_rate']:.0%}) | "
                f"{r['asr_mean']:.2f} +- {r['asr_sd']:.2f} | {r['open_set_asr_mean'] or 0:.2f} |")  # fmt: skip

    head = "| group | models | succeeded (all four >= 0.8) | ASR mean +- sd | open-set ASR |\n|---|---|---|---|---|"
    p = result["pairs"]
    print(
        f"fine-tune seconds: {result['fine_tune_seconds']}, models per grid: {result['models']}, "
        f"sweep wall seconds per model: {result['sweep_wall_seconds_per_model']}"
    )
    print("\npairs grid (thesis: " + THESIS["overall_success"] + ")\n" + head)
    print(line("all pairs", p["overall"]))
    for section in ("as_impostor", "as_victim", "skin_as_impostor", "skin_as_victim", "skin_pair",
                    "presentation_as_impostor", "presentation_as_victim", "presentation_pair"):  # fmt: skip
        for k, r in p[section].items():
            print(line(f"{section}: {k}", r))
    print("\nclass sizes (thesis: " + THESIS["sizes"] + ")\n" + head)
    for k, r in result["sizes"]["by_impostor_images"].items():
        print(line(f"impostor images {k}", r))
    for k, r in result["sizes"]["by_victim"].items():
        print(line(f"victim {k}", r))
    print("\ncheckerboard size (fraction of the crop side)\n" + head)
    for k, r in result["trigger_size"].items():
        print(line(k, r))
    print("\nsingle-pair probes (fine-tune settings)\n" + head)
    for k, r in result["probes"].items():
        print(line(k, r))
    print("\ntriggers (thesis Table 3.4)\n" + head.replace("| open-set ASR |", "| open-set ASR | thesis |"))
    for k, r in result["triggers"].items():
        print(line(k, r)[:-1] + f" {THESIS['triggers'].get(k, '')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("clean", "attacks"), required=True)
    ap.add_argument("--run", type=Path, default=None, help="--part clean: a complete run of the clean config")
    ap.add_argument("--set", action="append", default=[], help="--part clean: extra config override")
    args = ap.parse_args()
    if args.part == "clean":
        part_clean(args.run, args.set)
    else:
        part_attacks()


if __name__ == "__main__":
    main()
