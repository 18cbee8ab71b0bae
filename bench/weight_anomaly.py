"""Bench: weight-anomaly detection (PCA + Gaussian mixture over clean reference networks) on the recognition zoo.

    python bench/weight_zoo_configs.py      # (re)writes configs/zoo/face_recognition_weights.yaml
    backdoorlab sweep configs/zoo/face_recognition_weights.yaml --runs-dir runs/fr_weights --workers 2
    python bench/weight_anomaly.py          # reads runs/fr_weights, writes the table and the ROC picture

The thesis's chapter-4 protocol (Unnervik 2024, section 4.5, Figs. 4.7-4.9; ../shared/research): 30 clean and 22
backdoored last-layer fine-tunes; the density is fitted on clean networks only and judged on
held-out clean networks against the backdoored ones that met the four-metric rule. Here each
of ``--repeats`` random splits of the clean networks takes 18 as references and 12 as held-out
clean; the detector fits its densities on two thirds of the references and sets its threshold
(no reference flagged) on the other third, so the held-out networks never touch the fit and the
operating point is the one a user of ``backdoorlab detect-population`` gets. (The thesis fitted
on all 18 and reported only the threshold-free AUROC.) Reported per layer and view and fused:
AUROC of held-out clean vs backdoored (both sets, and each), the share of backdoored networks
flagged and of held-out clean ones flagged at the detector's own threshold, the PCA dimensions
and the number of components BIC chose (next to the thesis's 76 / 297 dimensions and 1,792 / 512
components); then AUROC against the number of references, and the networks that missed the
four-metric rule (partly learned backdoors) as a group of their own.
Writes ``bench/results/NAME.json``, ``docs/NAME_roc.png`` and the zoo report page of the first split,
``bench/results/NAME.html`` (ROC and DET per layer/view and fused, every network's score, the
per-layer table), drawn from ``bench/results/NAME_zoo.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import write_result  # noqa: E402
from weight_zoo_configs import backdoor_set  # noqa: E402

from backdoorlab.defenses.weight_anomaly import WeightAnomalyDetector  # noqa: E402
from backdoorlab.experiments.store import ResultsStore  # noqa: E402
from backdoorlab.metrics.detection import auroc, roc_curve  # noqa: E402
from backdoorlab.models.checkpoint import load_checkpoint  # noqa: E402

THESIS = {
    "zoo": "30 clean + 22 backdoored (11 triggers + 11 locations), last_linear + last_bn fine-tuned",
    "protocol": "18 clean fit the density, 12 held-out clean vs 22 backdoored",
    "last_linear": {
        "forward": {"pca_dims": 76, "components": 1792, "vectors_per_network": 1792},
        "backward": {"pca_dims": 297, "components": 512, "vectors_per_network": 512},
        "auroc": 1.0,
    },
    "multi_layer": "mediocre (section 4.7)",
    "components_note": "stopped at 2,048 components for lack of compute; BIC still falling ('maybe 10,000 needed')",
}
#: the thesis's grid was {1, 2, 5, 10, 20, 50, 100, 200, 512, 1000, 1792, 3000}; BIC chose the vector counts
GRID = (1, 2, 5, 10, 20, 50, 100, 200, 512, 1000, 2000)


class Network:
    """One zoo network: its weights (state dict) and how it was built."""

    def __init__(self, row: dict[str, Any]) -> None:
        cfg, metrics = row["config"], row["metrics"]
        self.run_dir, self.seed = row["run_dir"], int(cfg["seed"])
        self.split_seed = int(cfg["data"]["split_seed"])
        self.attack = cfg.get("attack")
        self.success = bool(metrics.get("success")) if self.attack else None
        self.asr = metrics.get("attack_success_rate")
        self.state = load_checkpoint(self.run_dir)[0].state_dict()

    @property
    def set(self) -> str:
        return backdoor_set(self.seed) if self.attack else "clean"


def load_zoo(store: Path) -> list[Network]:
    if not store.is_file():
        raise SystemExit(f"{store} not found: run the sweep first (see this script's docstring)")
    rows = ResultsStore(store).list(status="complete", limit=None, oldest_first=True)
    nets = []
    for i, row in enumerate(rows):
        nets.append(Network(row))
        print(f"\rloading networks {i + 1}/{len(rows)}", end="", flush=True)
    print()
    return nets


def scores_of(detector: WeightAnomalyDetector, nets: list[Network]) -> dict[str, np.ndarray]:
    """Per (layer/view) standardised scores and the fused score of each network."""
    out: dict[str, list[float]] = {}
    for net in nets:
        verdict = detector.inspect(net.state)
        for key, value in verdict.details["per_layer"].items():
            out.setdefault(key, []).append(value)
        out.setdefault("fused", []).append(verdict.score)
    return {k: np.asarray(v) for k, v in out.items()}


def split_metrics(clean: np.ndarray, bad: np.ndarray, threshold: float | None) -> dict[str, Any]:
    labels = np.r_[np.zeros(len(clean)), np.ones(len(bad))]
    out: dict[str, Any] = {"auroc": auroc(np.r_[clean, bad], labels) if len(bad) else None}
    if threshold is not None:
        out["flagged_backdoored"] = float((bad >= threshold).mean()) if len(bad) else None
        out["flagged_clean"] = float((clean >= threshold).mean())
    return out


def one_split(
    nets: list[Network], refs: list[Network], held_out: list[Network], args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """Fit on ``refs``; judge ``held_out`` clean against every backdoored network of ``nets``."""
    detector = WeightAnomalyDetector(
        layers=args.layers, views=args.views, variance=args.variance, components=args.grid, calibration_share=1 / 3,
        covariance_type=args.covariance, seed=seed, device=args.device,
    )  # fmt: skip
    start = time.perf_counter()
    detector.fit([n.state for n in refs])
    fit_seconds = time.perf_counter() - start
    kept = [n for n in nets if n.attack and n.success]
    missed = [n for n in nets if n.attack and not n.success]
    clean_scores = scores_of(detector, held_out)
    groups = {"kept": kept, "triggers": [n for n in kept if n.set == "triggers"],
              "locations": [n for n in kept if n.set == "locations"], "missed the rule": missed}  # fmt: skip
    group_scores = {name: scores_of(detector, members) if members else {} for name, members in groups.items()}
    per_view: dict[str, Any] = {}
    for key in clean_scores:
        threshold = detector.threshold if key == "fused" else None  # the verdict is taken on the fused score
        per_view[key] = {
            name: split_metrics(clean_scores[key], scores.get(key, np.empty(0)), threshold)
            for name, scores in group_scores.items()
        }
    densities = {
        f"{d.layer}/{d.view}": {
            "pca_dims": int(d.pca.components.shape[0]),
            "components": d.mixture.n_components,
            "criterion_table": [(c.n_components, c.criterion, c.seconds) for c in d.selection],
        }
        for d in detector.densities
    }
    roc = {key: {"clean": clean_scores[key].tolist(), "kept": group_scores["kept"].get(key, np.empty(0)).tolist()}
           for key in clean_scores}  # fmt: skip
    return {"per_view": per_view, "densities": densities, "fit_seconds": fit_seconds,
            "seconds_per_network": detector.inspect(held_out[0].state).seconds, "roc": roc,
            "report": report_methods(detector, refs, held_out, nets)}  # fmt: skip


def report_methods(
    detector: WeightAnomalyDetector, refs: list[Network], held_out: list[Network], nets: list[Network]
) -> dict[str, Any]:
    """This split as the zoo report's ``methods`` (each layer/view alone at its own threshold, and fused)."""
    bad = [n for n in nets if n.attack]
    verdicts = {n.run_dir: detector.inspect(n.state) for n in [*refs, *held_out, *bad]}
    thresholds = {**detector.layer_thresholds, "fused": detector.threshold}
    densities = {f"{d.layer}/{d.view}": d.summary() for d in detector.densities}
    methods = {}
    for key, threshold in thresholds.items():

        def score(n: Network, key: str = key) -> float:
            v = verdicts[n.run_dir]
            return float(v.score if key == "fused" else v.details["per_layer"][key])

        models = []
        for n in [*refs, *held_out, *bad]:
            group = "clean" if not n.attack else (n.set if n.success else "missed the rule")
            run = Path(n.run_dir)
            models.append({"run_dir": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else n.run_dir,
                           "seed": n.seed, "reference": n in refs, "score": score(n), "attack": group,
                           "group": group if n.attack else None, "attack_success_rate": n.asr})  # fmt: skip
        clean = np.array([score(n) for n in held_out])
        groups = {}
        for name in ("triggers", "locations", "missed the rule"):
            chosen = np.array([m["score"] for m in models if m["attack"] == name])
            if len(chosen):
                groups[name] = group_metrics(clean, chosen, threshold)
        kept = np.array([m["score"] for m in models if m["attack"] in ("triggers", "locations")])
        groups["kept (both sets)"] = group_metrics(clean, kept, threshold)
        params = {k: v for k, v in densities.get(key, {}).items() if k in ("pca_dims", "components")}
        methods[key] = {"threshold": threshold, "models": models, "groups": groups, "params": params}
    return methods


def group_metrics(clean: np.ndarray, bad: np.ndarray, threshold: float) -> dict[str, Any]:
    """The zoo report's group cells: AUROC, TPR at an FPR of at most 0.1, accuracy at the threshold."""
    labels = np.r_[np.zeros(len(clean)), np.ones(len(bad))]
    scores = np.r_[clean, bad]
    fpr, tpr, _ = roc_curve(scores, labels)
    flagged = scores >= threshold
    return {"n_clean": len(clean), "n_backdoored": len(bad), "auroc": auroc(scores, labels),
            "tpr_at_fpr_0.1": float(tpr[fpr <= 0.1].max()), "accuracy": float((flagged == labels).mean())}  # fmt: skip


def write_report(first: dict[str, Any], args: argparse.Namespace) -> Path:
    """The zoo report page of the first split (``bench/results/NAME.html``, beside the JSON it is drawn from)."""
    from common import RESULTS

    from backdoorlab.report.zoo_report import write_zoo_report

    results = {
        "title": f"Weight anomaly on the recognition zoo ({Path(args.store).parent.name})",
        "protocol": (f"One split of the clean networks: {args.references} references (two thirds fit the PCA and "
                     "the mixture, one third sets each threshold so that none of them is flagged) and the other "
                     "clean networks held out; every backdoored network is judged, those that missed the "
                     "four-metric rule as a group of their own. Each layer/view is shown alone at its own "
                     "threshold; the detector's verdict is the fused score. Higher = more anomalous."),
        "trigger_images": False, "methods": first,
    }  # fmt: skip
    path = write_result(f"{args.name}_zoo", results)
    return write_zoo_report(path, RESULTS / f"{args.name}.html", root=ROOT)


def summarise(values: list[float | None]) -> dict[str, float] | None:
    kept = [v for v in values if v is not None]
    return {"mean": float(np.mean(kept)), "sd": float(np.std(kept)), "n": len(kept)} if kept else None


def protocol(nets: list[Network], args: argparse.Namespace) -> dict[str, Any]:
    """The thesis's split (18 references, 12 held-out clean), repeated over random splits."""
    clean = [n for n in nets if not n.attack]
    if len(clean) < args.references + 2:
        raise SystemExit(f"{len(clean)} clean networks: need {args.references} references and 2 held out")
    splits = []
    for r in range(args.repeats):
        order = np.random.default_rng([args.seed, r]).permutation(len(clean))
        refs = [clean[i] for i in order[: args.references]]
        held = [clean[i] for i in order[args.references :]]
        start = time.perf_counter()
        splits.append(one_split(nets, refs, held, args, seed=r))
        took = time.perf_counter() - start
        print(f"split {r + 1}/{args.repeats}: fused AUROC {splits[-1]['per_view']['fused']['kept']['auroc']:.3f}, "
              f"{took:.0f} s, ETA {took * (args.repeats - r - 1):.0f} s", flush=True)  # fmt: skip
    views = splits[0]["per_view"]
    table = {
        key: {group: {metric: summarise([s["per_view"][key][group].get(metric) for s in splits])
                      for metric in views[key][group]} for group in views[key]}
        for key in views
    }  # fmt: skip
    densities = {key: {"pca_dims": summarise([s["densities"][key]["pca_dims"] for s in splits]),
                       "components": [s["densities"][key]["components"] for s in splits],
                       "criterion_table_first_split": splits[0]["densities"][key]["criterion_table"]}
                 for key in splits[0]["densities"]}  # fmt: skip
    return {
        "table": table,
        "report_first_split": splits[0]["report"],
        "densities": densities,
        "fit_seconds": summarise([s["fit_seconds"] for s in splits]),
        "seconds_per_network": summarise([s["seconds_per_network"] for s in splits]),
        "roc_first_split": splits[0]["roc"],
    }


def by_references(nets: list[Network], args: argparse.Namespace) -> dict[str, Any]:
    """Fused AUROC against the number of references (12 held-out clean networks fixed per repeat)."""
    clean = [n for n in nets if not n.attack]
    n_held = len(clean) - max(args.reference_counts)
    out = {}
    for count in args.reference_counts:
        values = []
        for r in range(args.curve_repeats):
            order = np.random.default_rng([args.seed, r]).permutation(len(clean))
            held = [clean[i] for i in order[:n_held]]
            refs = [clean[i] for i in order[n_held : n_held + count]]
            values.append(one_split(nets, refs, held, args, seed=r)["per_view"]["fused"]["kept"]["auroc"])
        out[str(count)] = summarise(values)
        print(f"{count} references: fused AUROC {out[str(count)]['mean']:.3f} +- {out[str(count)]['sd']:.3f}",
              flush=True)  # fmt: skip
    return {"held_out_clean": n_held, "auroc": out}


def zoo_counts(nets: list[Network]) -> dict[str, Any]:
    counts: dict[str, Any] = {"clean": sum(not n.attack for n in nets)}
    for name in ("triggers", "locations"):
        members = [n for n in nets if n.set == name]
        counts[name] = {"built": len(members), "met the rule": sum(bool(n.success) for n in members),
                        "asr": [n.asr for n in members]}  # fmt: skip
    return counts


def draw_roc(roc: dict[str, dict[str, list[float]]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.2))
    ax = fig.subplots()
    for key, scores in roc.items():
        if not scores["kept"]:
            continue
        labels = np.r_[np.zeros(len(scores["clean"])), np.ones(len(scores["kept"]))]
        both = np.r_[scores["clean"], scores["kept"]]
        fpr, tpr, _ = roc_curve(both, labels)
        ax.step(fpr, tpr, where="post", label=f"{key} (AUROC {auroc(both, labels):.2f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("held-out clean networks flagged")
    ax.set_ylabel("backdoored networks flagged")
    ax.set_title("weight anomaly, first split", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=ROOT / "runs" / "fr_weights" / "results.sqlite")
    parser.add_argument("--layers", nargs="+", default=["last_linear"])
    parser.add_argument("--grid", type=lambda s: tuple(int(k) for k in s.split(",")), default=GRID)
    parser.add_argument("--covariance", choices=("diag", "full"), default="diag")
    parser.add_argument("--views", nargs="+", choices=("backward", "forward"), default=["backward", "forward"])
    parser.add_argument("--variance", type=float, default=0.95, help="PCA explained variance kept (thesis: 0.95)")
    parser.add_argument("--no-curve", action="store_true", help="skip AUROC against the number of references")
    parser.add_argument("--references", type=int, default=18)
    parser.add_argument("--reference-counts", type=lambda s: [int(k) for k in s.split(",")], default=[3, 6, 9, 12, 18])
    parser.add_argument("--repeats", type=int, default=5, help="random splits of the main protocol")
    parser.add_argument("--curve-repeats", type=int, default=2, help="random splits per point of the reference curve")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--name", default="weight_anomaly", help="result name (bench/results/NAME.json)")
    parser.add_argument("--report-only", action="store_true",
                        help="only the zoo report page of the first split (bench/results/NAME.html)")  # fmt: skip
    args = parser.parse_args()
    nets = load_zoo(args.store)
    if args.report_only:  # the first split of the protocol, drawn as the zoo report page; no JSON table
        clean = [n for n in nets if not n.attack]
        order = np.random.default_rng([args.seed, 0]).permutation(len(clean))
        refs, held = [clean[i] for i in order[: args.references]], [clean[i] for i in order[args.references :]]
        print(f"report page: {write_report(one_split(nets, refs, held, args, seed=0)['report'], args)}")
        return
    shapes = {k: tuple(v.shape) for k, v in nets[0].state.items() if k.removesuffix(".weight") in args.layers}
    main_protocol = protocol(nets, args)
    curve = None if args.no_curve else by_references(nets, args)
    draw_roc(main_protocol["roc_first_split"], ROOT / "docs" / f"{args.name}_roc.png")
    page = write_report(main_protocol.pop("report_first_split"), args)
    payload = {"zoo": zoo_counts(nets), "layer_shapes": shapes, "settings": {
        "layers": args.layers, "grid": list(args.grid), "covariance": args.covariance, "references":
        args.references, "repeats": args.repeats, "curve_repeats": args.curve_repeats, "criterion": "bic",
        "variance": args.variance, "views": args.views,
        "threads": torch.get_num_threads()}, "protocol": main_protocol, "by_references": curve,
        "thesis": THESIS}  # fmt: skip
    path = write_result(args.name, payload)
    print(f"\n{'view':<24} {'AUROC kept':>12} {'triggers':>9} {'locations':>9} {'missed':>7} {'dims':>6} {'K':>10}")
    for key, groups in main_protocol["table"].items():
        dens = main_protocol["densities"].get(key, {})
        cells = [groups[g]["auroc"] for g in ("kept", "triggers", "locations", "missed the rule")]
        text = [f"{c['mean']:.3f}" if c else "-" for c in cells]
        dims = f"{dens['pca_dims']['mean']:.0f}" if dens else "-"
        comps = "/".join(map(str, dens.get("components", []))) or "-"
        print(f"{key:<24} {text[0]:>12} {text[1]:>9} {text[2]:>9} {text[3]:>7} {dims:>6} {comps:>10}")
    fused = main_protocol["table"]["fused"]["kept"]
    print(f"at the detector's threshold: backdoored flagged {fused['flagged_backdoored']['mean']:.3f}, "
          f"held-out clean flagged {fused['flagged_clean']['mean']:.3f}")  # fmt: skip
    print(f"written: {path} and the zoo report {page}")


if __name__ == "__main__":
    main()
