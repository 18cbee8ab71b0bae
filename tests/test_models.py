"""Models honour the features(x) / linear head contract; the gaze task scores predictions correctly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import ConfigError, ModelContractError
from backdoorlab.metrics.angular import summarize_errors
from backdoorlab.models import build_model, check_feature_head_contract
from backdoorlab.registry import MODELS, TASKS
from backdoorlab.tasks.gaze import GazeCNN, GazeTask, ResNet18Gaze


@pytest.fixture(scope="module")
def resnet() -> ResNet18Gaze:
    torch.manual_seed(0)
    return ResNet18Gaze().eval()


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("in_channels", "hw"),
    [(1, (36, 60)), (3, (64, 64)), (3, (32, 32))],
    ids=["eye-grey-36x60", "face-64", "face-32"],
)
def test_gaze_cnn_output_and_feature_shapes(in_channels: int, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = GazeCNN(in_channels=in_channels, width=8, feature_dim=24).eval()
    x = torch.rand(3, in_channels, *hw)
    with torch.no_grad():
        out, feats = model(x), model.features(x)
    assert out.shape == (3, 2)
    assert feats.shape == (3, 24) == (3, model.feature_dim)
    assert model.head.in_features == 24
    assert torch.isfinite(out).all()
    check_feature_head_contract(model, x)


def test_gaze_cnn_output_depends_on_input() -> None:
    torch.manual_seed(0)
    model = GazeCNN(width=8).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), model(x.flip(-1))
    assert not torch.allclose(a, b)


def test_resnet18_output_and_feature_shapes(resnet: ResNet18Gaze) -> None:
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out, feats = resnet(x), resnet.features(x)
    assert out.shape == (2, 2)
    assert feats.shape == (2, 512) == (2, resnet.feature_dim)
    check_feature_head_contract(resnet, x)


def test_resnet18_small_input_keeps_spatial_resolution() -> None:
    small, large = ResNet18Gaze(small_input=True), ResNet18Gaze(small_input=False)
    assert small.trunk[0].stride == (1, 1) and small.trunk[0].kernel_size == (3, 3)
    assert large.trunk[0].stride == (2, 2) and large.trunk[0].kernel_size == (7, 7)
    assert not any(isinstance(m, nn.MaxPool2d) for m in small.trunk)
    with torch.no_grad():
        assert small.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 2)


def test_contract_without_example_checks_structure_only(resnet: ResNet18Gaze) -> None:
    check_feature_head_contract(resnet)
    check_feature_head_contract(GazeCNN(width=8))


def test_contract_check_keeps_training_mode() -> None:
    model = GazeCNN(width=8).train()
    check_feature_head_contract(model, torch.rand(2, 3, 32, 32))
    assert model.training
    model.eval()
    check_feature_head_contract(model, torch.rand(2, 3, 32, 32))
    assert not model.training


# ---------------------------------------------------------------- contract violations


class _NoFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1)[:, :4])


class _ScaledOutput(GazeCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * self.head(self.features(x)) + 0.1


class _UnflattenedFeatures(GazeCNN):
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)  # (B, C, 4, 4): not a vector


def test_contract_rejects_model_without_features() -> None:
    with pytest.raises(ModelContractError, match=r"_NoFeatures has no features\(x\)"):
        check_feature_head_contract(_NoFeatures(), torch.rand(2, 3, 8, 8))


def test_contract_rejects_features_attribute_that_is_not_callable() -> None:
    model = _NoFeatures()
    model.features = 3  # type: ignore[assignment]
    with pytest.raises(ModelContractError, match="features"):
        check_feature_head_contract(model)


@pytest.mark.parametrize(
    ("head", "found"),
    [(nn.Sequential(nn.Linear(256, 2)), "Sequential"), (None, "NoneType"), (nn.Identity(), "Identity")],
)
def test_contract_rejects_non_linear_head(head: nn.Module | None, found: str) -> None:
    model = GazeCNN(width=8)
    model.head = head  # type: ignore[assignment]
    with pytest.raises(ModelContractError, match=rf"GazeCNN\.head must be an nn\.Linear, found {found}"):
        check_feature_head_contract(model)


def test_contract_rejects_feature_width_mismatch() -> None:
    model = GazeCNN(width=8, feature_dim=16)
    model.head = nn.Linear(32, 2)
    with pytest.raises(ModelContractError, match=r"returned shape \(2, 16\); expected \(B, 32\)"):
        check_feature_head_contract(model, torch.rand(2, 3, 32, 32))


def test_contract_rejects_non_vector_features() -> None:
    model = _UnflattenedFeatures(width=8)
    with pytest.raises(ModelContractError, match=r"returned shape \(2, 32, 4, 4\)"):
        check_feature_head_contract(model, torch.rand(2, 3, 32, 32))


def test_contract_rejects_forward_that_is_not_head_of_features() -> None:
    model = _ScaledOutput(width=8)
    with pytest.raises(ModelContractError, match=r"_ScaledOutput\(x\) differs from _ScaledOutput\.head"):
        check_feature_head_contract(model, torch.rand(2, 3, 32, 32))
    # without an example only the structure is checked, which this model satisfies
    check_feature_head_contract(model)


def test_failed_contract_check_restores_training_mode() -> None:
    model = _ScaledOutput(width=8).train()
    with pytest.raises(ModelContractError):
        check_feature_head_contract(model, torch.rand(2, 3, 32, 32))
    assert model.training


# ---------------------------------------------------------------- registry


def test_build_model_known_names() -> None:
    assert set(MODELS) == {"gaze_cnn", "resnet18", "retinaface", "iresnet", "facenet_like", "mobilefacenet"}
    m = build_model("gaze_cnn", in_channels=1, width=8, feature_dim=12)
    assert isinstance(m, GazeCNN) and m.feature_dim == 12 and m.trunk[0][0].in_channels == 1
    assert isinstance(build_model("resnet18", small_input=True), ResNet18Gaze)


def test_build_model_unknown_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown model .vgg.*gaze_cnn.*resnet18"):
        build_model("vgg")


def test_build_model_bad_kwargs() -> None:
    with pytest.raises(ConfigError, match=r"model 'gaze_cnn' does not accept.*depth"):
        build_model("gaze_cnn", depth=3)
    with pytest.raises(ConfigError, match="resnet18"):
        build_model("resnet18", width=8)


# ---------------------------------------------------------------- gaze task and metrics


def _gaze_ds(gaze: np.ndarray) -> ArrayDataset:
    n = len(gaze)
    return ArrayDataset(
        np.zeros((n, 8, 8, 3), np.uint8),
        {"gaze": np.asarray(gaze, np.float32), "identity": np.arange(n, dtype=np.int64)},
    )


def test_gaze_task_evaluate_perfect_predictions() -> None:
    gaze = np.random.default_rng(0).uniform(-0.5, 0.5, (10, 2)).astype(np.float32)
    m = GazeTask().evaluate(gaze.copy(), _gaze_ds(gaze))
    assert set(m) == {"clean_error_deg", "clean_error_median_deg", "clean_error_p90_deg", "n_test"}
    assert m["n_test"] == 10 and isinstance(m["n_test"], int)
    assert m["clean_error_deg"] == pytest.approx(0.0, abs=1e-3)


def test_gaze_task_evaluate_known_errors() -> None:
    # at pitch 0 a pure yaw offset is a 3D angle of exactly that offset
    truth = np.zeros((4, 2), np.float32)
    offsets = np.array([0.0, 0.1, 0.2, 0.4])
    pred = np.stack([np.zeros(4), offsets], 1)
    m = GazeTask().evaluate(pred, _gaze_ds(truth))
    expected = np.degrees(offsets)
    assert m["clean_error_deg"] == pytest.approx(expected.mean(), rel=1e-4)
    assert m["clean_error_median_deg"] == pytest.approx(np.median(expected), rel=1e-4)
    assert m["clean_error_p90_deg"] == pytest.approx(np.percentile(expected, 90), rel=1e-4)
    assert m["n_test"] == 4
    # a pitch offset at yaw 0 also counts fully
    m2 = GazeTask().evaluate(np.array([[0.3, 0.0]]), _gaze_ds(np.zeros((1, 2))))
    assert m2["clean_error_deg"] == pytest.approx(math.degrees(0.3), rel=1e-4)


def test_gaze_task_rejects_predictions_of_the_wrong_shape() -> None:
    truth = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match="shape"):
        GazeTask().evaluate(np.zeros((1, 2)), _gaze_ds(truth))  # would silently broadcast
    with pytest.raises(ValueError, match="shape"):
        GazeTask().evaluate(np.zeros((4, 2)), _gaze_ds(truth))


def test_gaze_task_collate_and_training_step() -> None:
    task = TASKS["gaze"]()
    target = task.collate({"gaze": torch.tensor([[0.1, -0.2]], dtype=torch.float64)})
    assert target.dtype == torch.float32
    step = task.training_step(lambda x: torch.tensor([[0.3, 0.0]]), {}, torch.zeros(1, 3, 8, 8), target)
    assert step.loss.item() == pytest.approx((0.2 + 0.2) / 2)
    assert step.parts == {}  # a one-term loss logs only the loss
    assert task.default_model(1) == ("gaze_cnn", {"in_channels": 1})


def test_predict_keeps_order_and_mode() -> None:
    torch.manual_seed(0)
    model = GazeCNN(width=8).train()
    rng = np.random.default_rng(0)
    ds = ArrayDataset(rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8), {"gaze": np.zeros((7, 2), np.float32)})
    preds = GazeTask().predict(model, ds, batch_size=3)
    assert model.training
    assert preds.shape == (7, 2)
    model.eval()
    with torch.no_grad():
        direct = model(ds.batch(np.arange(7))[0]).numpy()
    np.testing.assert_allclose(preds, direct, rtol=1e-5, atol=1e-6)


def test_summarize_errors() -> None:
    s = summarize_errors(np.arange(1, 11, dtype=float))
    assert s == pytest.approx({"mean": 5.5, "median": 5.5, "p90": 9.1, "max": 10.0})
    assert summarize_errors([3.0]) == {"mean": 3.0, "median": 3.0, "p90": 3.0, "max": 3.0}
    with pytest.raises(ValueError, match="no errors"):
        summarize_errors(np.array([]))
