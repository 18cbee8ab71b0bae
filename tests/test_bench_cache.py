"""The detection bench's bookkeeping: a cached verdict is reused only when the settings would make it again;
the Zoo reproduces every committed detection result from its verdicts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from backdoorlab.defenses.securegaze import SecureGaze
from backdoorlab.experiments.store import ResultsStore
from backdoorlab.experiments.zoo import Zoo, ZooRules

sys.path.insert(0, str(Path(__file__).parent))
from helpers_experiments import load_bench_script
from zoo_fixtures import add_run, run_config, store_from_results


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench_script("detect_zoo")


def test_identical_settings_reuse_the_verdict_whatever_the_device(bench: ModuleType) -> None:
    current = SecureGaze().params()
    cached = {**current, "device": "cuda"}
    assert bench.cache_matches(cached, current, current)


def test_a_changed_setting_invalidates_the_verdict(bench: ModuleType) -> None:
    current = SecureGaze().params()
    assert not bench.cache_matches({**current, "budget": 0.05}, current, current)


def test_a_setting_added_later_counts_at_the_value_that_reproduces_the_old_behaviour(bench: ModuleType) -> None:
    defaults = SecureGaze().params()
    cached = {k: v for k, v in defaults.items() if k != "scan_starts"}  # a verdict from before the scan existed
    # the current default screens squares (scan_starts 3): the old verdict is not one it would make
    assert defaults["scan_starts"] > 0
    assert not bench.cache_matches(cached, defaults, defaults)
    # a row that turns the scan off is what the old verdict did
    assert bench.cache_matches(cached, {**defaults, "scan_starts": 0}, defaults)
    # a setting not listed in BEFORE_IT_EXISTED counts at its default
    no_width = {k: v for k, v in defaults.items() if k != "width"}
    assert bench.cache_matches(no_width, defaults, defaults)
    assert not bench.cache_matches(no_width, {**defaults, "width": 8}, defaults)


def test_nested_mitigation_settings_are_compared_leaf_by_leaf(bench: ModuleType) -> None:
    from backdoorlab.experiments.defend import build_mitigator

    current = build_mitigator("securegaze", device="cpu").params()
    assert bench.cache_matches(current, current, current)
    changed = {**current, "fine_tune": {**current["fine_tune"], "epochs": 3}}
    assert not bench.cache_matches(changed, current, current)
    # a record from before the screened starts and the BatchNorm option: stale under the current defaults
    old = {
        **current,
        "detector": {k: v for k, v in current["detector"].items() if k != "scan_starts"},
        "fine_tune": {k: v for k, v in current["fine_tune"].items() if k != "freeze_batchnorm"},
    }
    assert not bench.cache_matches(old, current, current)
    no_scan = {**current, "detector": {**current["detector"], "scan_starts": 0}}
    assert bench.cache_matches(old, no_scan, no_scan)
    # a record from before the paired, self-distilled unlearning batches is stale under the current defaults
    unpaired = {k: v for k, v in current.items() if k not in ("paired", "clean_targets")}
    assert not bench.cache_matches(unpaired, current, current)
    assert bench.cache_matches(unpaired, {**current, "paired": False, "clean_targets": "label"}, current)


def test_a_verdict_from_before_the_bars_is_stale_unless_the_row_screens_squares_only(bench: ModuleType) -> None:
    defaults = SecureGaze().params()
    cached = {k: v for k, v in defaults.items() if k != "scan_shapes"}  # screened squares of side 0.2 only
    assert not bench.cache_matches(cached, defaults, defaults)
    squares = SecureGaze(scan_shapes=[[0.2, 0.2]]).params()
    assert bench.cache_matches(cached, squares, defaults)


RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


@pytest.mark.parametrize("name", ["detect_zoo", "detect_zoo_holdout", "detect_zoo_resnet18"])
def test_the_zoo_reproduces_every_committed_detection_result(bench: ModuleType, tmp_path: Path, name: str) -> None:
    """The committed verdicts, put back in a store and judged by the Zoo, give the committed JSON again
    (all but the time ratio, whose training seconds the JSON does not keep)."""
    results = json.loads((RESULTS / f"{name}.json").read_text())
    rules = ZooRules(reference_seeds=tuple(results["reference_seeds"]))
    for method, res in results["methods"].items():
        folder = tmp_path / method
        models = res["models"]
        if results.get("reference_store"):  # calibrated on another zoo's references
            store_from_results([m for m in models if m["reference"]], folder / "refs.sqlite")
            store_from_results([m for m in models if not m["reference"]], folder / "zoo.sqlite")
            zoo = Zoo.open(folder / "zoo.sqlite", rules, reference_store=folder / "refs.sqlite")
        else:
            store_from_results(models, folder / "zoo.sqlite")
            zoo = Zoo.open(folder / "zoo.sqlite", rules)
        verdicts = {Path(m["run_dir"]).name: bench.from_verdict_json(m) for m in models}
        got = bench.evaluation_json(zoo.evaluate(verdicts, bench.target_error_deg))
        want = {k: v for k, v in res.items() if k not in ("detector", "params")}
        for record in (got, want):
            record.pop("seconds_over_train_mean")
            for m in record["models"]:
                m["run_dir"] = Path(m["run_dir"]).name
        assert got == want, method
        assert len(got["groups"]) > 3 and got["threshold"] > 0


def test_a_verdict_cached_in_a_run_folder_by_an_older_bench_is_taken_into_the_store(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = ResultsStore(tmp_path / "zoo.sqlite")
    add_run(store, "r1", run_config(7, "patch", "target", [0.0, 0.0], False), {})
    zoo = Zoo.open(tmp_path / "zoo.sqlite")
    current = bench.settings("securegaze", {}, 256)
    folder = tmp_path / "runs" / "r1" / "defence" / "securegaze"
    folder.mkdir(parents=True)
    details = {"params": current["params"], "n_clean": 256}
    verdict = {"method": "securegaze", "backdoored": True, "score": 4.0, "threshold": 1.0, "seconds": 9.0,
               "estimated_target_deg": [0.5, 0.5], "details": details}  # fmt: skip
    (folder / "verdict.json").write_text(json.dumps(verdict))

    class NoPool:
        def submit(self, *args: object) -> None:
            raise AssertionError("a matching cached verdict must not be recomputed")

    got = bench.inspect(zoo, "securegaze", 256, NoPool())
    assert got["r1"].score == 4.0 and got["r1"].estimates == {"estimated_target_deg": [0.5, 0.5]}
    (stored,) = store.verdicts("r1", "securegaze")
    assert stored["settings"] == current and stored["score"] == 4.0
    (folder / "verdict.json").unlink()
    assert bench.inspect(zoo, "securegaze", 256, NoPool())["r1"].score == 4.0  # now from the store
    with pytest.raises(AssertionError, match="must not be recomputed"):  # other settings: inspected again
        bench.inspect(zoo, "securegaze", 128, NoPool())
