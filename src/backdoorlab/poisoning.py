"""Poisoning = selector + trigger + relabel, applied to a dataset by seed.

One abstraction for every task: a new attack is a new trigger or a new relabel, never
a new training script. The poisoned dataset is never materialised: the selector fixes
*which* training samples are poisoned (a :class:`PoisonPlan`, stored with the run),
and :meth:`Poisoning.batch_transform` rewrites those samples inside the one training
loop as their batches go by. That keeps poisoned training as fast as clean training
(only the poisoned rows of a batch are touched) and lets per-application randomness,
such as WaNet's noise mode, differ between epochs as in the published attacks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from backdoorlab.errors import ConfigError
from backdoorlab.relabel import Relabel
from backdoorlab.training import BatchTransform
from backdoorlab.triggers.base import Trigger

Tensor = torch.Tensor


class Selector(Protocol):
    def select(self, n: int) -> np.ndarray:
        """Sorted indices (into a dataset of ``n`` samples) to poison."""
        ...

    def params(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RateSelector:
    """A seeded uniform choice of ``round(rate * n)`` samples (at least one)."""

    rate: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.rate, int | float) and math.isfinite(self.rate) and 0 < self.rate <= 1):
            raise ConfigError(f"poison rate must be in (0, 1], got {self.rate}")

    def select(self, n: int) -> np.ndarray:
        k = min(n, max(1, round(self.rate * n)))
        return np.sort(np.random.default_rng([self.seed, 0x9015]).choice(n, k, replace=False)).astype(np.int64)

    def params(self) -> dict[str, Any]:
        return {"name": "rate", "rate": self.rate, "seed": self.seed}


@dataclass
class PoisonPlan:
    """Which training samples carry the backdoor, and which are noise-mode samples."""

    n: int
    poison: np.ndarray  # trigger + relabel
    cross: np.ndarray  # noise variant of the trigger, true label kept (WaNet noise mode)

    def masks(self) -> tuple[np.ndarray, np.ndarray]:
        p = np.zeros(self.n, bool)
        c = np.zeros(self.n, bool)
        p[self.poison] = True
        c[self.cross] = True
        return p, c

    def save(self, folder: Path) -> None:
        np.save(folder / "poison_indices.npy", self.poison)
        if len(self.cross):
            np.save(folder / "cross_indices.npy", self.cross)

    def summary(self) -> dict[str, Any]:
        return {"n_train": self.n, "n_poisoned": len(self.poison), "n_cross": len(self.cross)}


class Poisoning:
    """Turns clean training into backdoor training.

    Args:
        selector: which samples to poison (e.g. :class:`RateSelector`).
        trigger: the input half of the backdoor.
        relabel: the output half.
        seed: seeds the choice of noise-mode samples and their per-batch noise.
    """

    def __init__(self, selector: Selector, trigger: Trigger, relabel: Relabel, seed: int = 0) -> None:
        self.selector, self.trigger, self.relabel, self.seed = selector, trigger, relabel, int(seed)

    def plan(self, n: int) -> PoisonPlan:
        poison = self.selector.select(n)
        cross = np.zeros(0, np.int64)
        if self.trigger.cross_ratio > 0:
            rest = np.setdiff1d(np.arange(n), poison)
            k = min(len(rest), round(self.trigger.cross_ratio * len(poison)))
            rng = np.random.default_rng([self.seed, 0xC055])
            cross = np.sort(rng.choice(rest, k, replace=False)).astype(np.int64)
        return PoisonPlan(n, poison, cross)

    def params(self) -> dict[str, Any]:
        return {
            "selector": self.selector.params(),
            "trigger": self.trigger.params(),
            "relabel": self.relabel.params(),
            "seed": self.seed,
        }

    def batch_transform(self, plan: PoisonPlan) -> BatchTransform:
        """The training-loop hook: poison the batch rows that the plan selects."""
        poison_mask, cross_mask = plan.masks()
        generator = torch.Generator().manual_seed(self.seed)
        trigger, relabel = self.trigger, self.relabel

        def transform(images: Tensor, ann: dict[str, Tensor], idx: np.ndarray) -> tuple[Tensor, dict[str, Tensor]]:
            p_rows = np.flatnonzero(poison_mask[idx])
            c_rows = np.flatnonzero(cross_mask[idx]) if len(plan.cross) else p_rows[:0]
            if len(p_rows) == 0 and len(c_rows) == 0:
                return images, ann
            images = images.clone()  # the caller's batch stays untouched
            if len(p_rows):
                rows = torch.from_numpy(p_rows)
                sub = {k: v[rows] for k, v in ann.items()}
                images[rows] = trigger(images[rows], sub, idx[p_rows])
                new = relabel(sub)
                ann = dict(ann)
                for k, v in new.items():
                    if v is not sub[k]:
                        col = ann[k].clone()
                        col[rows] = v.to(col.dtype)
                        ann[k] = col
            if len(c_rows):
                rows = torch.from_numpy(c_rows)
                sub = {k: v[rows] for k, v in ann.items()}
                noisy = trigger.noise_variant(images[rows], sub, idx[c_rows], generator)
                if noisy is not None:
                    images[rows] = noisy
            return images, ann

        return transform


def write_attack_record(
    folder: Path, poisoning: Poisoning, plan: PoisonPlan, extra: dict[str, Any] | None = None
) -> None:
    """``attack.json`` (parameters + counts + ``extra``), ``trigger.safetensors`` and the poisoned indices.

    ``extra`` holds attack settings outside the poisoning itself (an adaptive attack's penalty).
    """
    from safetensors.torch import save_file

    plan.save(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in poisoning.trigger.state().items()}
    if state:
        save_file(state, str(folder / "trigger.safetensors"))
    record = {**poisoning.params(), **plan.summary(), **(extra or {})}
    (folder / "attack.json").write_text(json.dumps(record, indent=2))
