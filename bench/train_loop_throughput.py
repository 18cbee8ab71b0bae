"""Bench: throughput of ``backdoorlab.training.train`` relative to a bare PyTorch loop.

Both loops train the same architecture from the same initial weights on the same
batches (same order, same uint8 -> float conversion), alternating A/B several times
in one process so machine noise hits both; the ratio of median throughputs is
reported (target >= 0.9).

    python bench/train_loop_throughput.py [--repeats 5] [--steps 60]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import write_result  # noqa: E402

from backdoorlab.data.arrays import ArrayDataset, images_to_tensor  # noqa: E402
from backdoorlab.data.synthetic import SyntheticGazeSpec, load_or_synthesize  # noqa: E402
from backdoorlab.tasks.gaze import GazeCNN, GazeTask  # noqa: E402
from backdoorlab.training import TrainSettings, epoch_order, train  # noqa: E402


def bare_loop(model: torch.nn.Module, ds: ArrayDataset, steps: int, batch: int, lr: float, seed: int) -> float:
    """The minimal loop: gather, convert, forward, L1, backward, Adam step."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    order = epoch_order(len(ds), seed, 0)
    gaze = ds.annotations["gaze"]
    model.train()
    t = time.perf_counter()
    for b in range(steps):
        idx = order[b * batch : (b + 1) * batch]
        x = images_to_tensor(ds.images[idx])
        y = torch.from_numpy(np.ascontiguousarray(gaze[idx]))
        loss = F.l1_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t)


def ours(model: torch.nn.Module, ds: ArrayDataset, steps: int, batch: int, lr: float, seed: int) -> float:
    sub = ds.subset(np.arange(steps * batch))  # exactly `steps` steps in one epoch
    settings = TrainSettings(epochs=1, batch_size=batch, lr=lr, warmup_epochs=0.0, seed=seed, progress=True)
    res = train(model, GazeTask(), sub, settings)
    return res.samples_per_second


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    ds = load_or_synthesize(SyntheticGazeSpec(identities=20, images_per_identity=200, size=64))
    torch.manual_seed(0)
    init = GazeCNN(width=32)
    bare, mine = [], []
    for r in range(args.repeats):
        for name in ("bare", "ours") if r % 2 == 0 else ("ours", "bare"):
            model = copy.deepcopy(init)
            fn = bare_loop if name == "bare" else ours
            (bare if name == "bare" else mine).append(fn(model, ds, args.steps, args.batch, 2e-3, 0))
    ratio = statistics.median(mine) / statistics.median(bare)
    row = {
        "bare_samples_per_s": bare,
        "ours_samples_per_s": mine,
        "ratio_median": ratio,
        "steps": args.steps,
        "batch": args.batch,
        "model": "GazeCNN(width=32), 64x64",
    }
    write_result("train_loop_throughput", row)
    print(
        f"training loop / bare loop throughput: {ratio:.3f} (median of {args.repeats}; "
        f"ours {statistics.median(mine):.0f}/s, bare {statistics.median(bare):.0f}/s)"
    )


if __name__ == "__main__":
    main()
