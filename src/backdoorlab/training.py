"""The one training loop, for every task.

Why a single loop: attacks, defences and sweeps all train models; if each had its own
loop they would drift apart (seeding, schedules, NaN handling, devices). Variation
enters through hooks instead: the :class:`~backdoorlab.tasks.base.Task` (collate,
training step with named loss parts, trainable modules of its own), an optional
``batch_transform`` that may rewrite a batch given the indices of its samples (how
poisoning and input masking plug in), and an optional ``regularizer`` whose scalar is
added to the task loss (how an adaptive attack pushes its features away from a
defence's signature, see :mod:`backdoorlab.attacks.adaptive`, and how a defence that
trains with extra terms would plug in).

Determinism: the model is built by the caller after :func:`seed_everything`; batch
order comes from ``numpy.random.default_rng([seed, epoch])``. The same config and seed
give the same weights on CPU.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from backdoorlab.batches import BatchTransform, Regularizer
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import TrainingDivergedError
from backdoorlab.tasks.base import Task, to_device


@dataclass
class TrainSettings:
    """Optimiser and schedule. Defaults suit GazeCNN on 64x64 synthetic faces."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # "cosine" | "step" | "constant"
    warmup_epochs: float = 0.5
    seed: int = 0
    progress: bool = True
    nan_check_every: int = 1  # steps between finiteness checks (a sync on CUDA)
    # BatchNorm layers stay in eval mode (running statistics used and kept): for fine-tuning a
    # trained model on a few, unusual batches (defences) without moving its statistics
    freeze_batchnorm: bool = False
    # the task's augmentation (off when the samples are not images: cached trunk features)
    augment: bool = True


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    samples_per_second: float = 0.0


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


SCHEDULES = ("cosine", "step", "constant")
# A loss this many times the first step's has blown up even if it is finite (a learning rate at
# the allowed maximum takes a gaze L1 from 0.5 to 2e5 in one epoch); the floor keeps a run that
# starts near zero (fine-tuning a trained model) from tripping on noise.
DIVERGENCE_FACTOR = 1000.0
DIVERGENCE_FLOOR = 1e-2


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``step`` (linear warm-up, then decay)."""
    if schedule not in SCHEDULES:  # checked first, so a typo fails at step 0, not after warm-up
        raise ValueError(f"unknown schedule '{schedule}' (cosine, step, constant)")
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 0.1 ** int(progress * 3 + 1e-9) if progress < 1 else 0.001  # "step"


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def train(
    model: nn.Module,
    task: Task,
    data: ArrayDataset,
    settings: TrainSettings,
    device: torch.device | str = "cpu",
    batch_transform: BatchTransform | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    regularizer: Regularizer | None = None,
    modules: dict[str, nn.Module] | None = None,
) -> TrainResult:
    """Train ``model`` in place with Adam on ``task``; raise on a non-finite loss.

    ``modules`` are trainable modules the task owns besides the model
    (:meth:`Task.build_modules`, e.g. a margin head): they are moved to the device and
    optimised with the model. The history records the loss, and each named part the
    task's training step returns, as epoch means.

    ``regularizer(model, images, ann, idx)`` is called after the task loss of each batch
    (``images`` already on the device, ``ann`` and ``idx`` as the batch transform left
    them) and its scalar result is added to the loss that is minimised. It may run the
    model again (e.g. ``model.features(images)``; in training mode that updates BatchNorm
    running statistics a second time, so prefer eval mode as
    :class:`~backdoorlab.attacks.adaptive.FeatureSignaturePenalty` does). With a regularizer the history's
    ``loss`` is the total and ``regularizer`` its mean part; without one the loop is
    exactly the plain one (same weights for the same seed).
    """
    data.require(*task.required_annotations)
    dev = torch.device(device)
    owned = dict(modules or {})
    trained = [model, *owned.values()]
    for m in trained:
        m.to(dev).train()
        if settings.freeze_batchnorm:
            for module in m.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
    params = [p for m in trained for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = len(data) // settings.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"dataset has {len(data)} samples, fewer than one batch of {settings.batch_size}")
    total = steps_per_epoch * settings.epochs
    warmup = int(settings.warmup_epochs * steps_per_epoch)
    result = TrainResult()
    first_loss: float | None = None  # the reference a blow-up is measured against
    step = 0
    start = time.perf_counter()
    bar = tqdm(total=total, disable=not settings.progress, desc="train", unit="step", leave=False)
    try:
        for epoch in range(settings.epochs):
            order = epoch_order(len(data), settings.seed, epoch)
            running = torch.zeros((), device=dev)
            running_parts: dict[str, torch.Tensor] = {}
            for b in range(steps_per_epoch):
                idx = order[b * settings.batch_size : (b + 1) * settings.batch_size]
                images, ann = data.batch(idx)
                if settings.augment:
                    images, ann = task.augment(images, ann, idx, epoch, settings.seed)  # before poisoning
                if batch_transform is not None:
                    images, ann = batch_transform(images, ann, idx)
                target = to_device(task.collate(ann), dev)
                for group in opt.param_groups:
                    group["lr"] = settings.lr * lr_factor(step, total, warmup, settings.schedule)
                x = images.to(dev, non_blocking=True)
                out = task.training_step(model, owned, x, target)
                loss, parts = out.loss, dict(out.parts)
                if regularizer is not None:
                    extra = regularizer(model, x, ann, idx)
                    loss = loss + extra
                    parts["regularizer"] = extra
                for name, value in parts.items():
                    running_parts[name] = running_parts.get(name, torch.zeros((), device=dev)) + value.detach()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += loss.detach()
                step += 1
                if step % settings.nan_check_every == 0 or step == 1:
                    value = float(loss.detach())  # one sync: the finiteness and the blow-up checks share it
                    first_loss = value if first_loss is None else first_loss
                    if not math.isfinite(value):
                        raise TrainingDivergedError(
                            f"training diverged: loss is {value} at epoch {epoch + 1}, step {b + 1}; "
                            f"lower the learning rate (now {settings.lr}) or check the data for NaNs"
                        )
                    if value > DIVERGENCE_FACTOR * max(first_loss, DIVERGENCE_FLOOR):
                        raise TrainingDivergedError(
                            f"training diverged: loss {value:.4g} at epoch {epoch + 1}, step {b + 1} is over "
                            f"{DIVERGENCE_FACTOR:g}x the first step's {first_loss:.4g}; "
                            f"lower the learning rate (now {settings.lr})"
                        )
                bar.update(1)
            mean_loss = float(running) / steps_per_epoch
            if not math.isfinite(mean_loss):
                raise TrainingDivergedError(f"training diverged: mean loss {mean_loss} in epoch {epoch + 1}")
            record = {"epoch": epoch + 1, "loss": mean_loss, "lr": opt.param_groups[0]["lr"]}
            record.update({name: float(v) / steps_per_epoch for name, v in running_parts.items()})
            result.history.append(record)
            bar.set_postfix({"loss": f"{mean_loss:.4f}", **{k: f"{record[k]:.4f}" for k in running_parts}})
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start
    result.samples_per_second = total * settings.batch_size / max(result.seconds, 1e-9)
    return result
