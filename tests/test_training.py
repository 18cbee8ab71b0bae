"""The training loop: deterministic, actually learns, stops on divergence, schedules and hooks behave."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_experiments import tiny_faces
from hypothesis import given, settings
from hypothesis import strategies as st

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import DatasetError, TrainingDivergedError
from backdoorlab.tasks.gaze import GazeCNN, GazeTask
from backdoorlab.training import TrainSettings, epoch_order, lr_factor, seed_everything, train


@pytest.fixture(scope="module")
def faces() -> ArrayDataset:
    return tiny_faces()


def _fresh(seed: int) -> GazeCNN:
    seed_everything(seed)
    return GazeCNN(width=8)


def _settings(**kw: object) -> TrainSettings:
    base = {"epochs": 1, "batch_size": 32, "lr": 3e-3, "progress": False}
    return TrainSettings(**{**base, **kw})  # type: ignore[arg-type]


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_gives_bit_identical_weights(faces: ArrayDataset) -> None:
    runs = []
    for _ in range(2):
        model = _fresh(7)
        result = train(model, GazeTask(), faces, _settings(seed=7))
        runs.append((_weights(model), result.history))
    (w1, h1), (w2, h2) = runs
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
    assert h1 == h2
    # and training did change the weights
    init = _weights(_fresh(7))
    assert any(not torch.equal(init[k], w1[k]) for k in init if init[k].is_floating_point())


def test_different_seed_gives_different_weights(faces: ArrayDataset) -> None:
    a, b = _fresh(1), _fresh(2)
    train(a, GazeTask(), faces, _settings(seed=1))
    train(b, GazeTask(), faces, _settings(seed=2))
    assert not torch.equal(a.head.weight, b.head.weight)


def test_batch_order_alone_depends_on_seed(faces: ArrayDataset) -> None:
    """Same initial weights, different TrainSettings.seed: only the batch order differs."""
    a = _fresh(0)
    b = GazeCNN(width=8)
    b.load_state_dict(a.state_dict())
    train(a, GazeTask(), faces, _settings(seed=0))
    train(b, GazeTask(), faces, _settings(seed=1))
    assert not torch.equal(a.head.weight, b.head.weight)
    assert not np.array_equal(epoch_order(100, 0, 0), epoch_order(100, 1, 0))
    assert not np.array_equal(epoch_order(100, 0, 0), epoch_order(100, 0, 1))
    assert np.array_equal(np.sort(epoch_order(100, 3, 2)), np.arange(100))


def test_loss_decreases_over_three_epochs(faces: ArrayDataset) -> None:
    model = _fresh(0)
    result = train(model, GazeTask(), faces, _settings(epochs=3, schedule="constant", warmup_epochs=0))
    losses = [h["loss"] for h in result.history]
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert all(math.isfinite(v) for v in losses)
    assert losses[2] < losses[0] * 0.9, losses
    assert result.seconds > 0 and result.samples_per_second > 0
    assert model.training  # left in training mode, on the CPU


def test_history_lr_follows_the_schedule(faces: ArrayDataset) -> None:
    result = train(_fresh(0), GazeTask(), faces, _settings(epochs=2, schedule="cosine", warmup_epochs=0, lr=1e-3))
    steps = len(faces) // 32
    lrs = [h["lr"] for h in result.history]
    assert lrs[0] == pytest.approx(1e-3 * lr_factor(steps - 1, 2 * steps, 0, "cosine"))
    assert lrs[1] == pytest.approx(1e-3 * lr_factor(2 * steps - 1, 2 * steps, 0, "cosine"))
    assert lrs[1] < lrs[0]


def test_on_epoch_end_called_each_epoch(faces: ArrayDataset) -> None:
    calls: list[tuple[int, dict[str, float]]] = []
    result = train(_fresh(0), GazeTask(), faces, _settings(epochs=2), on_epoch_end=lambda e, r: calls.append((e, r)))
    assert [c[0] for c in calls] == [0, 1]
    assert [c[1] for c in calls] == result.history


# ---------------------------------------------------------------- divergence


def _with_nan_labels(ds: ArrayDataset, rows: np.ndarray) -> ArrayDataset:
    gaze = np.array(ds.annotations["gaze"], copy=True)
    gaze[rows] = np.nan
    return ArrayDataset(np.asarray(ds.images), {**ds.annotations, "gaze": gaze})


def test_nan_labels_raise_diverged_naming_epoch_and_step(faces: ArrayDataset) -> None:
    bad = _with_nan_labels(faces, np.arange(len(faces)))
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at epoch 1, step 1\b"):
        train(_fresh(0), GazeTask(), bad, _settings())


def test_nan_in_a_later_batch_names_that_step(faces: ArrayDataset) -> None:
    order = epoch_order(len(faces), 0, 0)
    bad = _with_nan_labels(faces, order[64:65])  # lands in the third batch of 32
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 3\b"):
        train(_fresh(0), GazeTask(), bad, _settings(seed=0))


def test_sparse_nan_check_still_catches_divergence_at_epoch_end(faces: ArrayDataset) -> None:
    bad = _with_nan_labels(faces, np.arange(len(faces)))
    with pytest.raises(TrainingDivergedError, match=r"epoch 1"):
        train(_fresh(0), GazeTask(), bad, _settings(nan_check_every=1000))


def test_absurd_learning_rate_diverges(faces: ArrayDataset) -> None:
    with pytest.raises(TrainingDivergedError, match=r"at epoch 1, step \d+; lower the learning rate \(now 1e\+30\)"):
        train(_fresh(0), GazeTask(), faces, _settings(lr=1e30, warmup_epochs=0, epochs=2))


def test_too_few_samples_for_one_batch(faces: ArrayDataset) -> None:
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(_fresh(0), GazeTask(), faces.subset(np.arange(10)), _settings(batch_size=32))


def test_missing_gaze_annotation(faces: ArrayDataset) -> None:
    no_gaze = ArrayDataset(np.asarray(faces.images), {"identity": np.asarray(faces.annotations["identity"])})
    with pytest.raises(DatasetError, match="gaze"):
        train(_fresh(0), GazeTask(), no_gaze, _settings())


# ---------------------------------------------------------------- batch_transform hook


def test_batch_transform_receives_the_batch_indices(faces: ArrayDataset) -> None:
    seen: list[np.ndarray] = []

    def hook(images: torch.Tensor, ann: dict[str, torch.Tensor], idx: np.ndarray):  # type: ignore[no-untyped-def]
        expected_images, expected_ann = faces.batch(idx)
        assert torch.equal(images, expected_images)
        assert torch.equal(ann["gaze"], expected_ann["gaze"])
        seen.append(np.array(idx, copy=True))
        return images, ann

    train(_fresh(0), GazeTask(), faces, _settings(epochs=2, seed=5), batch_transform=hook)
    steps = len(faces) // 32
    assert len(seen) == 2 * steps
    for epoch in range(2):
        order = epoch_order(len(faces), 5, epoch)
        for b in range(steps):
            np.testing.assert_array_equal(seen[epoch * steps + b], order[b * 32 : (b + 1) * 32])


def test_batch_transform_output_is_what_gets_trained_on(faces: ArrayDataset) -> None:
    def poison(images: torch.Tensor, ann: dict[str, torch.Tensor], idx: np.ndarray):  # type: ignore[no-untyped-def]
        gaze = ann["gaze"].clone()
        gaze[0] = float("nan")
        return images, {**ann, "gaze": gaze}

    with pytest.raises(TrainingDivergedError):
        train(_fresh(0), GazeTask(), faces, _settings(), batch_transform=poison)


# ---------------------------------------------------------------- lr_factor


SCHEDULES = ["cosine", "step", "constant"]


@settings(max_examples=150, deadline=None)
@given(
    total=st.integers(1, 5000),
    warmup_frac=st.floats(0, 0.9),
    schedule=st.sampled_from(SCHEDULES),
    data=st.data(),
)
def test_lr_factor_bounds_and_monotonicity(total: int, warmup_frac: float, schedule: str, data: st.DataObject) -> None:
    warmup = int(total * warmup_frac)
    step = data.draw(st.integers(0, total - 1))
    f = lr_factor(step, total, warmup, schedule)
    assert 0.0 <= f <= 1.0
    if step < warmup:
        # linear ramp, strictly increasing, reaching 1 on the last warm-up step
        assert f == pytest.approx((step + 1) / warmup)
        if step + 1 < warmup:
            assert lr_factor(step + 1, total, warmup, schedule) > f
        else:
            assert f == pytest.approx(1.0)
    else:
        if schedule == "constant":
            assert f == 1.0
        # after warm-up the factor never increases
        if step + 1 < total:
            assert lr_factor(step + 1, total, warmup, schedule) <= f + 1e-12
        if step == warmup:
            assert f == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(total=st.integers(2, 5000), warmup_frac=st.floats(0, 0.5))
def test_cosine_ends_near_zero(total: int, warmup_frac: float) -> None:
    warmup = int(total * warmup_frac)
    assert lr_factor(total, total, warmup, "cosine") == pytest.approx(0.0, abs=1e-12)
    last = lr_factor(total - 1, total, warmup, "cosine")
    span = total - warmup
    if span > 1:
        # one step before the end: 0.5 * (1 + cos(pi * (1 - 1/span))) = sin(pi / (2 span))^2 <= (pi / span)^2 / 4
        assert 0.0 < last <= (math.pi / span) ** 2 / 4 + 1e-12
    if span >= 50:
        assert last < 1e-3


def test_step_schedule_values() -> None:
    total = 300
    assert lr_factor(0, total, 0, "step") == 1.0
    assert lr_factor(99, total, 0, "step") == 1.0
    assert lr_factor(100, total, 0, "step") == pytest.approx(0.1)
    assert lr_factor(200, total, 0, "step") == pytest.approx(0.01)
    assert lr_factor(300, total, 0, "step") == pytest.approx(0.001)


def test_warmup_ramp_values() -> None:
    assert [lr_factor(s, 100, 4, "cosine") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 100, 4, "cosine") == 1.0


@settings(max_examples=60, deadline=None)
@given(step=st.integers(0, 10_000), total=st.integers(1, 10_000), warmup=st.integers(0, 10_000))
def test_unknown_schedule_raises_at_every_step(step: int, total: int, warmup: int) -> None:
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        lr_factor(step, total, warmup, "linear")


def test_unknown_schedule_fails_before_any_training(faces: ArrayDataset) -> None:
    model = _fresh(0)
    before = _weights(model)
    with pytest.raises(ValueError, match="unknown schedule"):
        train(model, GazeTask(), faces, _settings(schedule="linear", warmup_epochs=1.0))
    after = _weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_frozen_batchnorm_keeps_running_statistics_and_still_trains(faces: ArrayDataset) -> None:
    def bn_stats(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}

    frozen, moving = _fresh(3), _fresh(3)
    before = bn_stats(frozen)
    assert before, "GazeCNN is expected to have BatchNorm layers"
    train(frozen, GazeTask(), faces, _settings(freeze_batchnorm=True))
    train(moving, GazeTask(), faces, _settings())
    assert all(torch.equal(before[k], v) for k, v in bn_stats(frozen).items())
    assert any(not torch.equal(before[k], v) for k, v in bn_stats(moving).items())
    assert not torch.equal(frozen.head.weight, _fresh(3).head.weight)  # the weights did train


def test_modules_owned_by_the_task_are_trained_with_the_model_and_saved_beside_it(
    faces: ArrayDataset, tmp_path: Path
) -> None:
    import torch.nn.functional as F

    from backdoorlab.models.checkpoint import load_task_modules, save_task_modules
    from backdoorlab.tasks.base import StepOutput

    class ScaledGaze(GazeTask):
        """Gaze through a trainable 2x2 map that belongs to the task (like a margin head), not the model."""

        def build_modules(self, model: torch.nn.Module, data: ArrayDataset) -> dict[str, torch.nn.Module]:
            return {"scale": torch.nn.Linear(2, 2)}

        def training_step(self, model, modules, images, targets):  # type: ignore[no-untyped-def]
            out = modules["scale"](model(images))
            return StepOutput(F.l1_loss(out, targets), {"l1": F.l1_loss(out, targets)})

    task = ScaledGaze()
    model = _fresh(3)
    modules = task.build_modules(model, faces)
    before = modules["scale"].weight.detach().clone()
    result = train(model, task, faces, _settings(seed=3), modules=modules)
    assert not torch.equal(before, modules["scale"].weight)  # optimised with the model
    assert "l1" in result.history[-1]  # a named part is logged per epoch
    assert not any(k.startswith("scale") for k in model.state_dict())  # and not part of the model
    save_task_modules(modules, tmp_path)
    again = task.build_modules(model, faces)
    load_task_modules(again, tmp_path)
    assert torch.equal(again["scale"].weight, modules["scale"].weight)


def test_a_loss_that_blows_up_without_nan_is_divergence(faces: ArrayDataset) -> None:
    # the allowed maximum learning rate: the gaze L1 goes from ~0.5 to ~2e5 in the first epoch, all finite
    with pytest.raises(TrainingDivergedError, match=r"over 1000x the first step's"):
        train(_fresh(0), GazeTask(), faces, _settings(epochs=6, lr=10.0))
