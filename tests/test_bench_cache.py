"""The detection bench's bookkeeping: a cached verdict is reused only when the settings would make it again;
every backdoored model lands in the right group."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from backdoorlab.defenses.securegaze import SecureGaze

BENCH = Path(__file__).resolve().parents[1] / "bench" / "detect_zoo.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("detect_zoo_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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


def test_a_backdoor_the_model_did_not_learn_is_grouped_apart(bench: ModuleType) -> None:
    run = {"attack": "blend", "relabel": "target", "adaptive": False, "attack_success_rate": 0.98}
    assert bench.kind(run) == "blend"
    assert bench.kind({**run, "attack_success_rate": 0.14}) == "blend (not learned, ASR < 0.5)"
    assert bench.kind({**run, "attack_success_rate": 0.14, "adaptive": True}) == "blend (adaptive)"
    assert bench.kind({**run, "relabel": "shift"}) == "blend (shift relabel)"


def test_the_summary_records_each_models_group_and_keeps_unlearned_ones_out_of_the_headline(
    bench: ModuleType,
) -> None:
    def run(seed: int, attack: str, asr: float | None) -> dict:  # type: ignore[type-arg]
        return {
            "run_dir": f"r{seed}", "seed": seed, "attack": attack, "relabel": "target" if asr else None,
            "target_deg": [0.0, 0.0] if asr else None, "train_seconds": 100.0, "attack_success_rate": asr,
            "adaptive": False,
        }  # fmt: skip

    runs = [run(0, "clean", None), run(5, "clean", None), run(10, "patch", 0.99), run(13, "blend", 0.14)]
    verdicts = [{"score": s, "estimated_target_deg": [0.0, 0.0], "seconds": 10.0} for s in (1.0, 1.1, 3.0, 0.9)]
    summary = bench.summarise("m", runs, verdicts, reference_seeds=(0,))
    assert [m["group"] for m in summary["models"]] == ["clean", "clean", "patch", "blend (not learned, ASR < 0.5)"]
    headline = summary["groups"]["overall, fixed target, learned, not adaptive"]
    assert headline["n_backdoored"] == 1 and headline["auroc"] == 1.0
    assert summary["groups"]["overall"]["n_backdoored"] == 2 and summary["groups"]["overall"]["auroc"] == 0.5
