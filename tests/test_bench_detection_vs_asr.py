"""The detection-against-ASR bench: its AUROC agrees with sklearn's (ties half), models fall in the right ASR
bins and are flagged at >= the first input's threshold, and a run on fake results writes where it is told."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from helpers_experiments import load_bench_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench_script("detection_vs_asr")


# few distinct values, so that ties within and across the two sides are common
_scores = st.lists(st.integers(0, 5).map(lambda v: v / 2), min_size=1, max_size=15)


@settings(max_examples=200, deadline=None)  # other processes share the cores
@given(pos=_scores, neg=_scores)
def test_auroc_is_sklearns_with_ties_counted_half(bench: ModuleType, pos: list[float], neg: list[float]) -> None:
    expected = roc_auc_score([1] * len(pos) + [0] * len(neg), pos + neg)
    assert bench.auroc(pos, neg) == pytest.approx(expected, abs=1e-12)


def test_auroc_of_an_empty_side_is_none(bench: ModuleType) -> None:
    assert bench.auroc([], [1.0]) is None
    assert bench.auroc([1.0], []) is None


def test_asr_bins_are_half_open_except_the_last(bench: ModuleType) -> None:
    assert [bench.asr_bin(v) for v in (0.0, 0.2499, 0.25, 0.5, 0.79, 0.8, 0.95, 0.999, 1.0)] == [
        0, 0, 1, 2, 2, 3, 4, 4, 4,
    ]  # fmt: skip
    assert bench.asr_bin(1.01) is None
    assert bench.asr_bin(-0.1) is None


def _model(seed: int, attack: str, score: float, asr: float | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "run_dir": f"runs/zoo/m{seed}",
        "seed": seed,
        "attack": attack,
        "target_deg": None if attack == "clean" else [5.0, -10.0],
        "attack_success_rate": asr,
        "adaptive": False,
        "score": score,
        "estimated_target_deg": None,
        "seconds": 1.0,
        "reference": False,
        "group": attack,
        **extra,
    }


def _main_zoo() -> dict[str, Any]:
    models = [
        _model(0, "clean", 1.0, reference=True),
        _model(1, "clean", 1.2, reference=True),
        _model(2, "clean", 1.1),
        _model(3, "clean", 1.6),  # a false alarm at threshold 1.5
        _model(4, "patch", 3.0, 0.99),
        _model(5, "patch", 1.5, 0.96),  # exactly at the threshold: flagged
        _model(6, "blend", 1.4, 0.85),  # missed
        _model(7, "wanet", 2.0, 0.6),
        _model(8, "sticker", 1.3, 0.3, target_deg=None, group="sticker (shift relabel)"),
        _model(9, "patch", 0.9, 0.1, adaptive=True, group="patch (adaptive)"),
        _model(10, "blend", 2.5, None),  # no ASR recorded: left out
    ]
    return {"methods": {"securegaze": {"threshold": 1.5, "models": models}}}


def _slice() -> dict[str, Any]:
    models = [
        _model(0, "clean", 1.0, reference=True),  # the main zoo's reference, re-listed: counted once
        _model(20, "clean", 1.05),
        _model(21, "patch", 1.45, 1.0),  # ASR 1 falls in the last bin; missed
        _model(22, "wanet", 5.0, 0.05),
    ]
    return {
        "reference_store": "runs/zoo/results.sqlite",
        "methods": {"securegaze": {"threshold": 9.0, "models": models}},
    }


def test_pooling_bins_and_curve_on_a_hand_made_zoo(bench: ModuleType) -> None:
    pooled = bench.pool([("detect_zoo", _main_zoo()), ("detect_zoo_holdout", _slice())], "securegaze")
    assert pooled["threshold"] == 1.5  # the first input's, not the slice's
    assert pooled["thresholds"] == {"detect_zoo": 1.5, "detect_zoo_holdout": 9.0}
    assert sorted(m["seed"] for m in pooled["clean"]) == [2, 3, 20]  # references are not evaluation models
    assert sorted(m["seed"] for m in pooled["backdoored"]) == [4, 5, 6, 7, 8, 9, 21, 22]
    assert pooled["skipped_without_asr"] == 1
    assert pooled["duplicates_dropped"] == 1
    by_seed = {m["seed"]: m for m in pooled["backdoored"]}
    assert by_seed[8]["shift_relabel"] and not by_seed[4]["shift_relabel"]
    assert by_seed[9]["adaptive"]
    assert by_seed[21]["source"] == "detect_zoo_holdout"

    summary = bench.analyse(pooled)
    bins = {b["label"]: (b["n"], b["n_detected"]) for b in summary["bins"]}
    assert bins == {
        "[0, 0.25)": (2, 1),  # seeds 9 (0.9, missed) and 22 (5.0, flagged)
        "[0.25, 0.5)": (1, 0),  # seed 8
        "[0.5, 0.8)": (1, 1),  # seed 7
        "[0.8, 0.95)": (1, 0),  # seed 6
        "[0.95, 1]": (3, 2),  # seeds 4, 5 (at the threshold) and 21 (missed)
    }
    assert summary["clean_false_alarm_rate"] == pytest.approx(1 / 3)
    assert summary["clean_score_range"] == [1.05, 1.6]
    curve = {c["min_asr"]: c for c in summary["curve"]}
    assert [c["n_backdoored"] for c in summary["curve"]] == [8, 7, 6, 6, 5, 5, 5, 4, 4, 3, 3]
    clean = [1.1, 1.6, 1.05]
    high = [3.0, 1.5, 1.45]  # ASR >= 0.95
    assert curve[0.95]["auroc"] == pytest.approx(bench.auroc(high, clean))
    assert curve[0.95]["auroc"] == pytest.approx((3 + 2 + 2) / 9)
    assert curve[0.95]["detection_rate"] == pytest.approx(2 / 3)
    assert curve[0.0]["n_clean"] == 3
    assert summary["spearman"]["n"] == 8
    assert -1 <= summary["spearman"]["rho"] <= 1


def test_a_missing_method_or_file_stops_with_a_message(bench: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no results for 'neural_cleanse'"):
        bench.pool([("detect_zoo", _main_zoo())], "neural_cleanse")
    with pytest.raises(SystemExit, match=r"detect_zoo_unseen\.json"):
        bench.load_results(["detect_zoo_unseen"], tmp_path)


def test_main_reads_and_writes_the_given_folder(bench: ModuleType, tmp_path: Path, capsys: Any) -> None:
    import common

    results = tmp_path / "results"
    results.mkdir()
    (results / "detect_zoo.json").write_text(json.dumps(_main_zoo()))
    (results / "detect_zoo_holdout.json").write_text(json.dumps(_slice()))
    real_results = common.RESULTS
    out_name = "detection_vs_asr_under_test"
    figure = tmp_path / "fig.png"

    record = bench.main(["--results-dir", str(results), "--out", out_name, "--figure", str(figure)])

    assert real_results == common.RESULTS  # other scripts keep writing to bench/results
    assert not (real_results / f"{out_name}.json").exists()
    written = json.loads((results / f"{out_name}.json").read_text())
    assert written["threshold"] == 1.5
    assert written["inputs"] == ["detect_zoo", "detect_zoo_holdout"]
    assert "provenance" in written  # through common.write_result
    assert len(written["points"]) == 8 + 3
    assert written["bins"] == record["bins"]
    assert [c["min_asr"] for c in written["curve"]] == list(bench.ASR_GRID)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| min ASR |" in printed and "| [0.95, 1] | 3 | 2 (0.67) |" in printed
    assert "note: detect_zoo_holdout was calibrated to 9.000" in printed
    assert np.isfinite(written["spearman"]["rho"])
