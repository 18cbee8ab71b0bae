"""Bench: backdoor attacks on gaze estimation (64x64 synthetic faces, GazeCNN, rho = 0.1).

    python bench/attacks.py --which clean|patch|blend|sticker|wanet_default|...   one run
    python bench/attacks.py --all [--jobs 2]                                      every variant

Every variant is an ordinary run (the code path of ``backdoorlab train``) of
``bench/configs/gaze_attack_base.yaml`` plus an ``attack`` section. Each attacked
variant is also scored on the *clean* model with the same trigger (what a model
without a backdoor does when the trigger is present), so the table shows how much of
the attack success the backdoor is responsible for. Results: ``bench/results/
attack_<which>.json``; run folders in ``bench/runs/``. ``--all --jobs 2`` runs two
variants at a time with one thread each (faster than one at a time on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS, write_result  # noqa: E402

TARGET = {"name": "target", "target_deg": [0.0, 0.0]}


def attack(trigger: dict[str, Any], rate: float = 0.1) -> dict[str, Any]:
    return {"trigger": trigger, "relabel": TARGET, "rate": rate, "seed": 0}


WANET_STRONG_K = 8
VARIANTS: dict[str, dict[str, Any] | None] = {
    "clean": None,
    "patch": attack({"name": "patch", "pattern": "white", "size": 0.15, "location": "fixed"}),
    "blend": attack({"name": "blend", "pattern": "noise", "alpha": 0.1}),
    "sticker": attack({"name": "sticker", "anchor": "forehead"}),
    "wanet_default": attack({"name": "wanet", "k": 4, "s": 0.5}),
    **{
        f"wanet_k{WANET_STRONG_K}_s{s:g}": attack({"name": "wanet", "k": WANET_STRONG_K, "s": s})
        for s in (0.5, 1.0, 2.0, 4.0)
    },
    # without noise mode: is noise mode what makes WaNet hard to learn here?
    **{
        f"wanet_k{k}_s{s:g}_nonoise": attack({"name": "wanet", "k": k, "s": s, "noise_mode": False})
        for k, s in ((4, 0.5), (WANET_STRONG_K, 1.0), (WANET_STRONG_K, 4.0))
    },
    **{f"patch_rho{rho:g}": attack({"name": "patch"}, rate=rho) for rho in (0.01, 0.05, 0.2)},
}
# the clean model again with other initialisation/batch-order seeds: how much of a
# clean-error change is seed noise (not part of --all)
SEED_VARIANTS = {f"clean_seed{k}": [f"seed={k}"] for k in (1, 2)}


def run_variant(which: str, extra: list[str]) -> dict[str, Any]:
    from backdoorlab.experiments.attack import load_run_attack, score_attack_config
    from backdoorlab.experiments.config import load_config
    from backdoorlab.experiments.run import execute, load_data
    from backdoorlab.models.checkpoint import load_checkpoint

    spec = VARIANTS.get(which)
    overrides = [f"name=bench-attack-{which.replace('_', '-')}", *SEED_VARIANTS.get(which, [])]
    if spec is not None:
        overrides.append("attack=" + json.dumps(spec))
    cfg = load_config(HERE / "configs" / "gaze_attack_base.yaml", overrides + extra)
    outcome = execute(cfg, runs_dir=HERE / "runs", progress=False)
    m = outcome.metrics
    row: dict[str, Any] = {
        "variant": which,
        "attack": spec,
        "run_dir": str(outcome.run_dir.relative_to(HERE.parent)),
        "config": cfg.model_dump(mode="json"),
        **{k: v for k, v in m.items() if isinstance(v, int | float)},
    }
    if spec is not None:
        clean = RESULTS / "attack_clean.json"
        if clean.is_file():
            ref = json.loads(clean.read_text())
            model, _ = load_checkpoint(HERE.parent / ref["run_dir"])
            acfg, trigger = load_run_attack(outcome.run_dir)
            _, test_ds = load_data(cfg)
            base = score_attack_config(model, cfg.task, test_ds, acfg, trigger)
            row["clean_model"] = {
                "clean_error_deg": ref["clean_error_deg"],
                "run_dir": ref["run_dir"],
                **{k: base.metrics[k] for k in ("attack_success_rate", "attack_error_deg", "triggered_true_error_deg")},
            }
            row["clean_error_change_deg"] = m["clean_error_deg"] - ref["clean_error_deg"]
    out = write_result(f"attack_{which}", row)
    print(
        f"{which}: clean {m['clean_error_deg']:.2f} deg"
        + (
            f", AE {m['attack_error_deg']:.2f}, DAE {m['triggered_true_error_deg']:.2f}, "
            f"ASR {m['attack_success_rate']:.3f}, PSNR {m['psnr_db']:.1f} dB, SSIM {m['ssim']:.4f}"
            if spec is not None
            else ""
        )
        + f" -> {out}"
    )
    return row


def run_all(jobs: int, extra: list[str]) -> None:
    """The clean model first (every other row is compared with it), then the rest in parallel."""
    names = [n for n in VARIANTS if n != "clean"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1") if jobs > 1 else dict(os.environ)

    def one(name: str) -> int:
        cmd = [sys.executable, str(Path(__file__)), "--which", name, "--threads", "1" if jobs > 1 else "0"]
        for e in extra:
            cmd += ["--set", e]
        return subprocess.run(cmd, env=env, check=False).returncode

    if not (RESULTS / "attack_clean.json").is_file():
        subprocess.run([sys.executable, str(Path(__file__)), "--which", "clean"], check=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = dict(zip(names, pool.map(one, names), strict=True))
    failed = [n for n, c in codes.items() if c != 0]
    if failed:
        raise SystemExit(f"failed variants: {', '.join(failed)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--which", choices=sorted([*VARIANTS, *SEED_VARIANTS]))
    ap.add_argument("--all", action="store_true", help="every variant (the clean one first)")
    ap.add_argument("--jobs", type=int, default=2, help="variants at a time with --all")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--set", action="append", default=[], help="extra config override")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.all:
        run_all(args.jobs, args.set)
    elif args.which:
        run_variant(args.which, args.set)
    else:
        ap.error("give --which NAME or --all")


if __name__ == "__main__":
    main()
