"""Fine-pruning and plain fine-tuning: what they change in the model, and what they must leave alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from backdoorlab.defenses import FinePruning, FineTuning
from backdoorlab.defenses.fine_pruning import PRUNED_ATTR, MaskedLinear, least_active_units, mean_feature_activation
from backdoorlab.defenses.tuning import FineTuneSettings
from backdoorlab.errors import BackdoorLabError, ConfigError, DatasetError
from backdoorlab.geometry import angular_error_deg
from backdoorlab.tasks.gaze import GazeCNN

from .toy_backdoor import clean_split, toy_model

SHORT = FineTuneSettings(epochs=3, lr=1e-3, batch_size=32, seed=0)


def clean_error(model: nn.Module, n: int = 64) -> float:
    x, ann = clean_split(n).batch(np.arange(n))
    with torch.no_grad():
        return float(angular_error_deg(model(x), ann["gaze"]).mean())


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def small_untrained() -> nn.Module:
    """For the tests of the plumbing: any model honouring the contract will do, and this one costs nothing."""
    torch.manual_seed(0)
    return GazeCNN(width=8, feature_dim=32).eval()


def test_fine_pruning_and_fine_tuning_on_the_backdoored_toy() -> None:
    """One test around the repairs of the backdoored toy (kept whole so that xdist trains the toy once)."""
    model = toy_model(True)
    before = snapshot(model)
    fp = FinePruning(prune_ratio=0.9, settings=SHORT, device="cpu", task="gaze")  # 90% of 32: live units go too
    repaired = fp.repair(model, clean_split())

    units = getattr(repaired, PRUNED_ATTR)
    assert units == fp.last_report["pruned_units"] and len(units) == round(0.9 * 32)
    assert fp.last_report["n_live_pruned"] > 0  # measured: 5 (24 of the 32 units are dormant)
    # the pruned units are the least active on clean data (measured independently, on the original)
    act = mean_feature_activation(model, clean_split())
    kept = np.setdiff1d(np.arange(32), units)
    assert act[units].max() <= act[kept].min()
    # their head columns are exactly zero after the fine-tuning, which did move everything else
    w = repaired.head.weight.detach()
    assert torch.all(w[:, units] == 0)
    assert not torch.equal(w[:, kept], model.head.weight[:, kept])
    x, _ = clean_split(4).batch(np.arange(4))
    with torch.no_grad():
        assert not torch.equal(repaired.features(x), model.features(x))

    # an ordinary model comes back; the original is untouched
    assert same(before, snapshot(model)) and type(model.head) is nn.Linear
    assert type(repaired.head) is nn.Linear  # the training-time mask is gone
    assert repaired.state_dict().keys() == model.state_dict().keys()  # loads into a plain GazeCNN
    assert not repaired.training
    # measured: 9.4 -> 14.4 degrees (5 live units of 32 cut, 3 epochs to recover); a wrong unit choice costs far more
    assert clean_error(repaired) < clean_error(model) + 10.0

    report = json.loads(json.dumps(fp.last_report))
    assert report["n_units"] == 32 and len(report["mean_activation"]) == 32
    assert report["params"] == fp.params() and report["params"]["fine_tune"] == SHORT.params()

    # plain fine-tuning of the same toy under the same schedule: it moves the weights, not the clean error
    tuned = FineTuning(SHORT, device="cpu", task="gaze").repair(model, clean_split())
    assert not same(before, snapshot(tuned)) and same(before, snapshot(model))
    assert clean_error(tuned) < clean_error(model) + 5.0  # measured: 9.4 -> 9.6 degrees


def test_masked_entries_get_no_gradient() -> None:
    """Why the pruned columns cannot regrow: their gradient is exactly zero (weight decay then has nothing to move)."""
    lin = nn.Linear(4, 2)
    mask = torch.ones(2, 4)
    mask[:, [1, 3]] = 0
    masked = MaskedLinear(lin, mask)
    masked(torch.randn(5, 4)).pow(2).sum().backward()
    assert torch.all(masked.weight.grad[:, [1, 3]] == 0) and torch.all(masked.weight.grad[:, [0, 2]] != 0)
    plain = masked.to_linear()
    assert type(plain) is nn.Linear and torch.all(plain.weight[:, [1, 3]] == 0)


@given(
    act=st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=40),
    ratio=st.floats(0, 0.999),
)
def test_least_active_units_property(act, ratio) -> None:
    a = np.asarray(act)
    units = least_active_units(a, ratio)
    assert len(units) == round(ratio * len(a)) and np.all(np.diff(units) > 0)
    kept = np.setdiff1d(np.arange(len(a)), units)
    if len(units) and len(kept):
        assert a[units].max() <= a[kept].min()


def test_fine_tuning_is_deterministic_json_and_leaves_the_original() -> None:
    model = small_untrained()
    before = snapshot(model)
    ft = FineTuning(SHORT, device="cpu", task="gaze")
    tuned = ft.repair(model, clean_split())
    assert same(before, snapshot(model))
    assert not same(before, snapshot(tuned)) and not tuned.training
    assert json.loads(json.dumps(ft.params())) == {"fine_tune": SHORT.params(), "min_clean": 64, "device": "cpu"}
    assert ft.last_report["n_clean"] == 64
    # same settings, same weights (fine_tune seeds the batch order)
    assert same(snapshot(tuned), snapshot(FineTuning(SHORT, device="cpu", task="gaze").repair(model, clean_split())))


@pytest.mark.parametrize("cls, who", [(FineTuning, "FineTuning"), (FinePruning, "FinePruning")])
def test_mitigators_refuse_small_unlabelled_or_unsplit_input(cls, who) -> None:
    with pytest.raises(BackdoorLabError, match=f"{who} needs at least 64 clean samples; got 10"):
        cls(device="cpu", task="gaze").repair(small_untrained(), clean_split(10))
    ds = clean_split()
    unlabelled = type(ds)(ds.images, {k: v for k, v in ds.annotations.items() if k != "gaze"})
    with pytest.raises(DatasetError, match="gaze"):
        cls(device="cpu", task="gaze").repair(small_untrained(), unlabelled)
    unsplit = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
    if cls is FinePruning:  # it prunes the features' units, so it needs them
        with pytest.raises(BackdoorLabError, match=f"{who}: Sequential has no features"):
            cls(device="cpu", task="gaze").repair(unsplit, ds)
    else:  # fine-tuning trains the whole model with the task's loss: any architecture will do
        cls(SHORT, device="cpu", task="gaze").repair(unsplit, ds)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, float("nan")])
def test_bad_prune_ratio(ratio) -> None:
    with pytest.raises(ConfigError, match="prune_ratio"):
        FinePruning(prune_ratio=ratio)


def test_nothing_pruned_at_ratio_zero_is_plain_fine_tuning() -> None:
    model = small_untrained()
    fp = FinePruning(prune_ratio=0.0, settings=SHORT, device="cpu", task="gaze")
    a = fp.repair(model, clean_split())
    b = FineTuning(SHORT, device="cpu", task="gaze").repair(model, clean_split())
    assert getattr(a, PRUNED_ATTR) == []
    x, _ = clean_split(8).batch(np.arange(8))
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-5)


class _TwoMaps(nn.Module):
    """A model whose features are two conv maps, each read by its own 1x1 convolutions (a detector's layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(6, 4, 3, stride=2, padding=1), nn.ReLU())
        self.a = nn.ModuleList([nn.Conv2d(6, 2, 1), nn.Conv2d(4, 2, 1)])
        self.b = nn.ModuleList([nn.Conv2d(6, 3, 1), nn.Conv2d(4, 3, 1)])

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.body(x)
        return [f, self.down(f)]

    def heads(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "a": torch.cat([m(f).flatten(1) for m, f in zip(self.a, feats, strict=True)], 1),
            "b": torch.cat([m(f).flatten(1) for m, f in zip(self.b, feats, strict=True)], 1),
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.features(x))


def test_feature_maps_are_pruned_per_map_in_every_conv_that_reads_them() -> None:
    from backdoorlab.defenses.fine_pruning import MaskedConv2d, feature_readers, mean_channel_activation

    torch.manual_seed(0)
    model = _TwoMaps()
    x, _ = clean_split(4).batch(np.arange(4))
    assert feature_readers(model, x) == [["a.0", "b.0"], ["a.1", "b.1"]]
    acts = mean_channel_activation(model, clean_split(8), batch_size=3)
    assert [len(a) for a in acts] == [6, 4]
    with torch.no_grad():
        direct = model.features(x)[1].mean((0, 2, 3)).numpy()
    np.testing.assert_allclose(mean_channel_activation(model, clean_split(4))[1], direct, rtol=1e-5)
    conv = nn.Conv2d(4, 2, 1)
    mask = torch.ones_like(conv.weight)
    mask[:, [1]] = 0
    masked = MaskedConv2d(conv, mask)
    masked(torch.randn(1, 4, 3, 3)).sum().backward()
    assert torch.all(masked.weight.grad[:, 1] == 0) and type(masked.to_conv()) is nn.Conv2d


def test_a_model_whose_output_is_not_its_heads_of_its_features_is_refused() -> None:
    from backdoorlab.defenses.fine_pruning import feature_readers

    class Skewed(_TwoMaps):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {k: v + 1 for k, v in self.heads(self.features(x)).items()}

    x, _ = clean_split(2).batch(np.arange(2))
    with pytest.raises(BackdoorLabError, match="differs from its head"):
        feature_readers(Skewed(), x)
