"""The weight-distance penalty (an attacker hiding from weight inspection), the summed regularizer, its config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from backdoorlab.attacks.weight_distance import WeightDistancePenalty
from backdoorlab.batches import summed
from backdoorlab.errors import ConfigError
from backdoorlab.experiments.config import WeightDistanceConfig

NO_BATCH = (torch.zeros(1), {}, np.zeros(1, np.int64))


def layers() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_zero_at_the_start_and_the_squared_distance_after_a_move() -> None:
    model = layers()
    penalty = WeightDistancePenalty(model, weight=0.5)
    assert float(penalty(model, *NO_BATCH)) == 0.0
    with torch.no_grad():
        model[0].weight.add_(0.1)  # 12 entries moved by 0.1
        model[1].bias.sub_(0.2)  # 3 entries moved by 0.2
    assert float(penalty.distance(model)) == pytest.approx(12 * 0.01 + 3 * 0.04, rel=1e-5)
    assert float(penalty(model, *NO_BATCH)) == pytest.approx(0.5 * (12 * 0.01 + 3 * 0.04), rel=1e-5)


@settings(max_examples=25, deadline=None)
@given(weight=st.floats(1e-4, 10.0), shift=st.floats(-1.0, 1.0))
def test_gradient_is_twice_the_weight_times_the_displacement(weight: float, shift: float) -> None:
    model = layers()
    penalty = WeightDistancePenalty(model, weight)
    with torch.no_grad():
        model[0].weight.add_(shift)
    penalty(model, *NO_BATCH).backward()
    expected = torch.full_like(model[0].weight, 2 * weight * shift)
    torch.testing.assert_close(model[0].weight.grad, expected, rtol=1e-4, atol=1e-6)
    assert model[1].weight.grad is not None and float(model[1].weight.grad.abs().max()) == 0.0  # not moved


def test_frozen_parameters_are_not_anchored_and_the_anchor_is_a_copy() -> None:
    model = layers()
    model[0].weight.requires_grad_(False)
    penalty = WeightDistancePenalty(model, 1.0)
    assert set(penalty.anchor) == {"0.bias", "1.weight", "1.bias"}
    with torch.no_grad():
        model[0].weight.add_(5.0)  # frozen: not priced
        model[0].bias.add_(1.0)
    assert float(penalty.distance(model)) == pytest.approx(3.0)  # the anchor did not move with the model


@pytest.mark.parametrize("weight", [0, -1.0, float("nan"), float("inf"), True])
def test_bad_weights_are_refused(weight: float) -> None:
    with pytest.raises(ConfigError, match="finite number > 0"):
        WeightDistancePenalty(layers(), weight)


def test_a_model_with_nothing_trainable_or_other_parameters_is_refused() -> None:
    model = layers()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameter"):
        WeightDistancePenalty(model, 1.0)
    penalty = WeightDistancePenalty(layers(), 1.0)
    with pytest.raises(ConfigError, match="lacks"):
        penalty.distance(nn.Linear(4, 3))


def test_config_refuses_a_non_positive_weight_naming_the_key() -> None:
    assert WeightDistanceConfig(weight=1e-3).weight == 1e-3
    with pytest.raises(ValueError, match=r"attack\.weight_distance\.weight must be a finite number > 0"):
        WeightDistanceConfig(weight=0.0)


def test_summed_adds_regularizers_and_skips_missing_ones() -> None:
    model = layers()

    def one(*_: object) -> torch.Tensor:
        return torch.tensor(1.5)

    def two(*_: object) -> torch.Tensor:
        return torch.tensor(2.0)

    assert summed() is None and summed(None, None) is None
    assert summed(None, one) is one  # a single one is passed through unchanged
    total = summed(one, None, two)
    assert total is not None and float(total(model, *NO_BATCH)) == 3.5
