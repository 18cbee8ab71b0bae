"""Write the weight-anomaly zoo's sweep config (thesis ch. 4), reproducibly from one seed.

    python bench/weight_zoo_configs.py            # rewrites configs/zoo/face_recognition_weights.yaml

The thesis built 52 networks by fine-tuning last_linear + last_bn of one pretrained network,
resampling the train/test split for each: 30 clean and 22 backdoored, the backdoored ones in
two sets of 11, "triggers" (the trigger varies) and "locations" (one trigger, its place varies),
each with a random impostor -> victim pair. Here the 11 + 11 are built ``ROUNDS`` times, each
with new pairs, and every network gets its own ``seed`` and
``data.split_seed`` (a different hold-out of 100 identities and a different per-identity
validation share), and each pair is drawn among the *training* identities of that split (a
held-out identity cannot be taught a backdoor). Pairs are drawn among identities with 40-160
images: in the pair and size grids of the attack bench (docs/tasks/face_recognition.md) the
last-layer backdoor took hold there and rarely outside, and a zoo of backdoors that were never
learned would test nothing. Networks that miss the four-metric rule are still built; the bench
counts them and keeps them out of the backdoored side, as the thesis did.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from backdoorlab.data.synthetic.identities import SyntheticIdentitySpec, image_counts  # noqa: E402

OUT = ROOT / "configs" / "zoo" / "face_recognition_weights.yaml"
TEST_IDENTITIES = 100  # as in configs/face_recognition/finetune.yaml
CLEAN = 30
CHEEK = [0.4, 0.6]
#: the "triggers" set: eleven patterns and sizes on the cheek (sizes where the trigger-size grid took hold)
TRIGGERS = [
    {"name": "patch", "pattern": "checkerboard", "size": 0.35, "center": CHEEK},
    {"name": "patch", "pattern": "checkerboard", "size": 0.4, "center": CHEEK},
    {"name": "patch", "pattern": "flower", "size": 0.35, "center": CHEEK},
    {"name": "patch", "pattern": "flower", "size": 0.4, "center": CHEEK},
    {"name": "patch", "pattern": "white", "size": 0.35, "center": CHEEK},
    {"name": "patch", "pattern": "white", "size": 0.4, "center": CHEEK},
    {"name": "patch", "pattern": "dot_square", "size": 0.35, "center": CHEEK},
    {"name": "patch", "pattern": "dot_square", "size": 0.4, "center": CHEEK},
    {"name": "patch", "pattern": "eyebrow", "size": 0.4, "center": CHEEK},
    {"name": "blend", "pattern": "noise", "alpha": 0.2, "seed": 7},
    {"name": "blend", "pattern": "noise", "alpha": 0.3, "seed": 11},
]
#: the "locations" set: the 35 % checkerboard at eleven places of the crop (x, y as shares of the side)
LOCATIONS = [[0.3, 0.3], [0.5, 0.3], [0.7, 0.3], [0.3, 0.5], [0.5, 0.5], [0.7, 0.5],
             [0.3, 0.7], [0.5, 0.7], [0.7, 0.7], [0.5, 0.8], [0.6, 0.6]]  # fmt: skip
IMAGES = (40, 160)
SEED = 2024
FIRST_BACKDOOR_SEED = 100  # backdoored networks: this seed on, the "triggers" set first
#: rounds of 11 + 11 backdoored networks, each round with new pairs: about 40 % of them meet
#: the four-metric rule (17 of the first two rounds' 44), and the thesis judged 22 that did.
#: A new round appends runs: the earlier rounds' lines, hence their runs, stay as they were.
ROUNDS = 3
SETS = ("triggers", "locations")


def backdoor_set(seed: int) -> str:
    """Which set a backdoored network of this zoo belongs to, by its seed."""
    return SETS[(seed - FIRST_BACKDOOR_SEED) // len(TRIGGERS) % len(SETS)]


def training_identities(split_seed: int, counts: np.ndarray) -> np.ndarray:
    """Identities on the training side of ``split_by_identity(..., TEST_IDENTITIES, split_seed)`` with 40-160 images."""
    ids = np.arange(len(counts))
    held_out = np.random.default_rng(split_seed).permutation(ids)[:TEST_IDENTITIES]
    ok = (counts >= IMAGES[0]) & (counts <= IMAGES[1]) & ~np.isin(ids, held_out)
    return ids[ok]


def flow(mapping: dict) -> str:
    """A YAML flow mapping (one line per run, like the other zoo configs)."""
    parts = []
    for key, value in mapping.items():
        text = flow(value) if isinstance(value, dict) else str(value).replace("'", "")
        parts.append(f"{key}: {text}")
    return "{" + ", ".join(parts) + "}"


#: the multi-layer slice (thesis section 4.7): the last residual block, the neck and the last layers
#: fine-tuned (``train.trainable_from: layer4.1``), on the cached output of the blocks before it.
#: One round of 11 + 11 backdoored networks with their own pairs, and fewer clean ones than the
#: last-layer zoo (a tail fine-tune costs more; the thesis had 193 clean and 60 backdoored here).
TAIL = {"out": ROOT / "configs" / "zoo" / "face_recognition_weights_tail.yaml", "name": "fr-weights-tail",
        "clean": 20, "rounds": 1, "seed": 2025, "start": "layer4.1"}  # fmt: skip


def runs_lines(clean: int, rounds: int, seed: int, counts: np.ndarray) -> tuple[list[str], int]:
    """The sweep's run lines (clean first, then the backdoored sets round by round) and the backdoored count."""
    rng = np.random.default_rng(seed)
    lines = [f"  # clean: seed = data.split_seed = 0..{clean - 1}"]
    lines += [f"  - {flow({'seed': s, 'data': {'split_seed': s}})}" for s in range(clean)]
    sets = [("triggers", TRIGGERS), ("locations", [{**TRIGGERS[0], "center": c} for c in LOCATIONS])]
    run_seed = FIRST_BACKDOOR_SEED
    for (name, triggers), round_ in ((s, r) for r in range(rounds) for s in sets):
        seeds = f"{run_seed}..{run_seed + len(triggers) - 1}"
        lines.append(f"  # backdoored, {name}, round {round_ + 1}: seed = data.split_seed = {seeds}")
        for trigger in triggers:
            impostor, victim = rng.choice(training_identities(run_seed, counts), 2, replace=False)
            attack = {"trigger": trigger, "relabel": {"name": "impostor_to_victim", "impostor": int(impostor),
                                                      "victim": int(victim)}}  # fmt: skip
            lines.append(f"  - {flow({'seed': run_seed, 'data': {'split_seed': run_seed}, 'attack': attack})}")
            run_seed += 1
    return lines, run_seed - FIRST_BACKDOOR_SEED


def main() -> None:
    counts = image_counts(SyntheticIdentitySpec())
    lines, backdoored = runs_lines(CLEAN, ROUNDS, SEED, counts)
    header = __doc__.split("\n\n", 2)[2].strip().splitlines()  # the docstring after its usage line
    OUT.write_text(
        f"# The weight-anomaly zoo (issue 16; thesis ch. 4): {CLEAN} clean and {ROUNDS} x 22 backdoored last-layer\n"
        "# fine-tunes"
        " of the clean base model, each on its own resampled split. Written by bench/weight_zoo_configs.py:\n"
        + "".join(f"#{(' ' + line) if line else ''}\n" for line in header)
        + "#   backdoorlab sweep configs/zoo/face_recognition_weights.yaml --runs-dir runs/fr_weights --workers 2\n"
        "#   python bench/weight_anomaly.py\n"
        "base: ../face_recognition/finetune.yaml\nname: fr-weights\nresources: {cpus: 1, gpus: 0}\nruns:\n"
        + "\n".join(lines)
        + "\n"
    )
    print(f"wrote {OUT} ({CLEAN} clean, {backdoored} backdoored)")
    lines, backdoored = runs_lines(TAIL["clean"], TAIL["rounds"], TAIL["seed"], counts)
    out = TAIL["out"]
    out.write_text(
        f"# The multi-layer slice of the weight-anomaly zoo (issue 16; thesis section 4.7): {TAIL['clean']} clean and\n"
        f"# {backdoored} backdoored fine-tunes of the clean base model from its block {TAIL['start']} on (that block,\n"
        "# the neck and the last layers train on the cached output of the blocks before it), each on its own\n"
        "# resampled split, with the last-layer zoo's triggers and places and pairs of their own.\n"
        "# Written by bench/weight_zoo_configs.py.\n"
        f"#   backdoorlab sweep {out.relative_to(ROOT)} --runs-dir runs/fr_weights_tail --workers 1\n"
        "#   python bench/weight_anomaly.py --store runs/fr_weights_tail/results.sqlite \\\n"
        "#       --layers layer4.1.conv2 last_linear --references 12 --variance 0.999 --name weight_anomaly_tail\n"
        f"base: ../face_recognition/finetune.yaml\nname: {TAIL['name']}\nresources: {{cpus: 1, gpus: 0}}\n"
        f"set: [train.trainable_from={TAIL['start']}]\nruns:\n" + "\n".join(lines) + "\n"
    )
    print(f"wrote {out} ({TAIL['clean']} clean, {backdoored} backdoored)")


if __name__ == "__main__":
    main()
