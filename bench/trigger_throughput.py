"""Bench: trigger cost, and poisoned vs clean training throughput.

1. Each trigger on a batch of 512 64x64 face crops, as a throughput ratio to the bare
   tensor operation it wraps, timed alternately in the same process (median of
   ``--repeats`` rounds; target >= 0.9):

   ========  =====================================================================
   patch     ``clone`` + slice assignment of the cached patch
   blend     ``torch.lerp`` with the cached pattern
   wanet     ``grid_sample`` with the cached grid
   sticker   ``torch.lerp`` of the image towards the tape with a precomputed
             per-pixel coverage (what is left once the geometry is known)
   ========  =====================================================================

2. Poisoned training (rho = 0.1, each trigger) vs clean training: same model init,
   same batches, alternating A/B, samples/s ratio (target >= 0.9, i.e. no more than
   10% slower).

    python bench/trigger_throughput.py [--repeats 7] [--steps 40]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import write_result  # noqa: E402

from backdoorlab.attacks.poisoning import Poisoning  # noqa: E402
from backdoorlab.attacks.selectors import RateSelector  # noqa: E402
from backdoorlab.data.synthetic import SyntheticGazeSpec, load_or_synthesize  # noqa: E402
from backdoorlab.tasks.gaze import GazeCNN, GazeTask  # noqa: E402
from backdoorlab.tasks.gaze.relabels import FixedGazeTarget  # noqa: E402
from backdoorlab.training import TrainSettings, train  # noqa: E402
from backdoorlab.triggers import Trigger, build_trigger  # noqa: E402

TRIGGER_SPECS = {
    "patch": {"name": "patch"},
    "blend": {"name": "blend"},
    "wanet": {"name": "wanet", "k": 8, "s": 4.0},
    "sticker": {"name": "sticker"},
}


def timed(fn: Callable[[], torch.Tensor], inner: int) -> float:
    """Calls per second of ``fn`` over ``inner`` calls."""
    t = time.perf_counter()
    for _ in range(inner):
        fn()
    return inner / (time.perf_counter() - t)


def alternate(a: Callable[[], float], b: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Medians of ``a()`` and ``b()`` measured in alternating order (ABBA...), so drift hits both."""
    ra: list[float] = []
    rb: list[float] = []
    for r in range(repeats):
        for first in (True, False) if r % 2 == 0 else (False, True):
            (ra if first else rb).append(a() if first else b())
    return statistics.median(ra), statistics.median(rb)


def bare_op(name: str, trigger: Trigger, x: torch.Tensor, ann: dict, idx: np.ndarray) -> Callable[[], torch.Tensor]:
    _, c, h, w = x.shape
    if name == "patch":
        p = trigger.patch(c, h, w, x.device, x.dtype)  # type: ignore[attr-defined]
        y0, x0 = trigger.fixed_origin(h, w)  # type: ignore[attr-defined]
        s = p.shape[-1]

        def f() -> torch.Tensor:
            out = x.clone()
            out[:, :, y0 : y0 + s, x0 : x0 + s] = p
            return out

        return f
    if name == "blend":
        pat = trigger.pattern_for(c, h, w, x.device, x.dtype).expand_as(x)  # type: ignore[attr-defined]
        return lambda: torch.lerp(x, pat, trigger.alpha)  # type: ignore[attr-defined]
    if name == "wanet":
        grid = trigger.grid(h, w, x.device, x.dtype).expand(len(x), -1, -1, -1)  # type: ignore[attr-defined]
        return lambda: F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    if name == "sticker":
        y = trigger(x, ann, idx)
        diff = (y - x).abs().amax(1, keepdim=True)
        coverage = (diff > 1e-6).float()
        tape = torch.full_like(x, 0.9)
        return lambda: torch.lerp(x, tape, coverage)
    raise KeyError(name)


def trigger_ratios(repeats: int, inner: int) -> dict[str, dict[str, float]]:
    ds = load_or_synthesize(SyntheticGazeSpec(identities=20, images_per_identity=200, size=64))
    idx = np.arange(512)
    x, ann = ds.batch(idx)
    out: dict[str, dict[str, float]] = {}
    for name, spec in TRIGGER_SPECS.items():
        trigger = build_trigger(spec)
        bare = bare_op(name, trigger, x, ann, idx)
        ours: Callable[[], torch.Tensor] = lambda t=trigger: t(x, ann, idx)  # noqa: E731
        ours(), bare()  # warm caches
        a, b = alternate(lambda f=ours: timed(f, inner), lambda f=bare: timed(f, inner), repeats)
        out[name] = {"ours_calls_per_s": a, "bare_calls_per_s": b, "ratio": a / b}
        print(f"trigger {name:8s}: {a / b:.3f} of the bare op ({a * 512:.0f} img/s)")
    return out


def training_ratios(repeats: int, steps: int, batch: int) -> dict[str, dict[str, float]]:
    ds = load_or_synthesize(SyntheticGazeSpec(identities=20, images_per_identity=200, size=64))
    sub = ds.subset(np.arange(steps * batch))
    torch.manual_seed(0)
    init = GazeCNN(width=32)
    settings = TrainSettings(epochs=1, batch_size=batch, warmup_epochs=0.0, progress=False)

    def run(transform: Callable | None) -> float:
        return train(copy.deepcopy(init), GazeTask(), sub, settings, batch_transform=transform).samples_per_second

    out: dict[str, dict[str, float]] = {}
    for name, spec in TRIGGER_SPECS.items():
        p = Poisoning(RateSelector(0.1, 0), build_trigger(spec), FixedGazeTarget())
        plan = p.plan(len(sub))
        poisoned, clean = alternate(lambda p=p, plan=plan: run(p.batch_transform(plan)), lambda: run(None), repeats)
        out[name] = {"clean_samples_per_s": clean, "poisoned_samples_per_s": poisoned, "ratio": poisoned / clean}
        print(f"poisoned training ({name:8s}) / clean: {out[name]['ratio']:.3f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--inner", type=int, default=20, help="trigger calls per timing")
    ap.add_argument("--steps", type=int, default=40, help="training steps per timing")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    triggers = trigger_ratios(args.repeats, args.inner)
    training = training_ratios(max(3, args.repeats // 2), args.steps, args.batch)
    write_result(
        "trigger_throughput",
        {"batch": 512, "image": "3x64x64", "triggers": triggers, "poisoned_training": training, "rate": 0.1},
    )


if __name__ == "__main__":
    main()
