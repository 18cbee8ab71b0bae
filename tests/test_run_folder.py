"""A finished run opened as one object: config, task, trigger, splits and the defender's set, read once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_experiments import tiny_config

from backdoorlab.errors import ConfigError
from backdoorlab.experiments.config import validate_config
from backdoorlab.experiments.run import execute
from backdoorlab.experiments.run_folder import Run


@pytest.fixture(scope="module")
def attacked(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    attack = {"trigger": {"name": "patch", "size": 0.25}, "relabel": {"name": "target", "target_deg": [-20, 25]}}
    cfg = validate_config(tiny_config(cache, attack=attack, train={"epochs": 2, "batch_size": 32}))
    return execute(cfg, tmp_path_factory.mktemp("runs"), progress=False).run_dir


def test_a_run_rescores_its_own_backdoor_exactly_as_training_did(attacked: Path) -> None:
    run = Run(attacked)
    assert run.config.task == run.task.name and run.attack is not None
    assert run.trigger is run.trigger and run.splits is run.splits  # read once
    recorded = json.loads((attacked / "metrics.json").read_text())
    again = run.score_attack(run.model, run.test_data).metrics
    for key in ("attack_success_rate", "attack_error_deg", "psnr_db", "ssim"):
        assert again[key] == recorded[key], key


def test_the_defender_split_is_seeded_disjoint_and_cached(attacked: Path) -> None:
    run = Run(attacked)
    clean, held = run.defender_split(20)
    assert len(clean) == 20 and len(clean) + len(held) == len(run.test_data)
    assert run.defender_split(20)[0] is clean
    other, _ = run.defender_split(20, seed=1)
    assert not np.array_equal(np.asarray(other.images), np.asarray(clean.images))
    with pytest.raises(ConfigError, match="leaves no held-out images"):
        run.defender_split(len(run.test_data))


def test_not_a_run_folder_and_a_clean_run_without_attack(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(ConfigError, match="not a run folder"):
        Run(tmp_path)
    clean = execute(validate_config(tiny_config(cache)), tmp_path / "runs", progress=False).run_dir
    with pytest.raises(ConfigError, match="not an attacked run"):
        _ = Run(clean).trigger


def test_the_zoo_page_gets_the_runs_real_trigger_not_a_note(attacked: Path) -> None:
    from backdoorlab.experiments.zoo_illustrations import real_trigger_example

    example = real_trigger_example(attacked, n_clean=20, faces=4)
    assert example.note == "" and example.clean is not None and example.triggered is not None
    assert example.clean.shape == example.triggered.shape and (example.clean != example.triggered).any()
