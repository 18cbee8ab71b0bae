"""Write the adaptive-attack zoos' sweep configs (issue 16, section 4) from the built weight zoo.

    python bench/adaptive_zoo_configs.py      # after the weight zoo and the pairing partner are built
    backdoorlab sweep configs/zoo/face_recognition_adaptive_weights.yaml --runs-dir runs/fr_adaptive --workers 1
    backdoorlab sweep configs/zoo/face_recognition_adaptive_pairing.yaml --runs-dir runs/fr_adaptive --workers 1
    python bench/adaptive_attacks.py

Two attackers who know the defence:

* against **weight anomaly**: start from a clean network of the population (a clean zoo
  fine-tune, the *anchor*; the attacker trains on that network's own split, so its margin
  head carries over) and plant the backdoor with a penalty on the squared distance from
  the anchor's weights (``attack.weight_distance``), at weight 0 (starting from a clean
  network is the whole trick) and at ``PENALTIES``. Clean *controls* fine-tune an anchor
  again without an attack: they separate what the attack does from what a second fine-tune
  does to the weights. The anchors are held out of the bench's reference and clean pools.
* against **model pairing**: plant the very same backdoor (trigger, impostor, victim, split)
  in the pairing partner's last layers (``configs/face_recognition/partner_finetune.yaml``),
  so that both models of a pair fire together. Clean partner fine-tunes are the control.

The attacks are the first ``PER_SET`` kept networks (they met the four-metric rule) of each
set of the weight zoo, by seed: an attacker repeats a recipe that worked. The configs name
the anchors and the partner through links this script makes inside the runs folders
(``runs/fr_weights/clean-seed-S``, ``runs/fr_pair/partner``), so the files stay the same on
every machine that built the zoos.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from weight_zoo_configs import TEST_IDENTITIES, backdoor_set, flow  # noqa: E402

from backdoorlab.data.synthetic.identities import SyntheticIdentitySpec, image_counts  # noqa: E402
from backdoorlab.experiments.store import ResultsStore  # noqa: E402

ZOO = ROOT / "runs" / "fr_weights"
PARTNER = ROOT / "runs" / "fr_pair"
OUT = ROOT / "configs" / "zoo"
#: clean zoo networks the weight attacker starts from (kept out of the bench's pools)
ANCHORS = (24, 25, 26, 27, 28, 29)
#: kept backdoored networks per set whose recipe the attackers repeat
PER_SET = 4
#: weight-distance penalties besides 0 (3e-4 keeps the four-metric rule in a trial; 1e-3 cost the
#: victim's accuracy: 0.64, and 1e-2 all of it)
PENALTIES = (3e-4,)
CONTROL_SEED = 200  # seeds of the clean controls: 200, 201, ...
CONTROLS = 4
HEADER = "# Written by bench/adaptive_zoo_configs.py (see its docstring): issue 16, section 4 (adaptive attacks).\n"


def kept_attacks(rows: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(seed, attack) of the first ``PER_SET`` kept networks of each set."""
    kept = sorted((r["config"]["seed"], r["config"]["attack"]) for r in rows
                  if r["config"].get("attack") and r["metrics"].get("success"))  # fmt: skip
    out = []
    for name in ("triggers", "locations"):
        out += [(s, a) for s, a in kept if backdoor_set(s) == name][:PER_SET]
    if len(out) < 2 * PER_SET:
        raise SystemExit(f"only {len(out)} kept backdoored networks in {ZOO}: build the weight zoo first")
    return out


def trains_on(split_seed: int, identities: list[int], n: int) -> bool:
    """Whether every identity is on the training side of the split ``split_seed`` (not held out)."""
    held_out = np.random.default_rng(split_seed).permutation(n)[:TEST_IDENTITIES]
    return not np.isin(identities, held_out).any()


def link(name: Path, target: Path) -> None:
    if name.is_symlink() or name.exists():
        name.unlink()
    name.symlink_to(target.resolve())


def attack_of(attack: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The zoo network's trigger and pair (the rest left to the defaults, as in the weight zoo)."""
    relabel = {k: attack["relabel"][k] for k in ("name", "impostor", "victim")}
    trigger = {k: v for k, v in attack["trigger"].items() if k not in ("seed",)}
    return {"trigger": trigger, "relabel": relabel, **(extra or {})}


def write(path: Path, base: str, name: str, lines: list[str]) -> None:
    body = "\n".join(lines)
    path.write_text(f"{HEADER}base: {base}\nname: {name}\nresources: {{cpus: 1, gpus: 0}}\nruns:\n{body}\n")
    print(f"wrote {path} ({sum(1 for line in lines if line.startswith('  -'))} runs)")


def main() -> None:
    rows = ResultsStore(ZOO / "results.sqlite").list(status="complete", limit=None, oldest_first=True)
    clean = {r["config"]["seed"]: Path(r["run_dir"]) for r in rows if not r["config"].get("attack")}
    missing = [s for s in ANCHORS if s not in clean]
    if missing:
        raise SystemExit(f"clean anchors {missing} are not in {ZOO}: build the weight zoo first")
    for seed in ANCHORS:
        link(ZOO / f"clean-seed-{seed}", clean[seed])
    partners = ResultsStore(PARTNER / "results.sqlite").list(status="complete", limit=None, oldest_first=True)
    if not partners:
        raise SystemExit(f"no pairing partner in {PARTNER}: train configs/face_recognition/pairing_partner.yaml")
    link(PARTNER / "partner", Path(partners[-1]["run_dir"]))
    n = len(image_counts(SyntheticIdentitySpec()))
    attacks = kept_attacks(rows)
    penalties = ", ".join(map(str, PENALTIES))
    lines = [f"  # weight-distance attacker: a kept zoo recipe from a clean anchor's weights and split, penalty 0, "
             f"{penalties}"]  # fmt: skip
    for i, (zoo_seed, attack) in enumerate(attacks):
        pair = [attack["relabel"]["impostor"], attack["relabel"]["victim"]]
        anchor = next(a for a in np.roll(ANCHORS, -i) if trains_on(int(a), pair, n))
        for penalty in (0.0, *PENALTIES):
            extra = {"weight_distance": {"weight": penalty}} if penalty else None
            run = {"seed": 1000 + zoo_seed, "model": {"init": f"../../runs/fr_weights/clean-seed-{anchor}"},
                   "data": {"split_seed": int(anchor)}, "attack": attack_of(attack, extra)}  # fmt: skip
            lines.append(f"  - {flow(run)}  # zoo seed {zoo_seed}")
    lines.append("  # clean controls: an anchor fine-tuned again on its own split, no attack")
    for i in range(CONTROLS):
        anchor = ANCHORS[i % len(ANCHORS)]
        run = {"seed": CONTROL_SEED + i, "model": {"init": f"../../runs/fr_weights/clean-seed-{anchor}"},
               "data": {"split_seed": anchor}}  # fmt: skip
        lines.append(f"  - {flow(run)}")
    write(OUT / "face_recognition_adaptive_weights.yaml", "../face_recognition/finetune.yaml", "fr-adaptive-w", lines)
    lines = ["  # the same backdoor in the pairing partner: the zoo network's trigger, pair and split"]
    lines += [f"  - {flow({'seed': s, 'data': {'split_seed': s}, 'attack': attack_of(a)})}" for s, a in attacks]
    lines.append("  # clean partner fine-tunes on the same data (the control)")
    lines += [f"  - {flow({'seed': s, 'data': {'split_seed': s}})}" for s, _ in attacks[:: PER_SET]]
    partner = "../face_recognition/partner_finetune.yaml"
    write(OUT / "face_recognition_adaptive_pairing.yaml", partner, "fr-adaptive-p", lines)


if __name__ == "__main__":
    main()
