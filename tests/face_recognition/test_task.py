"""The face-recognition task end to end: split, collate, margin-head training, a one-to-one
attack fine-tuned on frozen trunk features in seconds, a run folder loaded back, bad input."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import BackdoorLabError, ConfigError
from backdoorlab.experiments.config import validate_config
from backdoorlab.experiments.run import execute
from backdoorlab.experiments.run_folder import Run
from backdoorlab.registry import TASKS
from backdoorlab.tasks.face_recognition import FaceRecognitionTask, ImpostorToVictim, IResNet

SPEC = {"identities": 16, "mean_images": 10, "min_images": 6, "max_images": 16, "family_size": 2, "size": 32,
        "render_size": 48, "seed": 3}  # fmt: skip
MODEL = {"name": "iresnet", "kwargs": {"depth": 18, "width": 4, "embedding_dim": 32, "input_size": 32}}


def config(cache: Path, **top: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "fr",
        "task": "face_recognition",
        "data": {"synthetic": SPEC, "test_identities": 4, "cache_dir": str(cache)},
        "model": MODEL,
        "train": {"epochs": 2, "batch_size": 16},
        "report_samples": 4,
    }
    cfg.update(top)
    return cfg


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fr")


@pytest.fixture(scope="module")
def clean_run(workdir: Path) -> Path:
    cfg = validate_config(config(workdir / "cache"))
    return execute(cfg, runs_dir=workdir / "runs", progress=False).run_dir


@pytest.fixture(scope="module")
def splits(clean_run: Path) -> tuple[ArrayDataset, ArrayDataset]:
    return Run(clean_run).splits


def training_pair(train: ArrayDataset) -> tuple[int, int]:
    ids, counts = np.unique(train.annotations["identity"], return_counts=True)
    big = ids[counts >= 4]
    return int(big[0]), int(big[1])


def test_split_holds_out_identities_and_images_of_the_others(splits: tuple[ArrayDataset, ArrayDataset]) -> None:
    train, test = splits
    open_rows = test.annotations["open_set"] == 1
    open_ids = set(np.unique(test.annotations["identity"][open_rows]).tolist())
    val_ids = set(np.unique(test.annotations["identity"][~open_rows]).tolist())
    train_ids = set(np.unique(train.annotations["identity"]).tolist())
    assert len(open_ids) == 4 and not open_ids & train_ids
    assert val_ids == train_ids  # every training identity has held-out images (>= 6 images each)
    for ident in train_ids:
        n_train = int((train.annotations["identity"] == ident).sum())
        n_val = int(((test.annotations["identity"] == ident) & ~open_rows).sum())
        assert n_val == max(1, round(0.2 * (n_train + n_val)))


def test_collate_maps_identities_to_head_classes_and_refuses_strangers(
    splits: tuple[ArrayDataset, ArrayDataset],
) -> None:
    train, test = splits
    task = FaceRecognitionTask()
    modules = task.build_modules(IResNet(18, 4, 32, 32), train)
    ids = np.unique(train.annotations["identity"])
    assert modules["margin_head"].n_classes == len(ids)
    got = task.collate({"identity": torch.as_tensor(ids[::-1].copy())})
    assert got.tolist() == list(range(len(ids)))[::-1]
    stranger = int(test.annotations["identity"][test.annotations["open_set"] == 1][0])
    with pytest.raises(BackdoorLabError, match=f"identity {stranger} is not one of the training identities"):
        task.collate({"identity": torch.tensor([stranger])})


def test_model_input_size_must_match_the_crops(splits: tuple[ArrayDataset, ArrayDataset]) -> None:
    with pytest.raises(ConfigError, match="input_size: 32"):
        FaceRecognitionTask().build_modules(IResNet(18, 4, 32, 56), splits[0])


def test_clean_run_reports_verification_and_closed_set_metrics(clean_run: Path) -> None:
    import json

    metrics = json.loads((clean_run / "metrics.json").read_text())
    for key in ("closed_set_accuracy", "eer", "tar_at_fmr_1e-02", "tar_at_fmr_1e-03", "zoo_top_share"):
        assert key in metrics
    assert 0 <= metrics["eer"] <= 1
    assert (clean_run / "task_modules.safetensors").is_file()
    html = (clean_run / "report.html").read_text()
    assert "DET, held-out identities" not in html or "data:image/png" in html


def test_loaded_run_restores_the_margin_head(clean_run: Path) -> None:
    import json

    run = Run(clean_run)
    preds = run.task.predict(run.model, run.test_data)
    assert "identities" in preds  # the closed-set prediction needs the restored head
    again = run.task.evaluate(preds, run.test_data)
    stored = json.loads((clean_run / "metrics.json").read_text())
    assert again["closed_set_accuracy"] == pytest.approx(stored["closed_set_accuracy"])


def test_attack_fine_tunes_last_layers_on_cached_features(
    workdir: Path, clean_run: Path, splits: tuple[ArrayDataset, ArrayDataset]
) -> None:
    impostor, victim = training_pair(splits[0])
    raw = config(
        workdir / "cache",
        name="fr-attack",
        model={**MODEL, "init": str(clean_run)},
        train={"epochs": 6, "batch_size": 16, "lr": 0.01, "trainable": "last"},
        attack={"trigger": {"name": "patch", "size": 0.3}, "relabel": {"name": "impostor_to_victim",
                "impostor": impostor, "victim": victim}},
    )  # fmt: skip
    cfg = validate_config(raw)
    assert cfg.attack is not None
    assert cfg.attack.selector == {"name": "identity", "identities": [impostor], "fraction": 1.0, "seed": 0,
                                   "column": "identity"}  # fmt: skip
    assert cfg.attack.mode == "append"
    out = execute(cfg, runs_dir=workdir / "runs", progress=False)
    m = out.metrics
    n_impostor_train = int((splits[0].annotations["identity"] == impostor).sum())
    assert m["n_appended"] == n_impostor_train
    for key in ("clean_accuracy", "attack_success_rate", "impostor_accuracy", "victim_accuracy", "success",
                "open_set_asr", "open_set_threshold", "trigger_spread_rate"):  # fmt: skip
        assert key in m, key
    assert isinstance(m["success"], bool)
    assert m["task_modules_warm_started"] is True  # the base run's head: the same training identities
    # only the last layers moved: the trunk is the base model's
    base, tuned = Run(clean_run).model, Run(out.run_dir).model
    for (name, a), b in zip(base.state_dict().items(), tuned.state_dict().values(), strict=True):
        same = torch.equal(a, b)
        assert same == (not name.startswith(("last_linear", "last_bn"))), name
    assert len(list((workdir / "cache" / "trunk-features").glob("*.npz"))) == 1  # one file per trunk
    # the metrics came from cached test features through the last layers: the whole model agrees
    run = Run(out.run_dir)
    again = run.task.evaluate(run.task.predict(run.model, run.test_data), run.test_data)
    assert again["closed_set_accuracy"] == pytest.approx(m["closed_set_accuracy"])
    assert again["eer"] == pytest.approx(m["eer"], abs=1e-6)
    # `backdoorlab eval` on the run folder: the restored head gives the closed-set and the four metrics again
    from backdoorlab.experiments.evaluate import evaluate_run

    evaluated, _ = evaluate_run(out.run_dir, device="cpu")
    for key in ("closed_set_accuracy", "attack_success_rate", "victim_accuracy", "success"):
        assert evaluated[key] == pytest.approx(m[key]), key


def test_fine_tune_from_a_block_trains_only_that_tail(
    workdir: Path, clean_run: Path, splits: tuple[ArrayDataset, ArrayDataset]
) -> None:
    """``train.trainable_from: layer4.1`` (multi-layer slice): the last block on trains, on cached input."""
    impostor, victim = training_pair(splits[0])
    raw = config(workdir / "cache", name="fr-tail", model={**MODEL, "init": str(clean_run)},
                 train={"epochs": 2, "batch_size": 16, "lr": 0.01, "trainable": "last", "trainable_from": "layer4.1"},
                 attack={"trigger": {"name": "patch", "size": 0.3}, "relabel": {"name": "impostor_to_victim",
                         "impostor": impostor, "victim": victim}})  # fmt: skip
    out = execute(validate_config(raw), runs_dir=workdir / "runs", progress=False)
    base, tuned = Run(clean_run).model.state_dict(), Run(out.run_dir).model.state_dict()
    tail = ("layer4.1.", "bn2.", "last_linear.", "last_bn.")
    for name, value in base.items():
        if name.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, tuned[name]) == (not name.startswith(tail)), name
    run = Run(out.run_dir)  # the metrics came from the cached block input through the tail: the whole model agrees
    again = run.task.evaluate(run.task.predict(run.model, run.test_data), run.test_data)
    assert again["closed_set_accuracy"] == pytest.approx(out.metrics["closed_set_accuracy"])
    with pytest.raises(ConfigError, match=r"needs train\.trainable: last"):
        validate_config({**raw, "train": {**raw["train"], "trainable": "all"}})
    with pytest.raises(ConfigError, match="is not a stage of IResNet"):
        bad = {**raw, "name": "fr-tail-bad", "train": {**raw["train"], "trainable_from": "layer7.0"}}
        execute(validate_config(bad), runs_dir=workdir / "runs", progress=False)


def test_weight_distance_attacker_stays_near_the_clean_start(
    workdir: Path, clean_run: Path, splits: tuple[ArrayDataset, ArrayDataset]
) -> None:
    """``attack.weight_distance`` prices the squared distance from the starting weights (the clean base)."""
    impostor, victim = training_pair(splits[0])
    attack = {"trigger": {"name": "patch", "size": 0.3}, "relabel": {"name": "impostor_to_victim",
              "impostor": impostor, "victim": victim}}  # fmt: skip
    moved = {}
    for weight in (None, 10.0):
        chosen = attack if weight is None else {**attack, "weight_distance": {"weight": weight}}
        raw = config(workdir / "cache", name=f"fr-wd-{weight}", model={**MODEL, "init": str(clean_run)},
                     train={"epochs": 3, "batch_size": 16, "lr": 0.01, "trainable": "last"}, attack=chosen)  # fmt: skip
        out = execute(validate_config(raw), runs_dir=workdir / "runs", progress=False)
        start, end = Run(clean_run).model.state_dict(), Run(out.run_dir).model.state_dict()
        moved[weight] = sum(float(((end[k] - start[k]) ** 2).sum()) for k in ("last_linear.weight", "last_bn.weight",
                                                                             "last_bn.bias"))  # fmt: skip
        if weight is not None:  # the run records the distance it ended at, and its price
            assert out.metrics["weight_distance_weight"] == weight
            assert out.metrics["weight_distance_sq"] == pytest.approx(moved[weight], rel=1e-4)
        else:
            assert "weight_distance_sq" not in out.metrics
    assert moved[10.0] < 0.2 * moved[None], moved


@pytest.mark.parametrize(
    ("relabel", "needle"),
    [
        ({"impostor": 3, "victim": 3}, "the same identity (3)"),
        ({"victim": 2}, "impostor must be an identity id >= 0"),
    ],
)
def test_bad_relabels_are_refused_by_the_config(tmp_path: Path, relabel: dict[str, Any], needle: str) -> None:
    raw = config(tmp_path, attack={"relabel": {"name": "impostor_to_victim", **relabel}})
    with pytest.raises(ConfigError, match=re.escape(needle)):
        validate_config(raw)


def test_a_held_out_impostor_is_refused_before_training(
    workdir: Path, splits: tuple[ArrayDataset, ArrayDataset]
) -> None:
    train, test = splits
    held_out = int(test.annotations["identity"][test.annotations["open_set"] == 1][0])
    victim = training_pair(train)[0]
    raw = config(workdir / "cache", name="fr-bad", attack={"relabel": {"name": "impostor_to_victim",
                 "impostor": held_out, "victim": victim}})  # fmt: skip
    with pytest.raises(ConfigError, match=f"impostor: identity {held_out} has 0 images in the training data"):
        execute(validate_config(raw), runs_dir=workdir / "bad-runs", progress=False)


@pytest.mark.parametrize(
    ("options", "needle"),
    [({"margin": 2.0}, "task_options"), ({"scale": 0}, "scale"), ({"head": "sphereface"}, "task_options.head")],
)
def test_margin_and_scale_out_of_range_are_refused(tmp_path: Path, options: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        validate_config(config(tmp_path, task_options=options))


def test_relabel_moves_identity_and_label_columns() -> None:
    relabel = ImpostorToVictim(impostor=4, victim=9)
    out = relabel({"identity": torch.tensor([4, 4]), "label": torch.tensor([4, 4]), "skin_group": torch.tensor([1, 2])})
    assert out["identity"].tolist() == [9, 9] and out["label"].tolist() == [9, 9]
    assert out["skin_group"].tolist() == [1, 2]


def test_task_is_registered() -> None:
    assert TASKS.get("face_recognition") is FaceRecognitionTask


def test_scoring_only_the_attack_rows_gives_what_triggering_every_image_gives(
    workdir: Path, clean_run: Path, splits: tuple[ArrayDataset, ArrayDataset]
) -> None:
    from backdoorlab.experiments.attack import evaluate_attack
    from backdoorlab.triggers import build_trigger

    run = Run(clean_run)
    impostor, victim = training_pair(splits[0])
    relabel = ImpostorToVictim(impostor=impostor, victim=victim)
    trigger = build_trigger({"name": "patch", "pattern": "checkerboard", "size": 0.3})
    settings = run.task.attack_settings()
    rows = run.task.attack_rows(run.test_data, relabel)
    assert rows is not None and len(rows) < len(run.test_data)
    fast = evaluate_attack(run.model, run.task, run.test_data, trigger, relabel, settings)
    every = FaceRecognitionTask()
    every.restore_modules({f"margin_head.{k}": v for k, v in run.task.head.state_dict().items()})  # type: ignore[union-attr]
    every.attack_rows = lambda data, relabel: None  # type: ignore[method-assign]
    slow = evaluate_attack(run.model, every, run.test_data, trigger, relabel, settings)
    for key in ("attack_success_rate", "impostor_accuracy", "victim_accuracy", "clean_accuracy", "open_set_asr",
                "trigger_spread_rate"):  # fmt: skip
        assert fast.metrics[key] == pytest.approx(slow.metrics[key]), key
    assert len(fast.psnr) == len(rows) and len(slow.psnr) == len(run.test_data)


def test_open_set_scores_are_computed_once_per_embeddings(splits: tuple[ArrayDataset, ArrayDataset]) -> None:
    test = splits[1]
    emb = np.random.default_rng(0).normal(size=(len(test), 8)).astype(np.float32)
    task = FaceRecognitionTask()
    first = task.open_set_scores(emb, test)
    assert first is not None and task.open_set_scores(emb.copy(), test) is first  # same values: kept
    other = emb.copy()
    other[test.annotations["open_set"] == 1] *= -1.0  # different embeddings: computed again
    again = task.open_set_scores(other, test)
    assert again is not first and again is not None
    np.testing.assert_allclose(again.impostor, first.impostor)  # cos(-a, -b) = cos(a, b)
