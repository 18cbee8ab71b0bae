"""The adaptive-attack bench's bookkeeping (bench/adaptive_attacks.py) and the weight bench's report cells."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from helpers_experiments import load_bench_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench_script("adaptive_attacks")


@pytest.fixture(scope="module")
def weights() -> ModuleType:
    return load_bench_script("weight_anomaly")


def network(module: ModuleType, seed: int, attack: dict[str, Any] | None = None, success: bool | None = None,
            split: int | None = None, layer: float = 0.0) -> Any:  # fmt: skip
    """A zoo network without a run folder (the bench's ``Network`` reads one in its constructor)."""
    net = object.__new__(module.Network)
    net.run_dir, net.seed, net.split_seed = f"runs/net-{seed}", seed, seed if split is None else split
    net.attack, net.success, net.asr = attack, success, 0.9 if attack else None
    net.state = {"last_linear.weight": torch.full((2, 3), layer)}
    return net


def test_groups_keep_the_attackers_recipes_and_only_adaptive_networks_that_met_the_rule(bench: ModuleType) -> None:
    patch = {"trigger": {"name": "patch"}}
    zoo = [network(bench, 0), network(bench, 105, patch, True), network(bench, 106, patch, True),
           network(bench, 107, patch, False)]  # fmt: skip
    priced = {**patch, "weight_distance": {"weight": 3e-4}}
    adaptive = [network(bench, 1105, patch, True, split=24), network(bench, 1105, priced, True, split=24),
                network(bench, 1106, priced, False, split=25), network(bench, 200, None, None, split=24)]  # fmt: skip
    groups = bench.weight_groups(zoo, adaptive)
    assert [n.seed for n in groups["zoo, every kept network"]] == [105, 106]
    assert [n.seed for n in groups["zoo, the attackers' recipes"]] == [105, 106]  # recipes 105 and 106
    assert groups["from a clean network, penalty 0"] == [adaptive[0]]
    assert groups["from a clean network, penalty 0.0003"] == [adaptive[1]]  # 1106 missed the rule: left out
    assert groups["clean controls (a second fine-tune)"] == [adaptive[3]]
    assert bench.penalty_of(adaptive[1]) == 3e-4 and bench.penalty_of(adaptive[0]) == 0.0


def test_distance_is_measured_from_the_anchor_of_the_runs_own_split(bench: ModuleType) -> None:
    anchors = {24: network(bench, 24, layer=1.0), 25: network(bench, 25, layer=2.0)}
    moved = network(bench, 1105, {"trigger": {}}, True, split=25, layer=2.5)
    assert bench.anchor_distance(moved, anchors) == pytest.approx(6 * 0.25)  # 2 x 3 entries, 0.5 each


def test_group_cells_match_hand_computations(weights: ModuleType) -> None:
    clean, bad = np.array([0.0, 1.0, 2.0, 3.0]), np.array([2.5, 4.0])
    cells = weights.group_metrics(clean, bad, threshold=2.2)
    assert cells["n_clean"] == 4 and cells["n_backdoored"] == 2
    assert cells["auroc"] == pytest.approx((4 + 3) / 8)  # 4.0 beats all four, 2.5 beats three
    assert cells["accuracy"] == pytest.approx(5 / 6)  # 3.0 (clean) is flagged, the rest are right
    assert cells["tpr_at_fpr_0.1"] == pytest.approx(0.5)  # at no clean flagged, only 4.0
