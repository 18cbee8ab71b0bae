"""Selectors: which training samples an attack poisons.

* ``rate``: a seeded uniform choice of a fraction of all samples (BadNets' rho);
* ``identity``: every sample of some identities (an impostor whose own photos carry the
  trigger, for one-to-one impostor -> victim backdoors);
* ``instances``: a fraction of the images that hold at least ``min_instances``
  instances (faces within scenes: a relabel then moves those faces' annotations).

Each registers in :data:`backdoorlab.registry.SELECTORS` and is rebuilt from
:meth:`params` (``{"name": ..., ...}``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import ConfigError
from backdoorlab.registry import SELECTORS


class Selector(Protocol):
    name: str

    def select(self, data: ArrayDataset | int) -> np.ndarray:
        """Sorted indices (into ``data``, or a dataset of that many samples) to poison."""
        ...

    def params(self) -> dict[str, Any]: ...


def _check_rate(rate: float, what: str) -> None:
    if not (isinstance(rate, int | float) and math.isfinite(rate) and 0 < rate <= 1):
        raise ConfigError(f"{what} must be in (0, 1], got {rate}")


def _choose(candidates: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """A seeded choice of ``round(rate * len(candidates))`` of them (at least one), sorted."""
    n = len(candidates)
    k = min(n, max(1, round(rate * n)))
    chosen = np.random.default_rng([seed, 0x9015]).choice(n, k, replace=False)
    return np.sort(candidates[chosen]).astype(np.int64)


@SELECTORS.register
@dataclass(frozen=True)
class RateSelector:
    """A seeded uniform choice of ``round(rate * n)`` samples (at least one)."""

    rate: float = 0.1
    seed: int = 0
    name: str = field(default="rate", init=False, repr=False)

    def __post_init__(self) -> None:
        _check_rate(self.rate, "poison rate")

    def select(self, data: ArrayDataset | int) -> np.ndarray:
        n = data if isinstance(data, int) else len(data)
        return _choose(np.arange(n), self.rate, self.seed)

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "rate": self.rate, "seed": self.seed}


@SELECTORS.register
@dataclass(frozen=True)
class IdentitySelector:
    """Every sample (or a seeded ``fraction``) whose ``column`` annotation is one of ``identities``."""

    identities: Sequence[int] = ()
    fraction: float = 1.0
    seed: int = 0
    column: str = "identity"
    name: str = field(default="identity", init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.identities or not all(isinstance(i, int | np.integer) for i in self.identities):
            raise ConfigError(
                f"identity selector: identities must be a non-empty list of integers, got {self.identities!r}"
            )
        _check_rate(self.fraction, "identity selector fraction")

    def select(self, data: ArrayDataset | int) -> np.ndarray:
        if isinstance(data, int):
            raise ConfigError("the identity selector needs the dataset (its identity labels), not only its size")
        data.require(self.column)
        candidates = np.flatnonzero(np.isin(np.asarray(data.annotations[self.column]), list(self.identities)))
        if len(candidates) == 0:
            raise ConfigError(f"identity selector: no training sample has {self.column} in {list(self.identities)}")
        return _choose(candidates, self.fraction, self.seed) if self.fraction < 1 else candidates.astype(np.int64)

    def params(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "identities": [int(i) for i in self.identities],
            "fraction": self.fraction,
            "seed": self.seed,
            "column": self.column,
        }


@SELECTORS.register
@dataclass(frozen=True)
class InstanceSelector:
    """A seeded ``rate`` of the images holding at least ``min_instances`` instances."""

    rate: float = 0.1
    min_instances: int = 1
    seed: int = 0
    name: str = field(default="instances", init=False, repr=False)

    def __post_init__(self) -> None:
        _check_rate(self.rate, "instance selector rate")
        if not isinstance(self.min_instances, int) or self.min_instances < 1:
            raise ConfigError(f"instance selector: min_instances must be an integer >= 1, got {self.min_instances!r}")

    def select(self, data: ArrayDataset | int) -> np.ndarray:
        if isinstance(data, int) or data.instances is None:
            raise ConfigError("the instances selector needs a dataset with per-image instances")
        candidates = np.flatnonzero(data.instances.counts() >= self.min_instances)
        if len(candidates) == 0:
            raise ConfigError(f"instance selector: no training image holds {self.min_instances} or more instances")
        return _choose(candidates, self.rate, self.seed)

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "rate": self.rate, "min_instances": self.min_instances, "seed": self.seed}


def build_selector(params: dict[str, Any]) -> Selector:
    """``{"name": ..., **settings}`` -> a selector (a bad setting is a ConfigError naming it)."""
    return SELECTORS.build(params)  # type: ignore[no-any-return]
