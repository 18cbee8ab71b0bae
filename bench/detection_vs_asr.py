"""Bench: how a gaze backdoor detector's score depends on how well the backdoor was learned (its ASR).

What it measures. Over the models of one or more detection-bench results, for one method:
(a) the AUROC of backdoored against clean *evaluation* models (clean models that did not
calibrate the threshold) when only the backdoored models with attack success rate (ASR)
>= a are kept, for a = 0, 0.1, ..., 0.9, 0.95, with the number of backdoored models left
at each a; (b) the detection rate at the calibrated threshold (flagged when score >=
threshold, as in the zoo) per ASR bin [0, 0.25), [0.25, 0.5), [0.5, 0.8), [0.8, 0.95),
[0.95, 1]; (c) the Spearman rank correlation between ASR and score over the backdoored models.

Why. The zoo's tables count a backdoor as learned from ASR 0.5 and report detection on
those models only. A partially learned backdoor moves the model less, so its score sits
near the threshold: reporting detection against ASR shows where the detector stops
working, instead of hiding the weak backdoors below a cut.

    python bench/detection_vs_asr.py                         # detect_zoo + detect_zoo_holdout, securegaze
    python bench/detection_vs_asr.py --inputs detect_zoo detect_zoo_holdout detect_zoo_unseen
    python bench/detection_vs_asr.py --method securegaze_directed --out detection_vs_asr_directed

Inputs: ``bench/results/NAME.json`` for each ``--inputs`` NAME (written by
``bench/detect_zoo.py``; its ``methods[METHOD]`` entry: ``threshold`` and ``models``, each
with ``attack``, ``reference``, ``score``, ``attack_success_rate``, ``seed``, ``group``,
``adaptive``, ``target_deg``, ``run_dir``). The threshold is the first input's (the main
zoo's calibrated one); a slice scored with ``--reference-store`` shares it. A model listed
in two inputs (the references a slice re-lists) counts once, from the first input.
Output: ``bench/results/OUT.json`` (curve, bins, correlation, threshold, every model's point),
the figure ``docs/OUT.png`` and a markdown table on stdout. ``--results-dir`` reads and
writes another folder instead of ``bench/results`` (the tests use it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS, write_result  # noqa: E402

from backdoorlab.metrics.detection import auroc as detection_auroc  # noqa: E402

DEFAULT_INPUTS = ("detect_zoo", "detect_zoo_holdout")
ASR_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
ASR_BINS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.8), (0.8, 0.95), (0.95, 1.0))  # the last one includes 1


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """:func:`backdoorlab.metrics.detection.auroc` of two score lists; None if a side is empty (a curve point
    above every model's ASR has no backdoored model left)."""
    pos = np.asarray(positives, dtype=np.float64).reshape(-1)
    neg = np.asarray(negatives, dtype=np.float64).reshape(-1)
    if pos.size == 0 or neg.size == 0:
        return None
    labels = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
    return detection_auroc(np.concatenate([pos, neg]), labels)


def asr_bin(asr: float, bins: Sequence[tuple[float, float]] = ASR_BINS) -> int | None:
    """Index of the bin [lo, hi) holding ``asr`` (the last bin is closed: [lo, hi]); None outside them all."""
    for i, (lo, hi) in enumerate(bins):
        if lo <= asr < hi or (i == len(bins) - 1 and asr == hi):
            return i
    return None


def bin_label(lo: float, hi: float, last: bool) -> str:
    return f"[{lo:g}, {hi:g}{']' if last else ')'}"


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """(rho, two-sided p) of the Spearman rank correlation; (None, None) under 3 points or a constant side."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None, None
    from scipy.stats import spearmanr

    res = spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def load_results(names: Sequence[str], results_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name in names:
        stem = name.removesuffix(".json")
        path = results_dir / f"{stem}.json"
        if not path.is_file():
            sys.exit(f"no {path}: run bench/detect_zoo.py (--tag for a slice) first")
        out.append((stem, json.loads(path.read_text())))
    return out


def pool(results: Sequence[tuple[str, dict[str, Any]]], method: str) -> dict[str, Any]:
    """The method's backdoored and clean evaluation models over all inputs, and the first input's threshold."""
    if not results:
        raise ValueError("no inputs")
    backdoored: list[dict[str, Any]] = []
    clean: list[dict[str, Any]] = []
    thresholds: dict[str, float] = {}
    seen: set[str] = set()
    no_asr = duplicates = 0
    for source, record in results:
        entry = record.get("methods", {}).get(method)
        if entry is None:
            sys.exit(f"{source}.json has no results for {method!r} (it has {', '.join(record.get('methods', {}))})")
        thresholds[source] = float(entry["threshold"])
        for m in entry["models"]:
            key = m.get("run_dir") or f"{source}:{m['seed']}"
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            if m["attack"] == "clean":
                if not m["reference"]:
                    clean.append({**_point(m, source), "attack_success_rate": None})
            elif m.get("attack_success_rate") is None:
                no_asr += 1
            else:
                backdoored.append(_point(m, source))
    first = results[0][0]
    return {
        "threshold": thresholds[first],
        "threshold_from": first,
        "thresholds": thresholds,
        "backdoored": backdoored,
        "clean": clean,
        "skipped_without_asr": no_asr,
        "duplicates_dropped": duplicates,
    }


def _point(m: dict[str, Any], source: str) -> dict[str, Any]:
    return {
        "seed": m["seed"],
        "attack": m["attack"],
        "group": m["group"],
        "adaptive": bool(m.get("adaptive")),
        "shift_relabel": m["attack"] != "clean" and m.get("target_deg") is None,
        "attack_success_rate": m.get("attack_success_rate"),
        "score": float(m["score"]),
        "source": source,
        "run_dir": m.get("run_dir"),
    }


def analyse(pooled: dict[str, Any]) -> dict[str, Any]:
    """Curve over ASR_GRID, detection per ASR_BINS, ASR-score correlation (flagged: score >= threshold)."""
    threshold = pooled["threshold"]
    bd, clean = pooled["backdoored"], pooled["clean"]
    asr = np.array([m["attack_success_rate"] for m in bd], dtype=np.float64)
    score = np.array([m["score"] for m in bd], dtype=np.float64)
    clean_scores = np.array([m["score"] for m in clean], dtype=np.float64)
    curve = []
    for a in ASR_GRID:
        keep = asr >= a
        n = int(keep.sum())
        curve.append({
            "min_asr": a,
            "n_backdoored": n,
            "n_clean": int(clean_scores.size),
            "auroc": auroc(score[keep], clean_scores),
            "detection_rate": float((score[keep] >= threshold).mean()) if n else None,
        })  # fmt: skip
    bins = []
    where = [asr_bin(float(v)) for v in asr]
    for i, (lo, hi) in enumerate(ASR_BINS):
        members = [j for j, b in enumerate(where) if b == i]
        detected = int(sum(score[j] >= threshold for j in members))
        bins.append({
            "asr_from": lo,
            "asr_to": hi,
            "label": bin_label(lo, hi, i == len(ASR_BINS) - 1),
            "n": len(members),
            "n_detected": detected,
            "detection_rate": detected / len(members) if members else None,
        })  # fmt: skip
    rho, p = spearman(asr.tolist(), score.tolist())
    return {
        "threshold": threshold,
        "curve": curve,
        "bins": bins,
        "spearman": {"rho": rho, "p": p, "n": int(asr.size)},
        "n_backdoored": int(asr.size),
        "n_clean_evaluation": int(clean_scores.size),
        "clean_false_alarm_rate": float((clean_scores >= threshold).mean()) if clean_scores.size else None,
        "clean_score_range": [float(clean_scores.min()), float(clean_scores.max())] if clean_scores.size else None,
    }


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(summary: dict[str, Any]) -> str:
    lines = [
        f"| min ASR | backdoored models | AUROC vs {summary['n_clean_evaluation']} clean | detected at threshold |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {c['min_asr']:g} | {c['n_backdoored']} | {_fmt(c['auroc'])} | {_fmt(c['detection_rate'])} |"
        for c in summary["curve"]
    ]
    lines += ["", "| ASR bin | backdoored models | detected at threshold |", "| --- | --- | --- |"]
    lines += [f"| {b['label']} | {b['n']} | {b['n_detected']} ({_fmt(b['detection_rate'])}) |" for b in summary["bins"]]
    return "\n".join(lines)


def summary_line(method: str, summary: dict[str, Any]) -> str:
    c0, c5 = summary["curve"][0], next(c for c in summary["curve"] if c["min_asr"] == 0.5)
    sp = summary["spearman"]
    rho = "-" if sp["rho"] is None else f"{sp['rho']:.2f} (p = {sp['p']:.2g})"
    return (
        f"{method}: AUROC {_fmt(c0['auroc'])} over all {c0['n_backdoored']} backdoored models, "
        f"{_fmt(c5['auroc'])} over the {c5['n_backdoored']} with ASR >= 0.5 "
        f"(vs {summary['n_clean_evaluation']} clean evaluation models); Spearman(ASR, score) = {rho}; "
        f"threshold {summary['threshold']:.3f}, clean false alarms {_fmt(summary['clean_false_alarm_rate'])}"
    )


def draw(pooled: dict[str, Any], summary: dict[str, Any], method: str, out: Path) -> Path:
    """Left: score against ASR (clean evaluation models grey at ASR 0 and as a band); right: AUROC against min ASR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    threshold = summary["threshold"]
    bd, clean = pooled["backdoored"], pooled["clean"]
    main_source = pooled["threshold_from"]
    attacks = sorted({m["attack"] for m in bd})
    palette = plt.get_cmap("tab10")
    colour = {a: palette(i % 10) for i, a in enumerate(attacks)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.4), gridspec_kw={"width_ratios": [1.15, 1]})

    if clean:
        lo, hi = summary["clean_score_range"]
        left.axhspan(lo, hi, color="0.85", zorder=0, lw=0)
        xs = np.linspace(-0.012, 0.012, len(clean)) if len(clean) > 1 else [0.0]
        left.scatter(xs, [m["score"] for m in clean], s=22, c="0.45", zorder=2, lw=0)
    left.axhline(threshold, color="k", ls="--", lw=1, zorder=1)
    left.axvline(0.5, color="0.6", ls=":", lw=1, zorder=1)
    for m in bd:
        marker = "^" if m["adaptive"] else "X" if m["shift_relabel"] else "o"
        c = colour[m["attack"]]
        filled = m["source"] == main_source
        left.scatter(m["attack_success_rate"], m["score"], marker=marker, s=55 if marker != "o" else 38,
                     facecolors=c if filled else "white", edgecolors=c, linewidths=1.4,
                     zorder=3)  # fmt: skip
    left.set_xlabel("attack success rate (ASR)", fontsize=10)
    left.set_ylabel(f"{method} score", fontsize=10)
    left.set_xlim(-0.05, 1.04)
    left.set_title("score against how well the backdoor was learned", fontsize=10)
    left.tick_params(labelsize=9)
    handles = [Line2D([], [], ls="", marker="o", color=colour[a], label=a, markersize=7) for a in attacks]
    handles += [
        Line2D([], [], ls="", marker="^", color="0.3", label="adaptive", markersize=7),
        Line2D([], [], ls="", marker="X", color="0.3", label="shift relabel", markersize=7),
        Line2D([], [], ls="", marker="o", mfc="white", mec="0.3", mew=1.4, label="held-out slice", markersize=7),
        Line2D([], [], ls="", marker="o", color="0.45", label=f"clean eval ({len(clean)}), band = range",
               markersize=6),
        Line2D([], [], color="k", ls="--", lw=1, label=f"threshold {threshold:.2f}"),
        Line2D([], [], color="0.6", ls=":", lw=1, label="zoo's 'learned' cut"),
    ]  # fmt: skip
    left.legend(handles=handles, fontsize=8, loc="upper left", framealpha=0.9, ncol=2, columnspacing=0.8)
    ymin, ymax = left.get_ylim()
    left.set_ylim(ymin, ymax + 0.45 * (ymax - ymin))  # room for the legend above the points

    curve = summary["curve"]
    grid = [c["min_asr"] for c in curve]
    counts = right.twinx()
    counts.bar(grid, [c["n_backdoored"] for c in curve], width=0.035, color="0.82", zorder=0)
    counts.set_ylabel("backdoored models kept (bars)", fontsize=10, color="0.4")
    counts.tick_params(labelsize=9, colors="0.4")
    n_max = max(1, max(c["n_backdoored"] for c in curve))
    counts.set_ylim(0, n_max * 2.6)  # the bars stay below the curves
    counts.set_yticks([t for t in MaxNLocator(nbins=4, integer=True).tick_values(0, n_max) if 0 <= t <= n_max])
    right.set_zorder(counts.get_zorder() + 1)
    right.patch.set_visible(False)
    auc = [np.nan if c["auroc"] is None else c["auroc"] for c in curve]
    det = [np.nan if c["detection_rate"] is None else c["detection_rate"] for c in curve]
    right.plot(grid, auc, "o-", color="tab:blue", lw=1.8, label=f"AUROC vs {summary['n_clean_evaluation']} clean")
    right.plot(grid, det, "s--", color="tab:orange", mfc="none", mew=1.3, lw=1.3, ms=7, label="detected at threshold")
    for g, a, c in zip(grid, auc, curve, strict=True):
        if not np.isnan(a):
            right.annotate(str(c["n_backdoored"]), (g, a), textcoords="offset points", xytext=(0, 7),
                           ha="center", fontsize=8, color="tab:blue")  # fmt: skip
    right.set_ylim(0, 1.1)
    right.set_xlim(-0.04, 0.99)
    right.set_xlabel("minimum ASR of the backdoored models kept", fontsize=10)
    right.set_ylabel("AUROC / detection rate", fontsize=10)
    right.set_title("detection against minimum ASR (numbers: models kept)", fontsize=10)
    right.tick_params(labelsize=9)
    right.legend(fontsize=8, loc="center left", framealpha=0.9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="securegaze")
    ap.add_argument("--inputs", nargs="+", default=list(DEFAULT_INPUTS),
                    help="result names in the results folder; the first one's threshold is used")  # fmt: skip
    ap.add_argument("--out", default="detection_vs_asr", help="results/OUT.json and the figure docs/OUT.png")
    ap.add_argument("--results-dir", type=Path, default=RESULTS, help="read the inputs from and write OUT.json here")
    ap.add_argument("--figure", type=Path, help="the figure's path (default docs/OUT.png)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    results = load_results(args.inputs, args.results_dir)
    pooled = pool(results, args.method)
    if not pooled["backdoored"]:
        sys.exit(f"no backdoored models with an ASR for {args.method} in {', '.join(args.inputs)}")
    summary = analyse(pooled)
    for source, thr in pooled["thresholds"].items():
        if not np.isclose(thr, pooled["threshold"]):
            print(f"note: {source} was calibrated to {thr:.3f}; its models are judged at {pooled['threshold']:.3f}")
    figure = args.figure or HERE.parent / "docs" / f"{args.out}.png"
    draw(pooled, summary, args.method, figure)
    record = {
        "method": args.method,
        "inputs": [name for name, _ in results],
        "asr_grid": list(ASR_GRID),
        **summary,
        "thresholds": pooled["thresholds"],
        "threshold_from": pooled["threshold_from"],
        "skipped_without_asr": pooled["skipped_without_asr"],
        "duplicates_dropped": pooled["duplicates_dropped"],
        "figure": str(figure.relative_to(HERE.parent)) if figure.is_relative_to(HERE.parent) else str(figure),
        "points": pooled["backdoored"] + pooled["clean"],
    }
    out = write_result(args.out, record, args.results_dir)
    print(table(summary))
    print()
    print(summary_line(args.method, summary))
    print(f"wrote {out} and {figure}")
    return record


if __name__ == "__main__":
    main()
