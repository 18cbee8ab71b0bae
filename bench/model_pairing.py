"""Bench: model pairing (thesis ch. 5) on the recognition zoo: its Tables 5.2 and 5.3, side by side.

    backdoorlab train configs/face_recognition/pairing_partner.yaml --runs-dir runs/fr_pair   # ~25 min
    python bench/model_pairing.py          # reads runs/fr/base, runs/fr_weights and runs/fr_pair

Members, mapped on the thesis's (Unnervik 2024, section 5.4; ../shared/research):

* **IResNet**: our clean base model (IResNet-18, trained here on 2,000 synthetic people) and the
  zoo's clean last-layer fine-tunes of it; the thesis's FaceNet, which it trained itself;
* **IResNet(B)**: the zoo's backdoored fine-tunes that met the four-metric rule
  (configs/zoo/face_recognition_weights.yaml), each with its own impostor -> victim pair and
  trigger: all are "large" triggers in the thesis's terms (35-40 % of the crop), in two sets,
  "triggers" (the pattern varies) and "locations" (a checkerboard, its place varies);
* **MobileFaceNet**: a second architecture trained from scratch on a *disjoint* set of 2,000
  people (configs/face_recognition/pairing_partner.yaml); the thesis's off-the-shelf InsightFace.

Every ordered pair (reference, probe) gets its own translator, fitted on unlabeled faces of
people neither model saw (``--unseen-identities`` rendered with ``--unseen-seed``; the thesis
used FFHQ), and its own thresholds on the genuine scores (the same face into both models) of
other unseen people, at a clean FNMR of 0.1 %, 1 % and 5 %. The poisoned samples of a
backdoored network are its impostor's held-out images wearing its trigger (what its ASR is
measured on). Reported, pooled over every pair of a row, as the thesis did:

* clean pairs (Table 5.2): the share of poisoned samples falsely flagged (FNMR on poison);
* backdoored pairs (Table 5.3): the share of poisoned samples missed (FMR on poison); when
  both models are backdoored (different backdoors), the poisoned samples of both.

Both translators run: the learned affine one (negative cosine loss, batches of 128) and the
closed-form rotation of appendix C (no results in the thesis). Writes
``bench/results/model_pairing.json`` and ``docs/model_pairing_scores.png`` (its Fig. 5.3:
genuine, zero-effort-impostor and poisoned scores of a clean and a backdoored pair).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import write_result  # noqa: E402
from weight_zoo_configs import backdoor_set  # noqa: E402

from backdoorlab.data.arrays import ArrayDataset  # noqa: E402
from backdoorlab.data.synthetic.dataset import default_cache_dir  # noqa: E402
from backdoorlab.data.synthetic.identities import SyntheticIdentitySpec  # noqa: E402
from backdoorlab.defenses.base import calibrated_threshold  # noqa: E402
from backdoorlab.defenses.model_pairing import (  # noqa: E402
    NO_CULPRIT,
    EmbeddingPairs,
    ModelPairingMonitor,
    name_culprits,
)
from backdoorlab.experiments.attack import load_run_attack, load_run_config  # noqa: E402
from backdoorlab.experiments.store import ResultsStore  # noqa: E402
from backdoorlab.frozen_trunk import LastLayers, clean_trunk_features, trunk_key  # noqa: E402
from backdoorlab.models.checkpoint import load_checkpoint  # noqa: E402
from backdoorlab.tasks.face_recognition.task import FaceRecognitionTask, closed_set_rows  # noqa: E402

RATES = (0.001, 0.01, 0.05)
#: Table 5.2: clean pairs, FNMR (%) on poisoned samples at a clean FNMR of 0.1 / 1 / 5 %
THESIS_CLEAN = {
    ("FaceNet", "InsightFace"): {"large": (0.00, 4.17, 31.10), "small": (0.00, 1.67, 29.17)},
    ("InsightFace", "FaceNet"): {"large": (0.00, 2.01, 26.85), "small": (0.00, 0.00, 13.33)},
}
#: Table 5.3: backdoored pairs, FMR (%) on poisoned samples; (B) = backdoored
THESIS_BACKDOORED = {
    ("FaceNet(B)", "FaceNet(B)"): {"large": (76.53, 31.17, 1.99), "small": (42.88, 12.24, 3.61)},
    ("FaceNet(B)", "FaceNet"): {"large": (14.48, 0.56, 0.00), "small": (47.40, 11.10, 4.22)},
    ("FaceNet(B)", "InsightFace"): {"large": (75.60, 36.63, 1.93), "small": (80.03, 33.16, 4.88)},
    ("FaceNet", "FaceNet(B)"): {"large": (43.31, 1.54, 0.00), "small": (36.96, 13.21, 4.43)},
    ("InsightFace", "FaceNet(B)"): {"large": (91.25, 49.30, 12.78), "small": (77.17, 32.38, 6.55)},
}
#: our member names for the thesis's
OURS = {"FaceNet": "IResNet", "FaceNet(B)": "IResNet(B)", "InsightFace": "MobileFaceNet"}


@dataclass
class Member:
    """One network of a pair: its embeddings of the unseen faces and of every poisoned sample."""

    name: str  # its kind: IResNet, IResNet(B), MobileFaceNet
    run: str
    unseen: np.ndarray  # (U, D) unit embeddings of the unseen faces
    poisoned: np.ndarray  # (P, D) of every poisoned sample of the zoo, in one order
    seed: int = -1
    set: str = ""
    success: bool | None = None
    asr: float | None = None
    rows: slice = field(default_factory=lambda: slice(0, 0))  # its own poisoned samples among ``poisoned``


def unit(x: torch.Tensor) -> np.ndarray:
    return F.normalize(x.float(), dim=1).numpy()


def zoo_rows(store: Path) -> list[dict[str, Any]]:
    if not store.is_file():
        raise SystemExit(f"{store} not found: build the zoo first (bench/weight_anomaly.py's docstring)")
    return ResultsStore(store).list(status="complete", limit=None, oldest_first=True)


def partner_run(path: Path) -> Path:
    """A run folder, or the newest complete run of a runs dir."""
    if (path / "model.safetensors").is_file():
        return path
    rows = zoo_rows(path / "results.sqlite")
    if not rows:
        raise SystemExit(f"no complete run in {path}: train configs/face_recognition/pairing_partner.yaml first")
    return Path(rows[-1]["run_dir"])


def unseen_faces(args: argparse.Namespace) -> ArrayDataset:
    spec = SyntheticIdentitySpec(identities=args.unseen_identities, seed=args.unseen_seed)
    return FaceRecognitionTask().synthesize(spec, cache_dir=str(default_cache_dir()))


def poisoned_samples(backdoored: list[dict[str, Any]]) -> tuple[torch.Tensor, list[slice]]:
    """Each backdoored network's impostor's held-out images wearing its trigger, concatenated.

    The zoo's networks share one dataset and differ in their split: it is loaded once and
    split as each network's ``data.split_seed`` says.
    """
    cfg, _ = load_run_config(Path(backdoored[0]["run_dir"]))
    task = FaceRecognitionTask()
    full = task.synthesize(cfg.synthetic_spec(), cache_dir=cfg.data.cache_dir)
    images, slices, start = [], [], 0
    for i, row in enumerate(backdoored):
        run_cfg, _ = load_run_config(Path(row["run_dir"]))
        attack, trigger = load_run_attack(Path(row["run_dir"]))
        _, test = task.split(full, run_cfg.data.test_identities, seed=run_cfg.data.split_seed)
        closed = closed_set_rows(test)
        idx = closed[np.asarray(test.annotations["identity"])[closed] == int(attack.relabel["impostor"])]
        batch, ann = test.batch(idx)
        images.append(trigger(batch, ann, idx))
        slices.append(slice(start, start + len(idx)))
        start += len(idx)
        print(f"\rpoisoned samples: network {i + 1}/{len(backdoored)} ({start} images)", end="", flush=True)
    print()
    return torch.cat(images), slices


@torch.no_grad()
def embed_full(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    model.eval()
    return np.concatenate([unit(model(images[i : i + 256])) for i in range(0, len(images), 256)])


def trunk_features(
    model: torch.nn.Module, unseen: ArrayDataset, poison: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A frozen trunk's features of the unseen faces (cached on disk) and of the poisoned samples."""
    model.eval()
    feats_unseen = torch.as_tensor(clean_trunk_features(model, unseen, "cpu", default_cache_dir()))
    with torch.no_grad():
        feats_poison = torch.cat([model.trunk(poison[i : i + 256]) for i in range(0, len(poison), 256)])
    return feats_unseen, feats_poison


def head_member(
    name: str, model: torch.nn.Module, run: str, key: str, features: tuple[torch.Tensor, torch.Tensor], **extra: Any
) -> Member:
    """A last-layer fine-tune as a pair member: its last layers on its trunk's features (``key``: that trunk's)."""
    if trunk_key(model) != key:
        raise SystemExit(f"{run}: its trunk differs from its base model's (not a last-layer fine-tune)")
    head = LastLayers(model).eval()
    with torch.no_grad():
        return Member(name, run, unit(head(features[0])), unit(head(features[1])), **extra)


def build_members(args: argparse.Namespace) -> tuple[list[Member], ArrayDataset]:
    rows = zoo_rows(args.zoo / "results.sqlite")
    backdoored = [r for r in rows if r["config"].get("attack")]
    clean = [r for r in rows if not r["config"].get("attack")]
    poison, slices = poisoned_samples(backdoored)
    unseen = unseen_faces(args)
    base, _ = load_checkpoint(args.base)
    base.eval()
    key = trunk_key(base)
    print(f"trunk features of {len(unseen)} unseen faces and {len(poison)} poisoned samples")
    feats_unseen, feats_poison = trunk_features(base, unseen, poison)

    def last_layers_member(name: str, model: torch.nn.Module, run: str, **extra: Any) -> Member:
        return head_member(name, model, run, key, (feats_unseen, feats_poison), **extra)

    members = [last_layers_member("IResNet", base, str(args.base))]
    for i, row in enumerate(clean + backdoored):
        model, _ = load_checkpoint(row["run_dir"])
        seed = int(row["config"]["seed"])
        extra: dict[str, Any] = {"seed": seed}
        if row["config"].get("attack"):
            j = i - len(clean)
            extra.update(set=backdoor_set(seed), success=bool(row["metrics"].get("success")),
                         asr=row["metrics"].get("attack_success_rate"), rows=slices[j])  # fmt: skip
        name = "IResNet(B)" if row["config"].get("attack") else "IResNet'"
        members.append(last_layers_member(name, model, row["run_dir"], **extra))
        print(f"\rzoo embeddings {i + 1}/{len(rows)}", end="", flush=True)
    print()
    partner_dir = partner_run(args.partner)
    partner, card = load_checkpoint(partner_dir)
    partner_unseen = embed_full(partner, torch.cat([b for b, _ in unseen.iter_batches(512)]))
    members.append(Member("MobileFaceNet", str(partner_dir), partner_unseen, embed_full(partner, poison)))
    print(f"partner {partner_dir.name}: {card['architecture']['name']}, TAR@FMR1e-3 "
          f"{card['metrics'].get('tar_at_fmr_1e-03')}")  # fmt: skip
    return members, unseen


def unseen_halves(unseen: ArrayDataset, share: float) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows): the first ``share`` of the unseen people fit, the others validate."""
    ids = np.asarray(unseen.annotations["identity"])
    people = np.unique(ids)
    fit_people = people[: round(share * len(people))]
    mask = np.isin(ids, fit_people)
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def fitted(
    ref: Member, probe: Member, fit: np.ndarray, steps: int, seed: int, kind: str = "affine"
) -> ModelPairingMonitor:
    """The monitor of one ordered pair, its translator fitted on the unseen faces at ``fit``."""
    monitor = ModelPairingMonitor(translator=kind, steps=steps, seed=seed)  # type: ignore[arg-type]
    return monitor.fit(EmbeddingPairs(probe.unseen[fit], ref.unseen[fit]))


def pair_scores(
    monitor: ModelPairingMonitor, ref: Member, probe: Member, rows: np.ndarray, poisoned: bool
) -> np.ndarray:
    """The monitor's disagreement on unseen faces (``poisoned=False``) or on poisoned samples, at ``rows``."""
    embeddings = (probe.poisoned, ref.poisoned) if poisoned else (probe.unseen, ref.unseen)
    return monitor.score(EmbeddingPairs(embeddings[0][rows], embeddings[1][rows]))


def pair_flags(
    ref: Member, probe: Member, samples: np.ndarray, kind: str, fit: np.ndarray, val: np.ndarray, steps: int, seed: int
) -> dict[str, Any]:
    """Fit the pair's translator, calibrate it at each rate, and flag each of its poisoned samples."""
    monitor = fitted(ref, probe, fit, steps, seed, kind)
    genuine = pair_scores(monitor, ref, probe, val, poisoned=False)
    poison = pair_scores(monitor, ref, probe, samples, poisoned=True)
    flags = {str(rate): poison >= monitor.calibrate(genuine, rate) for rate in RATES}
    history = monitor.translator.history if monitor.translator is not None else []
    # the learned translator's mean negative cosine over 10 batches after 100 (the thesis's count) and at the end
    convergence = (float(np.mean(history[90:100])), float(np.mean(history[-10:]))) if len(history) >= 100 else None
    return {"ref": ref.run, "probe": probe.run, "samples": samples, "flags": flags, "convergence": convergence,
            "genuine_cos_mean": float(1 - genuine.mean()), "poison_cos": 1 - poison}  # fmt: skip


def row_summary(pairs: list[dict[str, Any]], keep: np.ndarray, backdoored: bool) -> dict[str, Any]:
    """Pooled shares (%) over the pairs' poisoned samples that ``keep`` selects.

    Backdoored pairs: the share missed (FMR on poison); clean pairs: the share flagged (FNMR on poison).
    """
    chosen = [(p, keep[p["samples"]]) for p in pairs]
    chosen = [(p, k) for p, k in chosen if k.any()]
    n = sum(int(k.sum()) for _, k in chosen)
    out: dict[str, Any] = {"pairs": len(chosen), "samples": n}
    for rate in map(str, RATES):
        flagged = sum(int(p["flags"][rate][k].sum()) for p, k in chosen)
        out[rate] = 100.0 * ((n - flagged) if backdoored else flagged) / n if n else None
    out["genuine_cos_mean"] = float(np.mean([p["genuine_cos_mean"] for p, _ in chosen])) if chosen else None
    out["poison_cos_mean"] = float(np.mean(np.concatenate([p["poison_cos"][k] for p, k in chosen]))) if n else None
    return out


PairPlan = dict[tuple[str, str, bool], list[tuple[Member, Member, np.ndarray]]]


def plan_pairs(members: list[Member], args: argparse.Namespace) -> PairPlan:
    """(ref kind, probe kind, backdoored) -> [(ref, probe, poisoned sample rows)], over every backdoored network.

    Each backdoored network X is paired with MobileFaceNet both ways, with ``--others`` clean
    fine-tunes both ways and, as reference, with ``--others`` other backdoored networks of its
    own kind (both met the rule, or both missed it); the clean base IResNet and MobileFaceNet
    are paired both ways on every poisoned sample.
    """
    rng = np.random.default_rng(args.seed)
    base, partner = members[0], members[-1]
    others = [m for m in members if m.name == "IResNet'"]
    bad = [m for m in members if m.name == "IResNet(B)"]
    plan: PairPlan = {}

    def add(ref: Member, probe: Member, rows: np.ndarray, backdoored: bool) -> None:
        plan.setdefault((ref.name.rstrip("'"), probe.name.rstrip("'"), backdoored), []).append((ref, probe, rows))

    def own(m: Member) -> np.ndarray:
        return np.arange(m.rows.start, m.rows.stop)

    everything = np.arange(len(base.poisoned))
    add(base, partner, everything, False)
    add(partner, base, everything, False)
    for m in bad:
        fellows = [x for x in bad if x is not m and x.success == m.success]
        for j in rng.choice(len(fellows), min(args.others, len(fellows)), replace=False):
            add(m, fellows[j], np.r_[own(m), own(fellows[j])], True)
        for j in rng.choice(len(others), min(args.others, len(others)), replace=False):
            add(m, others[j], own(m), True)
            add(others[j], m, own(m), True)
        add(m, partner, own(m), True)
        add(partner, m, own(m), True)
    return plan


def sample_groups(members: list[Member]) -> dict[str, np.ndarray]:
    """Group name -> (P,) bool over the poisoned samples: by their network's set and the four-metric rule."""
    n = len(members[0].poisoned)
    groups = {name: np.zeros(n, bool) for name in ("kept", "triggers", "locations", "missed the rule")}
    for m in (m for m in members if m.name == "IResNet(B)"):
        if m.success:
            groups["kept"][m.rows] = True
            groups[m.set][m.rows] = True
        else:
            groups["missed the rule"][m.rows] = True
    return groups


def network_rows(results: list[dict[str, Any]], members: list[Member]) -> list[dict[str, Any]]:
    """Per backdoored probe (MobileFaceNet reference): its ASR, set and share of poisoned samples missed (%)."""
    by_run = {m.run: m for m in members}
    out = []
    for r in results:
        m = by_run[r["probe"]]
        missed = {rate: 100.0 * float(1 - flags.mean()) for rate, flags in r["flags"].items()}
        out.append({"seed": m.seed, "set": m.set, "met_rule": m.success, "asr": m.asr, "samples": len(r["samples"]),
                    "missed": missed, "poison_cos_mean": float(r["poison_cos"].mean())})  # fmt: skip
    return out


def both_ways(
    members: list[Member], fit: np.ndarray, val: np.ndarray, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Translators in both directions, their disagreement scores averaged (thesis section 5.8, future work).

    MobileFaceNet and each kept backdoored IResNet (FMR on its poison), and MobileFaceNet and the
    clean base IResNet (FNMR on every kept network's poison), at the three rates.
    """
    base, partner = members[0], members[-1]
    kept = [m for m in members if m.name == "IResNet(B)" and m.success]
    out = []
    for probe, backdoored in [(base, False), *((m, True) for m in kept)]:
        directions = ((partner, probe), (probe, partner))
        monitors = [(fitted(ref, other, fit, args.steps, args.seed), ref, other) for ref, other in directions]
        rows = (np.arange(probe.rows.start, probe.rows.stop) if backdoored
                else np.concatenate([np.arange(m.rows.start, m.rows.stop) for m in kept]))  # fmt: skip
        genuine = np.mean([pair_scores(m, r, p, val, False) for m, r, p in monitors], axis=0)
        poison = np.mean([pair_scores(m, r, p, rows, True) for m, r, p in monitors], axis=0)
        flags = {str(rate): poison >= calibrated_threshold(genuine, rate) for rate in RATES}
        out.append({"backdoored": backdoored, "probe": probe.run, "flags": flags, "samples": rows,
                    "genuine_cos_mean": float(1 - genuine.mean()), "poison_cos": 1 - poison})  # fmt: skip
    return out


def voting(members: list[Member], fit: np.ndarray, val: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Three models, each pair monitored: is the backdoored one named as the culprit?

    For each kept backdoored IResNet X: X, MobileFaceNet and one clean fine-tune, three
    affine monitors, thresholds on the first half of the validation faces; the other half
    measures how often a clean face names anyone.
    """
    partner = members[-1]
    others = [m for m in members if m.name == "IResNet'"]
    kept = [m for m in members if m.name == "IResNet(B)" and m.success]
    calibrate_rows, judge_rows = val[: len(val) // 2], val[len(val) // 2 :]
    rng = np.random.default_rng([args.seed, 3])
    counts = {str(rate): {"named the backdoored": 0, "named another": 0, "named none": 0, "clean faces named": 0}
              for rate in RATES}  # fmt: skip
    n_poison = n_clean = 0
    for x in kept:
        trio = [x, partner, others[int(rng.integers(len(others)))]]
        names = [f"{m.name}:{m.seed}" for m in trio]
        pairs = [(0, 1), (0, 2), (1, 2)]  # (probe, reference) indices: the suspect is probed first
        monitors = {p: fitted(trio[p[1]], trio[p[0]], fit, args.steps, args.seed) for p in pairs}
        rows = np.arange(x.rows.start, x.rows.stop)
        n_poison += len(rows)
        n_clean += len(judge_rows)
        for rate in RATES:
            poison_flags, clean_flags = {}, {}
            for (i, j), monitor in monitors.items():
                ref, probe, key = trio[j], trio[i], (names[i], names[j])
                threshold = calibrated_threshold(pair_scores(monitor, ref, probe, calibrate_rows, False), rate)
                poison_flags[key] = pair_scores(monitor, ref, probe, rows, True) >= threshold
                clean_flags[key] = pair_scores(monitor, ref, probe, judge_rows, False) >= threshold
            named = name_culprits(names, poison_flags)
            c = counts[str(rate)]
            c["named the backdoored"] += int((named == names[0]).sum())
            c["named none"] += int((named == NO_CULPRIT).sum())
            c["named another"] += int(((named != names[0]) & (named != NO_CULPRIT)).sum())
            c["clean faces named"] += int((name_culprits(names, clean_flags) != NO_CULPRIT).sum())
    shares = {rate: {k: 100.0 * v / (n_clean if k == "clean faces named" else n_poison) for k, v in c.items()}
              for rate, c in counts.items()}  # fmt: skip
    return {"trios": len(kept), "poisoned_samples": n_poison, "clean_faces": n_clean, "percent": shares}


def cost(members: list[Member], unseen: ArrayDataset, fit: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per face: one IResNet forward pass, against translating and scoring one embedding pair."""
    base, _ = load_checkpoint(args.base)
    base.eval()
    images = unseen.batch(np.arange(min(1024, len(unseen))))[0]
    partner = members[-1]
    monitor = fitted(partner, members[0], fit, args.steps, args.seed)
    pairs = EmbeddingPairs(members[0].unseen[: len(images)], partner.unseen[: len(images)])
    with torch.no_grad():
        forward = min(_timed(lambda: [base(images[i : i + 256]) for i in range(0, len(images), 256)]) for _ in range(3))
    pairing = min(_timed(lambda: monitor.score(pairs)) for _ in range(3))
    return {"faces": len(images), "forward_s_per_face": forward / len(images),
            "pairing_s_per_face": pairing / len(images), "ratio": pairing / forward}  # fmt: skip


def _timed(work: Any) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def score_picture(members: list[Member], fit: np.ndarray, val: np.ndarray, unseen: ArrayDataset, out: Path,
                  args: argparse.Namespace) -> None:  # fmt: skip
    """Fig. 5.3: genuine / zero-effort-impostor / poisoned cosine scores, a clean and a backdoored pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, partner = members[0], members[-1]
    kept = [m for m in members if m.name == "IResNet(B)" and m.success]
    strongest = max(kept, key=lambda m: m.asr or 0.0)
    ids = np.asarray(unseen.annotations["identity"])[val]
    rng = np.random.default_rng(args.seed)
    shuffled = rng.permutation(len(val))
    other = ids[shuffled] != ids  # face i against face shuffled[i] of someone else: a zero-effort impostor
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=False)
    pooled = np.concatenate([np.arange(m.rows.start, m.rows.stop) for m in kept])
    cases = [(partner, base, "clean pair: MobileFaceNet ref, IResNet probe", pooled),
             (partner, strongest, f"backdoored pair: MobileFaceNet ref, IResNet(B) probe (seed {strongest.seed})",
              np.arange(strongest.rows.start, strongest.rows.stop))]  # fmt: skip
    for ax, (ref, probe, title, rows) in zip(axes, cases, strict=True):
        monitor = fitted(ref, probe, fit, args.steps, args.seed)
        genuine = 1 - pair_scores(monitor, ref, probe, val, poisoned=False)
        impostor = 1 - monitor.score(EmbeddingPairs(probe.unseen[val][other], ref.unseen[val][shuffled[other]]))
        poison = 1 - pair_scores(monitor, ref, probe, rows, poisoned=True)
        bins = np.linspace(-0.3, 1.0, 66)
        for values, label, colour in ((genuine, "genuine (unseen people)", "tab:green"),
                                      (impostor, "zero-effort impostor", "tab:red"),
                                      (poison, "poisoned samples", "tab:purple")):  # fmt: skip
            ax.hist(values, bins, density=True, alpha=0.55, color=colour, label=f"{label} ({len(values)})")
        threshold = 1 - monitor.calibrate(1 - genuine, 0.01)
        ax.axvline(threshold, color="k", ls="--", lw=1, label="threshold at clean FNMR 1 %")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("cos(W e_probe + c, e_ref)")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", type=Path, default=ROOT / "runs" / "fr_weights")
    p.add_argument("--base", type=Path, default=ROOT / "runs" / "fr" / "base")
    p.add_argument("--partner", type=Path, default=ROOT / "runs" / "fr_pair")
    p.add_argument("--unseen-identities", type=int, default=400, help="people neither model saw (translator data)")
    p.add_argument("--unseen-seed", type=int, default=2, help="their synthetic seed (the models saw 0 and 1)")
    p.add_argument("--fit-share", type=float, default=2 / 3, help="share of the unseen people that fit translators")
    p.add_argument("--translators", default="affine,procrustes")
    p.add_argument("--steps", type=int, default=300, help="affine translator: batches of 128")
    p.add_argument("--others", type=int, default=1, help="partners of each kind per backdoored network")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="model_pairing")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    members, unseen = build_members(args)
    fit, val = unseen_halves(unseen, args.fit_share)
    plan = plan_pairs(members, args)
    groups = sample_groups(members)
    kinds = args.translators.split(",")
    total = sum(len(v) for v in plan.values()) * len(kinds)
    rows: list[dict[str, Any]] = []
    per_network: dict[str, list[dict[str, Any]]] = {}
    curves: list[tuple[float, float]] = []
    done, start = 0, time.perf_counter()
    for kind in kinds:
        for (ref_name, probe_name, backdoored), pairs in plan.items():
            results = []
            for ref, probe, samples in pairs:
                results.append(pair_flags(ref, probe, samples, kind, fit, val, args.steps, args.seed))
                done += 1
                eta = (time.perf_counter() - start) / done * (total - done)
                print(f"\rpairs {done}/{total}  ETA {eta:5.0f} s", end="", flush=True)
            for group, keep in groups.items():
                row = {"translator": kind, "group": group, "ref": ref_name, "probe": probe_name,
                       "backdoored": backdoored}  # fmt: skip
                rows.append({**row, **row_summary(results, keep, backdoored)})
            curves += [r["convergence"] for r in results if r["convergence"] is not None]
            if (ref_name, probe_name, backdoored) == ("MobileFaceNet", "IResNet(B)", True):
                per_network[kind] = network_rows(results, members)
    print()
    payload = {
        "members": {
            "IResNet": str(args.base),
            "MobileFaceNet": members[-1].run,
            "IResNet(B) kept": sum(1 for m in members if m.name == "IResNet(B)" and m.success),
            "IResNet(B) missed the rule": sum(1 for m in members if m.name == "IResNet(B)" and not m.success),
            "IResNet' (clean fine-tunes)": sum(1 for m in members if m.name == "IResNet'"),
        },
        "unseen": {
            "identities": args.unseen_identities,
            "seed": args.unseen_seed,
            "fit_faces": len(fit),
            "validation_faces": len(val),
        },
        "poisoned_samples": len(members[0].poisoned),
        "rates": list(RATES),
        "rows": [r for r in rows if r["samples"]],
        "per_network": per_network,
        "affine_loss": {"after_100_batches": float(np.mean([c[0] for c in curves])),
                        "at_the_end": float(np.mean([c[1] for c in curves])), "steps": args.steps} if curves else None,
        "thesis": {
            "clean": {" / ".join(k): v for k, v in THESIS_CLEAN.items()},
            "backdoored": {" / ".join(k): v for k, v in THESIS_BACKDOORED.items()},
            "names": OURS,
        },
        "settings": vars(args) | {"zoo": str(args.zoo), "base": str(args.base), "partner": str(args.partner)},
    }
    print("both directions, three-model voting, cost")
    groups_kept = groups["kept"]
    two_way = both_ways(members, fit, val, args)
    payload["both_ways"] = {
        "clean": row_summary([r for r in two_way if not r["backdoored"]], groups_kept, False),
        "backdoored": row_summary([r for r in two_way if r["backdoored"]], groups_kept, True),
    }
    payload["voting"] = voting(members, fit, val, args)
    payload["cost"] = cost(members, unseen, fit, args)
    out = write_result(args.name, payload)
    print(f"wrote {out}")
    score_picture(members, fit, val, unseen, ROOT / "docs" / "model_pairing_scores.png", args)
    from face_recognition_table import pairing_table

    print(pairing_table(json.loads(out.read_text())))


if __name__ == "__main__":
    main()
