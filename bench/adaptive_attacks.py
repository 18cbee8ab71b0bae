"""Bench: the recognition defences against attackers who know them (issue 16, section 4).

    python bench/adaptive_zoo_configs.py   # then the two sweeps its docstring names (~35 min)
    python bench/adaptive_attacks.py       # reads runs/fr_weights, runs/fr_adaptive, runs/fr_pair

* **Weight anomaly** (thesis ch. 4) against an attacker who starts from a clean network of
  the population and plants a kept zoo recipe while paying for the squared distance from
  its weights (``attack.weight_distance``; penalty 0 = starting from a clean network only).
  The detector is the bench's (``last_linear``, backward view, PCA 99.9 %, BIC over
  ``--grid``), fitted on ``--references`` clean zoo networks and judged against the other
  clean ones, over ``--repeats`` random splits of the clean pool (the anchors the attacker
  started from are left out of it). Rows: the zoo's non-adaptive kept networks, the same
  recipes' zoo networks, each penalty, and the clean *controls* (an anchor fine-tuned again,
  no attack); and the defender's answer, references that include second fine-tunes.
* **Model pairing** (thesis ch. 5) against an attacker who plants the very same backdoor
  (trigger, impostor, victim) in the pairing partner too. For each recipe, the backdoored
  IResNet is paired both ways with the backdoored partner, with a clean fine-tune of the
  partner on the same data, and with the partner as shipped (the thesis's setting); the
  share of the recipe's poisoned samples *missed* is reported at a clean FNMR of 0.1 / 1 / 5 %.

Writes ``bench/results/adaptive_attacks.json`` and prints the two tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from adaptive_zoo_configs import ANCHORS  # noqa: E402
from common import RESULTS, write_result  # noqa: E402
from model_pairing import (  # noqa: E402
    RATES,
    Member,
    head_member,
    pair_flags,
    partner_run,
    poisoned_samples,
    row_summary,
    trunk_features,
    unseen_faces,
    unseen_halves,
    zoo_rows,
)
from weight_anomaly import Network, scores_of, split_metrics, summarise  # noqa: E402

from backdoorlab.defenses.weight_anomaly import WeightAnomalyDetector  # noqa: E402
from backdoorlab.frozen_trunk import trunk_key  # noqa: E402
from backdoorlab.models.checkpoint import load_checkpoint  # noqa: E402

LAYER = "last_linear"


# ------------------------------------------------------------------ weight anomaly


def recipe_seed(net: Network) -> int:
    """The weight-zoo seed whose recipe an adaptive network repeats (adaptive seeds are 1000 + it)."""
    return net.seed - 1000


def penalty_of(net: Network) -> float:
    return float(((net.attack or {}).get("weight_distance") or {}).get("weight", 0.0))


def anchor_distance(net: Network, anchors: dict[int, Network]) -> float:
    """Squared L2 distance of the inspected layer from the clean network the run started from."""
    start = anchors[int(net.split_seed)].state[f"{LAYER}.weight"]
    return float(((net.state[f"{LAYER}.weight"] - start) ** 2).sum())


def weight_groups(zoo: list[Network], adaptive: list[Network]) -> dict[str, list[Network]]:
    recipes = {recipe_seed(n) for n in adaptive if n.attack}
    kept = [n for n in zoo if n.attack and n.success]
    groups = {"zoo, every kept network": kept, "zoo, the attackers' recipes": [n for n in kept if n.seed in recipes]}
    for penalty in sorted({penalty_of(n) for n in adaptive if n.attack}):
        chosen = [n for n in adaptive if n.attack and penalty_of(n) == penalty]
        groups[f"from a clean network, penalty {penalty:g}"] = [n for n in chosen if n.success]
    groups["clean controls (a second fine-tune)"] = [n for n in adaptive if not n.attack]
    return groups


def judge(refs: list[Network], held: list[Network], groups: dict[str, list[Network]], args: argparse.Namespace,
          seed: int, two_sided: bool = False) -> dict[str, Any]:  # fmt: skip
    """Fit on ``refs``; AUROC and flagged share of each group against the held-out clean networks."""
    detector = WeightAnomalyDetector(
        layers=(LAYER,), views=("backward",), variance=args.variance, components=args.grid, calibration_share=1 / 3,
        seed=seed, two_sided=two_sided,
    )  # fmt: skip
    detector.fit([n.state for n in refs])
    clean = scores_of(detector, held)["fused"]
    out = {}
    for name, members in groups.items():
        scores = scores_of(detector, members)["fused"] if members else np.empty(0)
        out[name] = {**split_metrics(clean, scores, detector.threshold), "mean_score": float(scores.mean())
                     if len(scores) else None}  # fmt: skip
    out["held-out clean"] = {"mean_score": float(clean.mean()), "flagged": float((clean >= detector.threshold).mean())}
    return out


def weight_part(args: argparse.Namespace) -> dict[str, Any]:
    zoo = [Network(r) for r in zoo_rows(args.zoo / "results.sqlite")]
    adaptive = [Network(r) for r in zoo_rows(args.adaptive / "results.sqlite") if r["config"]["name"].startswith(
        "fr-adaptive-w")]  # fmt: skip
    if not adaptive:
        raise SystemExit(f"no weight-distance runs in {args.adaptive}: run the sweeps (bench/adaptive_zoo_configs.py)")
    anchors = {n.seed: n for n in zoo if not n.attack and n.seed in ANCHORS}
    pool = [n for n in zoo if not n.attack and n.seed not in ANCHORS]
    controls = [n for n in adaptive if not n.attack]
    groups = weight_groups(zoo, adaptive)
    results: dict[str, list[dict[str, Any]]] = {}
    attackers = {k: v for k, v in groups.items() if k.startswith("from a clean")}
    for r in range(args.repeats):
        start = time.perf_counter()
        order = np.random.default_rng([args.seed, r]).permutation(len(pool))
        refs, held = [pool[i] for i in order[: args.references]], [pool[i] for i in order[args.references :]]
        # the defender's answer: second fine-tunes among the references (as many as there are controls)
        mixed = refs[: args.references - len(controls)] + controls
        for two_sided in (False, True):
            side = "two_sided" if two_sided else "one_sided"
            results.setdefault(side, []).append(judge(refs, held, groups, args, r, two_sided))
            results.setdefault(f"{side}_mixed", []).append(judge(mixed, held, attackers, args, r, two_sided))
        took = time.perf_counter() - start
        print(f"weights: split {r + 1}/{args.repeats}, {took:.0f} s, ETA {took * (args.repeats - r - 1):.0f} s",
              flush=True)  # fmt: skip

    def table(results: list[dict[str, Any]]) -> dict[str, Any]:
        return {g: {m: summarise([s[g].get(m) for s in results]) for m in results[0][g]} for g in results[0]}

    attempts = {}
    for penalty in sorted({penalty_of(n) for n in adaptive if n.attack}):
        runs = [n for n in adaptive if n.attack and penalty_of(n) == penalty]
        attempts[f"{penalty:g}"] = {
            "networks": len(runs), "met_rule": sum(bool(n.success) for n in runs),
            "asr": summarise([n.asr for n in runs]),
            "distance_from_start": summarise([anchor_distance(n, anchors) for n in runs]),
        }  # fmt: skip
    attempts["clean controls"] = {"networks": len(controls),
                                  "distance_from_start": summarise([anchor_distance(n, anchors) for n in controls])}
    base = load_checkpoint(args.base)[0].state_dict()[f"{LAYER}.weight"]
    moved = [float(((n.state[f"{LAYER}.weight"] - base) ** 2).sum()) for n in zoo]
    return {
        "table": table(results["one_sided"]),
        "defender_with_second_fine_tunes": table(results["one_sided_mixed"]),
        "two_sided": table(results["two_sided"]),
        "two_sided_with_second_fine_tunes": table(results["two_sided_mixed"]),
        "attempts": attempts,
        "zoo_distance_from_base": summarise(moved),
        "pool": {"clean": len(pool), "references": args.references, "held_out": len(pool) - args.references,
                 "anchors_left_out": sorted(anchors)},
    }  # fmt: skip


# ------------------------------------------------------------------ model pairing


def pairing_members(args: argparse.Namespace) -> tuple[dict[int, dict[str, Member]], list[Member], Member, np.ndarray,
                                                        np.ndarray]:  # fmt: skip
    """Per recipe seed: its zoo IResNet(B) and partner MobileFaceNet(B); the clean partner fine-tunes; the partner."""
    rows = zoo_rows(args.adaptive / "results.sqlite")
    partners = [r for r in rows if r["config"]["name"].startswith("fr-adaptive-p")]
    bad_partners = {int(r["config"]["seed"]): r for r in partners if r["config"].get("attack")}
    if not bad_partners:
        raise SystemExit(f"no partner fine-tunes in {args.adaptive}: run the pairing sweep (adaptive_zoo_configs.py)")
    zoo = {int(r["config"]["seed"]): r for r in zoo_rows(args.zoo / "results.sqlite") if r["config"].get("attack")}
    seeds = sorted(s for s in bad_partners if s in zoo)
    poison, slices = poisoned_samples([zoo[s] for s in seeds])
    unseen = unseen_faces(args)
    fit, val = unseen_halves(unseen, args.fit_share)
    base, _ = load_checkpoint(args.base)
    shipped, _ = load_checkpoint(partner_run(args.partner))
    features = {"iresnet": trunk_features(base, unseen, poison), "partner": trunk_features(shipped, unseen, poison)}
    keys = {"iresnet": trunk_key(base), "partner": trunk_key(shipped)}

    def member(name: str, row: dict[str, Any] | None, trunk: str, rows: slice | None = None) -> Member:
        model = load_checkpoint(row["run_dir"])[0] if row is not None else shipped
        extra: dict[str, Any] = {"rows": rows} if rows is not None else {}
        if row is not None and row["config"].get("attack"):
            extra.update(seed=int(row["config"]["seed"]), success=bool(row["metrics"].get("success")),
                         asr=row["metrics"].get("attack_success_rate"))  # fmt: skip
        run = row["run_dir"] if row is not None else str(partner_run(args.partner))
        return head_member(name, model, run, keys[trunk], features[trunk], **extra)

    per_recipe = {
        s: {"IResNet(B)": member("IResNet(B)", zoo[s], "iresnet", slices[i]),
            "MobileFaceNet(B)": member("MobileFaceNet(B)", bad_partners[s], "partner", slices[i])}
        for i, s in enumerate(seeds)
    }  # fmt: skip
    clean_partners = [member("MobileFaceNet'", r, "partner") for r in partners if not r["config"].get("attack")]
    return per_recipe, clean_partners, member("MobileFaceNet", None, "partner"), fit, val


def pairing_part(args: argparse.Namespace) -> dict[str, Any]:
    per_recipe, clean_partners, shipped, fit, val = pairing_members(args)
    kinds: dict[str, list[dict[str, Any]]] = {}
    start, done = time.perf_counter(), 0
    total = len(per_recipe) * 2 * (2 + len(clean_partners))
    for seed, m in per_recipe.items():
        bad = m["IResNet(B)"]
        rows = np.arange(bad.rows.start, bad.rows.stop)
        others = {"same backdoor in the partner": [m["MobileFaceNet(B)"]],
                  "partner fine-tuned clean": clean_partners, "partner as shipped": [shipped]}  # fmt: skip
        for kind, partners in others.items():
            for partner in partners:
                for ref, probe in ((bad, partner), (partner, bad)):
                    result = pair_flags(ref, probe, rows, "affine", fit, val, args.steps, args.seed)
                    result.update(recipe=seed, partner_met_rule=m["MobileFaceNet(B)"].success)
                    kinds.setdefault(kind, []).append(result)
                    done += 1
                    eta = (time.perf_counter() - start) / done * (total - done)
                    print(f"\rpairing: {done}/{total} pairs, ETA {eta:4.0f} s", end="", flush=True)
    print()
    n = len(per_recipe[next(iter(per_recipe))]["IResNet(B)"].poisoned)
    everything = np.ones(n, bool)
    table = {}
    for kind, results in kinds.items():
        table[kind] = row_summary(results, everything, backdoored=True)
        both = [r for r in results if r["partner_met_rule"]]
        table[kind + ", partner met the rule"] = row_summary(both, everything, backdoored=True)
    partners = [m["MobileFaceNet(B)"] for m in per_recipe.values()]
    return {
        "table": table,
        "recipes": sorted(per_recipe),
        "partner_backdoors": {"networks": len(partners), "met_rule": sum(bool(p.success) for p in partners),
                              "asr": summarise([p.asr for p in partners])},
        "clean_partner_fine_tunes": len(clean_partners),
        "poisoned_samples": int(sum(m["IResNet(B)"].rows.stop - m["IResNet(B)"].rows.start
                                    for m in per_recipe.values())),
    }  # fmt: skip


# ------------------------------------------------------------------ output


def print_tables(payload: dict[str, Any]) -> None:
    for key in ("table", "two_sided"):
        if key not in payload.get("weights", {}):
            continue
        side = "two-sided" if key == "two_sided" else "one-sided (the thesis's rule)"
        print(f"\nweight anomaly, {side}, vs the weight-distance attacker (AUROC vs held-out clean; share flagged)")
        for name, row in payload["weights"][key].items():
            auroc, flagged = row.get("auroc"), row.get("flagged_backdoored") or row.get("flagged")
            text = f"{auroc['mean']:.3f} +- {auroc['sd']:.3f}" if auroc else "  -  "
            share = f"{100 * flagged['mean']:.0f} %" if isinstance(flagged, dict) else "-"
            print(f"  {name:<42} AUROC {text:<15} flagged {share}")
    if "pairing" in payload:
        print("\nmodel pairing vs the same backdoor in both models (share of poisoned samples missed, %)")
        print(f"  {'pair':<50} " + " ".join(f"{r:>7}" for r in RATES))
        for name, row in payload["pairing"]["table"].items():
            cells = " ".join(f"{row[str(r)]:7.1f}" if row[str(r)] is not None else "      -" for r in RATES)
            print(f"  {name:<50} {cells}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("weights", "pairing", "all"), default="all")
    p.add_argument("--zoo", type=Path, default=ROOT / "runs" / "fr_weights")
    p.add_argument("--adaptive", type=Path, default=ROOT / "runs" / "fr_adaptive")
    p.add_argument("--base", type=Path, default=ROOT / "runs" / "fr" / "base")
    p.add_argument("--partner", type=Path, default=ROOT / "runs" / "fr_pair")
    p.add_argument("--references", type=int, default=16, help="clean references of a split (the rest held out)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variance", type=float, default=0.999)
    p.add_argument("--grid", type=lambda s: tuple(int(v) for v in s.split(",")), default=(1, 10, 100, 512, 1000))
    p.add_argument("--unseen-identities", type=int, default=400)
    p.add_argument("--unseen-seed", type=int, default=2)
    p.add_argument("--fit-share", type=float, default=2 / 3)
    p.add_argument("--steps", type=int, default=300, help="affine translator: batches of 128")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="adaptive_attacks")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    payload: dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    if args.part in ("weights", "all"):
        payload["weights"] = weight_part(args)
    if args.part in ("pairing", "all"):
        payload["pairing"] = pairing_part(args)
    earlier = RESULTS / f"{args.name}.json"
    if args.part != "all" and earlier.is_file():  # one part rerun: keep the other part's results
        kept = json.loads(earlier.read_text())
        payload = {**{k: v for k, v in kept.items() if k in ("weights", "pairing")}, **payload}
    out = write_result(args.name, payload)
    print_tables(payload)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
