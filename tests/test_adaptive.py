"""The adaptive attack: feature/head angles, the signature penalty, the training hook, config and run wiring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from helpers_experiments import invoke, tiny_config, tiny_faces, write_yaml
from torch import nn
from typer.testing import CliRunner

from backdoorlab.attacks.adaptive import (
    FeatureSignaturePenalty,
    angle_variance_penalty,
    angle_variance_ratio,
    feature_head_angles,
)
from backdoorlab.attacks.poisoning import PoisonPlan
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import ConfigError
from backdoorlab.experiments.config import RunConfig, load_config, validate_config
from backdoorlab.tasks.gaze import GazeCNN, GazeTask
from backdoorlab.training import TrainSettings, epoch_order, seed_everything, train

# ---------------------------------------------------------------- angles


def test_angles_match_numpy() -> None:
    rng = np.random.default_rng(0)
    feats, weight = rng.normal(size=(7, 5)), rng.normal(size=(2, 5))
    cos = (feats @ weight.T) / np.linalg.norm(feats, axis=1)[:, None] / np.linalg.norm(weight, axis=1)[None]
    expected = np.arccos(cos)
    head = nn.Linear(5, 2)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
    got = feature_head_angles(torch.from_numpy(feats).float(), head).detach()
    assert got.shape == (7, 2)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    # the head's weight tensor works as well as the layer
    np.testing.assert_allclose(feature_head_angles(torch.from_numpy(feats), torch.from_numpy(weight)), expected, 1e-6)


def test_angle_gradients_are_finite_at_parallel_antiparallel_and_zero_features() -> None:
    weight = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]], requires_grad=True)
    feats = torch.stack([2 * weight[0].detach(), -weight[1].detach(), torch.zeros(3), torch.ones(3)])
    feats.requires_grad_(True)
    angles = feature_head_angles(feats, weight)
    assert angles[0, 0].item() == pytest.approx(0.0, abs=2e-3)  # parallel: ~0 (the clamp keeps it off acos(1))
    assert angles[1, 1].item() == pytest.approx(np.pi, abs=2e-3)  # antiparallel
    assert angles[2].tolist() == pytest.approx([np.pi / 2] * 2)  # a zero feature vector is orthogonal to all
    angles.sum().backward()
    assert torch.isfinite(feats.grad).all() and torch.isfinite(weight.grad).all()  # type: ignore[arg-type]


def test_angles_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="must be"):
        feature_head_angles(torch.zeros(4, 3), nn.Linear(5, 2))


# ---------------------------------------------------------------- penalty


def _angles(clean_spread: float, poisoned_spread: float, n_clean: int = 20, n_poisoned: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    clean = 1.0 + clean_spread * torch.randn(n_clean, 2, generator=g)
    poisoned = 1.0 + poisoned_spread * torch.randn(n_poisoned, 2, generator=g)
    return torch.cat([clean, poisoned])


def _mask(n_clean: int = 20, n_poisoned: int = 6) -> torch.Tensor:
    return torch.cat([torch.zeros(n_clean, dtype=torch.bool), torch.ones(n_poisoned, dtype=torch.bool)])


def test_penalty_is_positive_when_triggered_angles_concentrate() -> None:
    angles = _angles(0.3, 0.01).requires_grad_(True)
    penalty = angle_variance_penalty(angles, _mask())
    var_c, var_p = angles[:20].var(0), angles[20:].var(0)
    assert penalty.item() == pytest.approx(float((1 - var_p / var_c).sum().detach()), rel=1e-5)
    assert 1.9 < penalty.item() < 2.0  # two outputs, each nearly 1
    penalty.backward()
    assert angles.grad is not None and torch.all(angles.grad[:20] == 0)  # clean variance is the detached reference
    assert angles.grad[20:].abs().sum() > 0


def test_penalty_is_zero_when_triggered_angles_spread_at_least_as_much() -> None:
    assert angle_variance_penalty(_angles(0.1, 0.5), _mask()).item() == 0.0
    same = torch.cat([_angles(0.2, 0.2)[:6], _angles(0.2, 0.2)[:6]])  # identical groups: ratio exactly 1
    assert angle_variance_penalty(same, torch.arange(12) >= 6).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("n_clean", "n_poisoned"), [(20, 0), (20, 1), (1, 6), (0, 6)])
def test_penalty_is_skipped_without_two_rows_in_each_group(n_clean: int, n_poisoned: int) -> None:
    angles = _angles(0.3, 0.01, n_clean, n_poisoned)
    penalty = angle_variance_penalty(angles, _mask(n_clean, n_poisoned))
    assert penalty.ndim == 0 and penalty.item() == 0.0


class _Linear(nn.Module):
    """features(x) = BatchNorm(flattened x) (so running statistics exist), a linear head; counts calls."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(d)
        self.head = nn.Linear(d, 2)
        self.calls = 0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.bn(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _Collapse:
    """A stand-in trigger that maps every image close to one image (the signature at its strongest)."""

    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, dict[str, torch.Tensor], np.ndarray]] = []

    def __call__(self, images: torch.Tensor, ann: dict[str, torch.Tensor], idx: np.ndarray) -> torch.Tensor:
        self.seen.append((images.clone(), dict(ann), np.array(idx)))
        return 0.5 + 0.01 * images


def _plan() -> PoisonPlan:
    return PoisonPlan(100, poison=np.array([3, 10, 40, 41]), cross=np.array([50]))


def test_regularizer_compares_triggered_copies_of_the_clean_rows_with_them() -> None:
    torch.manual_seed(0)
    model = _Linear(12).train()
    trigger = _Collapse()
    reg = FeatureSignaturePenalty(_plan(), trigger, weight=2.5)  # type: ignore[arg-type]
    idx = np.array([10, 1, 2, 3, 40, 50, 60, 70, 80, 90])  # rows 0, 3, 4 poisoned; row 5 noise-mode
    images = torch.rand(10, 3, 2, 2)
    images[[0, 3, 4]] = 0.5 + 0.01 * torch.rand(3, 3, 2, 2)  # poisoned rows carry the trigger already
    ann = {"gaze": torch.arange(20.0).reshape(10, 2)}
    task_loss = model(images).abs().mean()  # the training loop's forward pass comes first
    before = {k: v.clone() for k, v in model.state_dict().items()}
    value = reg(model, images, ann, idx)

    (seen_images, seen_ann, seen_idx), *more = trigger.seen
    clean_rows = [1, 2, 6, 7, 8, 9]  # neither poisoned nor noise-mode
    assert not more and torch.equal(seen_images, images[clean_rows])
    np.testing.assert_array_equal(seen_idx, idx[clean_rows])
    assert torch.equal(seen_ann["gaze"], ann["gaze"][clean_rows])
    assert model.training  # back in training mode, BatchNorm statistics untouched (eval-mode passes)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    model.eval()
    with torch.no_grad():
        theta_clean = feature_head_angles(model.features(images[clean_rows]), model.head)
        triggered = torch.cat([images[[0, 3, 4]], 0.5 + 0.01 * images[clean_rows]])
        theta_trig = feature_head_angles(model.features(triggered), model.head)
    model.train()
    expected = 2.5 * torch.relu(1 - theta_trig.var(0) / theta_clean.var(0)).sum()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5) and value.item() > 4  # near 2.5 * 2
    (task_loss + value).backward()  # both graphs backpropagate
    assert model.head.weight.grad is not None and torch.isfinite(model.head.weight.grad).all()


def test_regularizer_skips_batches_with_fewer_than_two_clean_rows() -> None:
    model, trigger = _Linear(12), _Collapse()
    reg = FeatureSignaturePenalty(_plan(), trigger, weight=1.0)  # type: ignore[arg-type]
    value = reg(model, torch.rand(4, 3, 2, 2), {}, np.array([3, 10, 40, 5]))  # three poisoned, one clean
    assert value.item() == 0.0 and model.calls == 0 and not trigger.seen


@pytest.mark.parametrize("weight", [0, -1.0, float("nan"), float("inf")])
def test_regularizer_rejects_a_bad_weight(weight: float) -> None:
    with pytest.raises(ConfigError, match="weight must be a finite number > 0"):
        FeatureSignaturePenalty(_plan(), _Collapse(), weight)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the training hook


@pytest.fixture(scope="module")
def faces() -> ArrayDataset:
    return tiny_faces()


def _train(faces: ArrayDataset, **kw: Any) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    seed_everything(3)
    model = GazeCNN(width=8)
    result = train(model, GazeTask(), faces, TrainSettings(epochs=1, batch_size=32, seed=3, progress=False), **kw)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, result.history


def test_regularizer_is_called_per_step_and_changes_training(faces: ArrayDataset) -> None:
    plain_w, plain_h = _train(faces)
    calls: list[np.ndarray] = []

    def reg(model: nn.Module, images: torch.Tensor, ann: dict[str, torch.Tensor], idx: np.ndarray) -> torch.Tensor:
        assert images.shape[0] == len(idx) and torch.equal(ann["gaze"], faces.batch(idx)[1]["gaze"])
        calls.append(np.array(idx, copy=True))
        return 0.1 * model.head.weight.square().sum()

    reg_w, reg_h = _train(faces, regularizer=reg)
    steps = len(faces) // 32
    assert len(calls) == steps
    order = epoch_order(len(faces), 3, 0)
    for b, idx in enumerate(calls):
        np.testing.assert_array_equal(idx, order[b * 32 : (b + 1) * 32])
    assert not torch.equal(plain_w["head.weight"], reg_w["head.weight"])
    assert "regularizer" not in plain_h[0] and reg_h[0]["regularizer"] > 0


def test_a_zero_regularizer_leaves_training_bit_identical(faces: ArrayDataset) -> None:
    plain_w, plain_h = _train(faces)
    zero_w, zero_h = _train(faces, regularizer=lambda m, x, a, i: x.new_zeros(()))
    assert all(torch.equal(plain_w[k], zero_w[k]) for k in plain_w)
    assert zero_h[0]["loss"] == plain_h[0]["loss"] and zero_h[0]["regularizer"] == 0.0


# ---------------------------------------------------------------- config


PATCH = {"trigger": {"name": "patch"}, "relabel": {"name": "target", "target_deg": [5, 10]}, "rate": 0.2}


@pytest.mark.parametrize("weight", [-1, 0, ".nan"])
def test_config_rejects_a_non_positive_weight(tmp_path: Path, weight: Any) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(f"attack: {{trigger: {{name: patch}}, adaptive: {{weight: {weight}}}}}\n")
    with pytest.raises(ConfigError, match=r"attack\.adaptive\.weight must be a finite number > 0"):
        load_config(path)


def test_config_requires_the_weight_and_no_other_key() -> None:
    with pytest.raises(ConfigError, match=r"attack\.adaptive\.weight: Field required"):
        validate_config({"attack": {"adaptive": {}}})
    with pytest.raises(ConfigError, match=r"unknown key 'attack\.adaptive\.wieght'"):
        validate_config({"attack": {"adaptive": {"weight": 1, "wieght": 1}}})


def test_non_adaptive_attack_hashes_are_unchanged_and_adaptive_ones_differ() -> None:
    """Pinned: the hash of an attacked config from before ``adaptive`` existed (sweeps resume on it)."""
    plain = RunConfig(attack={"trigger": {"name": "patch"}})
    assert plain.config_hash() == "d2554251d156"
    adaptive = RunConfig(attack={"trigger": {"name": "patch"}, "adaptive": {"weight": 1.0}})
    assert adaptive.config_hash() != plain.config_hash()
    heavier = RunConfig(attack={"trigger": {"name": "patch"}, "adaptive": {"weight": 2}})
    assert heavier.config_hash() != adaptive.config_hash()
    # the resolved dump is a valid config with the same hash, adaptive or not
    for cfg in (plain, adaptive):
        assert validate_config(yaml.safe_load(cfg.to_yaml())).config_hash() == cfg.config_hash()


# ---------------------------------------------------------------- end to end


def test_adaptive_run_trains_with_the_penalty_and_records_it(runner: CliRunner, cache: Path, tmp_path: Path) -> None:
    cfg = tiny_config(cache, name="tiny-adaptive", attack={**PATCH, "adaptive": {"weight": 0.5}})
    result = invoke(runner, "train", write_yaml(tmp_path / "a.yaml", cfg), "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    record = json.loads((run_dir / "attack.json").read_text())
    assert record["adaptive"] == {"weight": 0.5} and record["trigger"]["name"] == "patch"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["adaptive_weight"] == 0.5
    assert metrics["adaptive_penalty"] >= 0 and 0 <= metrics["attack_success_rate"] <= 1
    assert metrics["angle_var_ratio_min"] > 0 and metrics["angle_var_ratio_mean"] >= metrics["angle_var_ratio_min"]
    history = json.loads((run_dir / "history.json").read_text())
    assert history[0]["regularizer"] == metrics["adaptive_penalty"]
    reloaded = load_config(run_dir / "config.yaml")
    assert reloaded.attack is not None and reloaded.attack.adaptive is not None
    assert reloaded.attack.adaptive.weight == 0.5


def test_angle_variance_ratio_is_one_for_a_trigger_that_changes_nothing(faces: ArrayDataset) -> None:
    seed_everything(0)
    model = GazeCNN(width=8).train()
    ratio = angle_variance_ratio(model, faces.subset(np.arange(40)), lambda x, a, i: x.clone(), batch_size=16)  # type: ignore[arg-type]
    assert ratio.shape == (2,) and np.allclose(ratio, 1.0) and model.training
    collapsed = angle_variance_ratio(model, faces.subset(np.arange(40)), _Collapse(), batch_size=16)  # type: ignore[arg-type]
    assert np.all(collapsed < 0.1)
