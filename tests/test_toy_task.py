"""A second task with ragged targets goes through the generic layers with no change to them.

The toy (``toy_squares_task.py``: find the squares in an image) registers itself here and
is trained, evaluated, attacked (a relabel that adds an instance where the trigger
landed), stored, swept and reported through the same CLI, loop, run, sweep, store and
report as gaze.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers_experiments import invoke, write_yaml
from toy_squares_task import SCHEMA, SquareAtTrigger, SquaresSpec, register, render_squares
from typer.testing import CliRunner

from backdoorlab.attacks.poisoning import Poisoning
from backdoorlab.attacks.selectors import InstanceSelector, RateSelector
from backdoorlab.data.instances import InstanceBatch
from backdoorlab.errors import ConfigError
from backdoorlab.experiments.config import validate_config
from backdoorlab.experiments.store import ResultsStore
from backdoorlab.registry import MODELS, RELABELS, TASKS
from backdoorlab.triggers.blend import BlendTrigger
from backdoorlab.triggers.patch import PatchTrigger

TRIGGER = {"name": "patch", "size": 0.25, "center": [0.75, 0.25], "pattern": "checkerboard"}


@pytest.fixture(autouse=True)
def squares_task() -> Iterator[None]:
    register()
    yield
    TASKS.unregister("squares")
    MODELS.unregister("squares_grid")
    RELABELS.unregister("square_at_trigger")


def toy_config(**top: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "squares",
        "task": "squares",
        "seed": 0,
        "device": "cpu",
        "data": {"synthetic": {"n": 240}, "test_identities": 3},
        "train": {"epochs": 20, "batch_size": 32, "lr": 0.01},
        "report_samples": 4,
    }
    cfg.update(top)
    return cfg


def test_the_relabel_adds_an_instance_at_the_trigger_and_poisoning_writes_it_back() -> None:
    ds = render_squares(SquaresSpec(n=40))
    trigger = PatchTrigger(size=0.25, center=(0.75, 0.25))
    poisoning = Poisoning(RateSelector(0.5, 0), trigger, SquareAtTrigger())
    plan = poisoning.plan(ds)
    images, ann = ds.batch(np.arange(40))
    new_images, new_ann = poisoning.batch_transform(plan)(images, ann, np.arange(40))
    before, after = ann["instances"].counts(), new_ann["instances"].counts()
    poisoned = np.zeros(40, bool)
    poisoned[plan.poison] = True
    assert torch.equal(after[poisoned], before[poisoned] + 1) and torch.equal(after[~poisoned], before[~poisoned])
    i = int(plan.poison[0])
    added = new_ann["instances"].per_sample()[i]["boxes"][-1]
    assert added.tolist() == [20.0, 4.0, 28.0, 12.0]  # the 8x8 patch centred at (24, 8) = (0.75, 0.25) of 32 px
    assert not torch.equal(new_images[i], images[i]) and torch.equal(new_images[~torch.from_numpy(poisoned)],
                                                                      images[~torch.from_numpy(poisoned)])


def test_append_mode_adds_poisoned_copies_and_keeps_the_originals(tmp_path: Path) -> None:
    ds = render_squares(SquaresSpec(n=40))
    poisoning = Poisoning(InstanceSelector(0.25, 1, 0), PatchTrigger(size=0.25), SquareAtTrigger(), mode="append")
    plan = poisoning.plan(ds)
    grown = poisoning.training_data(ds, plan)
    assert plan.sources is not None and len(grown) == 40 + len(plan.sources) == plan.n
    assert np.array_equal(plan.poison, np.arange(40, plan.n))
    assert all(ds.instances.counts()[plan.sources] >= 1)  # type: ignore[union-attr]
    assert np.array_equal(grown.images[40:], ds.images[plan.sources])
    assert poisoning.params()["mode"] == "append"
    plan.save(tmp_path)  # the record says which original each copy came from
    assert np.array_equal(np.load(tmp_path / "append_sources.npy"), plan.sources)


def test_a_relabel_needing_a_placement_is_refused_with_a_whole_image_trigger() -> None:
    with pytest.raises(ConfigError, match="needs to know where the trigger landed"):
        Poisoning(RateSelector(0.1), BlendTrigger(), SquareAtTrigger())
    raw = toy_config(attack={"trigger": {"name": "blend"}, "rate": 0.2})
    with pytest.raises(ConfigError, match=r"attack\.relabel 'square_at_trigger' needs to know where the trigger"):
        validate_config(raw)
    with pytest.raises(ConfigError, match="belongs to the 'gaze' task"):
        validate_config(toy_config(attack={"trigger": TRIGGER, "relabel": {"name": "target"}}))


def test_unknown_task_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown task 'sqares' \(known: .*gaze.*squares"):
        validate_config(toy_config(task="sqares"))


@pytest.mark.slow
def test_the_toy_trains_is_attacked_stored_swept_and_reported_through_the_generic_layers(tmp_path: Path) -> None:
    runner = CliRunner()
    cfg = toy_config(attack={"trigger": TRIGGER, "rate": 0.3})
    out = invoke(runner, "train", write_yaml(tmp_path / "toy.yaml", cfg), "--runs-dir", tmp_path / "runs", "--quiet")
    assert out.exit_code == 0, out.output
    run = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    metrics = json.loads((run / "metrics.json").read_text())
    # it learnt the task and the backdoor (measured: f1 0.64, ASR 1.0 on 60 images of 3 held-out scenes)
    assert metrics["f1"] > 0.5 and metrics["attack_success_rate"] > 0.5, metrics
    assert metrics["n_poisoned"] == 54 and "psnr_db" in metrics  # 30% of 180 training images
    history = json.loads((run / "history.json").read_text())
    assert {"loss", "objectness", "box"} <= set(history[-1]) and history[-1]["loss"] < history[0]["loss"]
    assert "square_at_trigger" in (run / "attack.json").read_text()
    assert "squares" in (run / "report.html").read_text()
    row = ResultsStore(tmp_path / "runs" / "results.sqlite").list()[0]
    assert row["status"] == "complete" and row["task"] == "squares"

    base = write_yaml(tmp_path / "base.yaml", toy_config(train={"epochs": 1, "batch_size": 32}))
    sweep = write_yaml(tmp_path / "sweep.yaml", {"base": base.name, "name": "sq", "grid": {"seed": [0, 1]}})
    out = invoke(runner, "sweep", sweep, "--runs-dir", tmp_path / "sweep-runs")
    assert out.exit_code == 0, out.output
    rows = ResultsStore(tmp_path / "sweep-runs" / "results.sqlite").list(status="complete")
    assert len(rows) == 2 and all("f1" in r["metrics"] for r in rows)
    out = invoke(runner, "runs", "--store", tmp_path / "sweep-runs" / "results.sqlite", "--metric", "f1")
    assert out.exit_code == 0 and out.output.count("sq-") == 2


def test_instance_batches_round_trip_through_the_toy_schema() -> None:
    samples = [{"boxes": torch.zeros(0, 4), "label": torch.zeros(0, dtype=torch.int64)},
               {"boxes": torch.ones(2, 4), "label": torch.ones(2, dtype=torch.int64)}]  # fmt: skip
    batch = InstanceBatch.from_samples(samples, SCHEMA)
    assert batch.counts().tolist() == [0, 2]
