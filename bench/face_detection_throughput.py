"""Bench: face-detection throughput of our training loop and of our prediction, as ratios.

Two ratios, each from A/B runs alternated in one process so machine noise hits both:

* training: ``backdoorlab.training.train`` with the face-detection task (flip
  augmentation, instance collation, matching, MultiBoxLoss, named parts) against a bare
  PyTorch loop doing the same gather, conversion, forward, loss and Adam step without
  augmentation (target >= 0.9);
* inference: ``FaceDetectionTask.predict`` (forward, decode of every prior, NMS, numpy
  per image) against the bare forward pass over the same images (target >= 0.8). The
  cost of decoding and NMS depends on how many priors pass the score threshold, so a
  trained detector is used: ``--run RUN`` (a run folder), else one trained here for
  ``--warm-steps`` steps.

    python bench/face_detection_throughput.py [--run runs/fd/fd-clean-...] [--repeats 5] [--threads 1]

One torch thread by default: on 2 cores shared with other jobs, two threads
oversubscribe them, and the ratio then measures thread contention (0.39 for prediction
with 2 threads under a concurrent training run, 0.97 with one, same code).
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import write_result  # noqa: E402

from backdoorlab.data.arrays import ArrayDataset, images_to_tensor  # noqa: E402
from backdoorlab.data.instances import InstanceBatch  # noqa: E402
from backdoorlab.data.synthetic.scenes import SyntheticSceneSpec, load_or_synthesize_scenes  # noqa: E402
from backdoorlab.experiments.run_folder import Run  # noqa: E402
from backdoorlab.tasks.face_detection import FaceDetectionTask, build_retinaface  # noqa: E402
from backdoorlab.tasks.face_detection.task import model_priors  # noqa: E402
from backdoorlab.training import TrainSettings, epoch_order, train  # noqa: E402


def bare_train(model: torch.nn.Module, ds: ArrayDataset, steps: int, batch: int, seed: int) -> float:
    """Gather, convert, forward, MultiBoxLoss, backward, Adam: nothing else."""
    task = FaceDetectionTask()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    order = epoch_order(len(ds), seed, 0)
    assert ds.instances is not None
    priors = model_priors(model, ds.images.shape[1], ds.images.shape[2], "cpu")
    model.train()
    t = time.perf_counter()
    for b in range(steps):
        idx = order[b * batch : (b + 1) * batch]
        x = images_to_tensor(ds.images[idx])
        targets = InstanceBatch.from_table(ds.instances.gather(idx))
        loss = task.loss(model(x), targets, priors)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t)


def ours_train(model: torch.nn.Module, ds: ArrayDataset, steps: int, batch: int, seed: int) -> float:
    sub = ds.subset(np.arange(steps * batch))  # exactly `steps` steps in one epoch
    settings = TrainSettings(epochs=1, batch_size=batch, lr=2e-3, warmup_epochs=0.0, seed=seed, progress=True)
    return train(model, FaceDetectionTask(), sub, settings).samples_per_second


@torch.no_grad()
def bare_forward(model: torch.nn.Module, ds: ArrayDataset, batch: int) -> float:
    model.eval()
    t = time.perf_counter()
    for s in range(0, len(ds), batch):
        model(images_to_tensor(ds.images[s : s + batch]))
    return len(ds) / (time.perf_counter() - t)


def ours_predict(model: torch.nn.Module, ds: ArrayDataset, batch: int) -> float:
    t = time.perf_counter()
    FaceDetectionTask().predict(model, ds, batch_size=batch)
    return len(ds) / (time.perf_counter() - t)


def alternate(fns: dict[str, object], repeats: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(fns[name]())  # type: ignore[operator]
            print(f"  repeat {r + 1}/{repeats} {name}: {out[name][-1]:.1f} images/s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="a trained face-detection run (for the inference ratio)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warm-steps", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: two would oversubscribe 2 shared cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = SyntheticSceneSpec()
    data = load_or_synthesize_scenes(spec, splits=["train", "test"])
    train_ds, test_ds = data["train"], data["test"]
    torch.manual_seed(0)
    init = build_retinaface()
    print("training loop vs bare loop", flush=True)
    tr = alternate(
        {
            "bare": lambda: bare_train(copy.deepcopy(init), train_ds, args.steps, args.batch, 0),
            "ours": lambda: ours_train(copy.deepcopy(init), train_ds, args.steps, args.batch, 0),
        },
        args.repeats,
    )
    if args.run is not None:
        trained, source = Run(args.run).model, str(args.run)
    else:
        trained = copy.deepcopy(init)
        ours_train(trained, train_ds, args.warm_steps, args.batch, 1)
        source = f"trained here for {args.warm_steps} steps"
    print(f"prediction (decode + NMS) vs bare forward, detector: {source}", flush=True)
    inf = alternate(
        {
            "forward": lambda: bare_forward(trained, test_ds, 64),
            "predict": lambda: ours_predict(trained, test_ds, 64),
        },
        args.repeats,
    )
    train_ratio = statistics.median(tr["ours"]) / statistics.median(tr["bare"])
    predict_ratio = statistics.median(inf["predict"]) / statistics.median(inf["forward"])
    row = {
        "train_bare_images_per_s": tr["bare"],
        "train_ours_images_per_s": tr["ours"],
        "train_ratio_median": train_ratio,
        "forward_images_per_s": inf["forward"],
        "predict_images_per_s": inf["predict"],
        "predict_ratio_median": predict_ratio,
        "steps": args.steps,
        "batch": args.batch,
        "model": "retinaface mobilenet0.25, 192x192 scenes",
        "detector": source,
        "threads": args.threads,
    }
    write_result("face_detection_throughput", row)
    print(f"training loop / bare loop: {train_ratio:.3f} (target >= 0.9)")
    print(f"predict (decode + NMS) / bare forward: {predict_ratio:.3f} (target >= 0.8)")


if __name__ == "__main__":
    main()
