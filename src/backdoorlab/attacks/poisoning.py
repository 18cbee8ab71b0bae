"""Poisoning = selector + trigger + relabel, applied to a dataset by seed.

One abstraction for every task: a new attack is a new trigger, selector or relabel,
never a new training script. The poisoned dataset is never materialised: the selector fixes
*which* training samples are poisoned (a :class:`PoisonPlan`, stored with the run),
and :meth:`Poisoning.batch_transform` rewrites those samples inside the one training
loop as their batches go by. That keeps poisoned training as fast as clean training
(only the poisoned rows of a batch are touched) and lets per-application randomness,
such as WaNet's noise mode, differ between epochs as in the published attacks.

Two modes: ``replace`` (the selected samples are trained only in their poisoned form,
BadNets' rho) and ``append`` (poisoned copies of the selected samples are added to the
training set, their clean originals kept: :meth:`Poisoning.training_data` returns the
longer set the plan indexes). The relabel sees each poisoned batch's annotations, dense
columns and instance tables alike, and the trigger's :class:`Placement` when it asks
for one; a column it returns replaces those rows (an instance table through its
``replace_rows``, so a relabel may add or remove instances).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from backdoorlab.attacks.relabel import Relabel, check_relabel_fits
from backdoorlab.attacks.selectors import Selector
from backdoorlab.batches import BatchTransform
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import ConfigError
from backdoorlab.triggers.base import Trigger

PoisonMode = Literal["replace", "append"]

Tensor = torch.Tensor


@dataclass
class PoisonPlan:
    """Which training samples carry the backdoor, and which are noise-mode samples.

    Indices refer to the training set as trained (:meth:`Poisoning.training_data`);
    in ``append`` mode the poisoned ones are the copies at the end, and ``sources``
    says which original sample each copy was made from.
    """

    n: int
    poison: np.ndarray  # trigger + relabel
    cross: np.ndarray  # noise variant of the trigger, true label kept (WaNet noise mode)
    sources: np.ndarray | None = None  # append mode: original index of each appended copy

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
        if self.sources is not None:  # append mode: which original each poisoned copy was made from
            np.save(folder / "append_sources.npy", self.sources)

    def summary(self) -> dict[str, Any]:
        out = {"n_train": self.n, "n_poisoned": len(self.poison), "n_cross": len(self.cross)}
        if self.sources is not None:
            out["n_appended"] = len(self.sources)
        return out


class Poisoning:
    """Turns clean training into backdoor training.

    Args:
        selector: which samples to poison (e.g. :class:`RateSelector`).
        trigger: the input half of the backdoor.
        relabel: the output half.
        seed: seeds the choice of noise-mode samples and their per-batch noise.
        mode: ``replace`` the selected samples, or ``append`` poisoned copies of them.
    """

    def __init__(
        self, selector: Selector, trigger: Trigger, relabel: Relabel, seed: int = 0, mode: PoisonMode = "replace"
    ) -> None:
        if mode not in ("replace", "append"):
            raise ConfigError(f"poisoning mode must be 'replace' or 'append', got {mode!r}")
        check_relabel_fits(relabel, relabel.task, trigger_places=trigger.localized)
        self.selector, self.trigger, self.relabel, self.seed, self.mode = selector, trigger, relabel, int(seed), mode

    def plan(self, data: ArrayDataset | int) -> PoisonPlan:
        """Which samples of ``data`` (or of a dataset of that size) to poison."""
        selected = self.selector.select(data)
        n = data if isinstance(data, int) else len(data)
        sources = None
        poison = selected
        if self.mode == "append":
            sources, poison = selected, np.arange(n, n + len(selected), dtype=np.int64)
            n += len(selected)
        cross = np.zeros(0, np.int64)
        if self.trigger.cross_ratio > 0:
            rest = np.setdiff1d(np.arange(n), poison)
            k = min(len(rest), round(self.trigger.cross_ratio * len(poison)))
            rng = np.random.default_rng([self.seed, 0xC055])
            cross = np.sort(rng.choice(rest, k, replace=False)).astype(np.int64)
        return PoisonPlan(n, poison, cross, sources)

    def training_data(self, data: ArrayDataset, plan: PoisonPlan) -> ArrayDataset:
        """The set the plan indexes: ``data`` itself, or with the poisoned copies appended."""
        if plan.sources is None:
            return data
        return data.concat(data.subset(plan.sources))

    def params(self) -> dict[str, Any]:
        out = {
            "selector": self.selector.params(),
            "trigger": self.trigger.params(),
            "relabel": self.relabel.params(),
            "seed": self.seed,
        }
        if self.mode != "replace":  # records of replace-mode attacks keep the form they had
            out["mode"] = self.mode
        return out

    def batch_transform(self, plan: PoisonPlan) -> BatchTransform:
        """The training-loop hook: poison the batch rows that the plan selects."""
        poison_mask, cross_mask = plan.masks()
        generator = torch.Generator().manual_seed(self.seed)
        trigger, relabel = self.trigger, self.relabel
        wants_placement = relabel.needs_placement

        def transform(images: Tensor, ann: dict[str, Tensor], idx: np.ndarray) -> tuple[Tensor, dict[str, Tensor]]:
            p_rows = np.flatnonzero(poison_mask[idx])
            c_rows = np.flatnonzero(cross_mask[idx]) if len(plan.cross) else p_rows[:0]
            if len(p_rows) == 0 and len(c_rows) == 0:
                return images, ann
            images = images.clone()  # the caller's batch stays untouched
            if len(p_rows):
                rows = torch.from_numpy(p_rows)
                sub = {k: v[rows] for k, v in ann.items()}
                if wants_placement:
                    images[rows], placement = trigger.place(images[rows], sub, idx[p_rows])
                    new = relabel(sub, placement)
                else:
                    images[rows] = trigger(images[rows], sub, idx[p_rows])
                    new = relabel(sub)
                ann = dict(ann)
                for k, v in new.items():
                    if v is not sub.get(k):
                        ann[k] = replace_rows(ann[k], rows, v)
            if len(c_rows):
                rows = torch.from_numpy(c_rows)
                sub = {k: v[rows] for k, v in ann.items()}
                noisy = trigger.noise_variant(images[rows], sub, idx[c_rows], generator)
                if noisy is not None:
                    images[rows] = noisy
            return images, ann

        return transform


def replace_rows(column: Any, rows: Tensor, new: Any) -> Any:
    """A copy of a batch column with ``rows`` replaced by ``new`` (a tensor, or an instance table)."""
    if isinstance(column, Tensor):
        col = column.clone()
        col[rows] = new.to(col.dtype)
        return col
    return column.replace_rows(rows, new)


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
