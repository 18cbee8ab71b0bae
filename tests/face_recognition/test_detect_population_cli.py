"""`backdoorlab detect-population`: a weight-anomaly detector fitted once on clean reference runs
(given one by one or as a results store) and applied to other runs, end to end on tiny
last-layer fine-tunes; references that are also judged, and a missing reference set, refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_experiments import invoke, write_yaml
from typer.testing import CliRunner

from backdoorlab.experiments.config import validate_config
from backdoorlab.experiments.run import execute
from backdoorlab.experiments.run_folder import Run

from .test_task import MODEL, config, training_pair

#: a detector small enough for five tiny networks (the 32-d embedding layer has 32 row vectors each)
PARAMS = ("--param", "components=[1,2]", "--param", "calibration_share=0.34", "--param", "variance=0.9")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny clean base run; three clean references and one clean and one backdoored fine-tune of it."""
    root = tmp_path_factory.mktemp("population")
    cache = root / "cache"
    base = execute(validate_config(config(cache)), runs_dir=root / "base", progress=False).run_dir
    impostor, victim = training_pair(Run(base).splits[0])
    tune = {"epochs": 2, "batch_size": 16, "lr": 0.01, "trainable": "last"}
    runs: dict[str, Path] = {}
    for seed, name in enumerate(("ref0", "ref1", "ref2", "clean")):
        cfg = config(cache, name=name, seed=seed, model={**MODEL, "init": str(base)}, train=tune)
        cfg["data"]["split_seed"] = seed
        where = "refs" if name.startswith("ref") else "judged"
        runs[name] = execute(validate_config(cfg), runs_dir=root / where, progress=False).run_dir
    attack = {"trigger": {"name": "patch", "size": 0.3},
              "relabel": {"name": "impostor_to_victim", "impostor": impostor, "victim": victim}}  # fmt: skip
    cfg = config(cache, name="bd", seed=9, model={**MODEL, "init": str(base)}, train=tune, attack=attack)
    runs["backdoored"] = execute(validate_config(cfg), runs_dir=root / "judged", progress=False).run_dir
    runs["root"] = root
    return runs


def test_fits_once_and_writes_a_verdict_per_run(runner: CliRunner, zoo: dict[str, Path]) -> None:
    refs = [a for r in ("ref0", "ref1", "ref2") for a in ("--reference", zoo[r])]
    result = invoke(runner, "detect-population", zoo["clean"], zoo["backdoored"], *refs, *PARAMS)
    assert result.exit_code == 0, result.output
    assert "3 clean references" in result.output
    for name in ("clean", "backdoored"):
        verdict = json.loads((zoo[name] / "defence" / "weight_anomaly" / "verdict.json").read_text())
        assert verdict["method"] == "weight_anomaly"
        assert set(verdict["details"]["per_layer"]) == {"last_linear/backward"}
        assert verdict["details"]["references"] == [str(zoo[r]) for r in ("ref0", "ref1", "ref2")]
        assert verdict["backdoored"] == (verdict["score"] >= verdict["threshold"])


def test_a_reference_store_gives_every_clean_run_of_it(runner: CliRunner, zoo: dict[str, Path]) -> None:
    out = zoo["root"] / "verdicts"
    store = zoo["root"] / "refs" / "results.sqlite"
    result = invoke(
        runner, "detect-population", zoo["backdoored"], "--reference-store", store, "--out", out, *PARAMS,
        "--param", 'views=["forward", "backward"]',
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    verdict = json.loads((out / zoo["backdoored"].name / "verdict.json").read_text())
    assert len(verdict["details"]["references"]) == 3
    assert set(verdict["details"]["per_layer"]) == {"last_linear/forward", "last_linear/backward"}


def test_a_judged_reference_and_no_reference_are_refused(runner: CliRunner, zoo: dict[str, Path]) -> None:
    refs = [a for r in ("ref0", "ref1", "ref2") for a in ("--reference", zoo[r])]
    result = invoke(runner, "detect-population", zoo["ref0"], *refs, *PARAMS)
    assert result.exit_code != 0
    assert "also a reference" in result.output
    result = invoke(runner, "detect-population", zoo["clean"])
    assert result.exit_code != 0
    assert "no reference networks" in result.output
    bad = write_yaml(zoo["root"] / "bad.yaml", {"method": "weight_anomaly", "views": ["sideways"]})
    result = invoke(runner, "detect-population", zoo["clean"], "--reference", zoo["ref0"], "--config", bad)
    assert result.exit_code != 0
    assert "views" in result.output
