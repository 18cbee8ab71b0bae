"""The Zoo on fabricated results stores (no training): who calibrates and who is scored, the attack groups,
the metrics against scikit-learn's, and verdicts kept in the store under the settings that made them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from backdoorlab.defenses.base import calibrated_threshold
from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.store import ResultsStore
from backdoorlab.experiments.zoo import (
    HEADLINE,
    OVERALL,
    MitigationRecord,
    Zoo,
    ZooModel,
    ZooRules,
    ZooVerdict,
    settings_match,
)

sys.path.insert(0, str(Path(__file__).parent))
from zoo_fixtures import add_run, run_config

# (run id, seed, trigger or "clean", relabel, target, adaptive, attack success rate)
RUNS = [
    ("c0", 0, "clean", None, None, False, None),
    ("c1", 1, "clean", None, None, False, None),
    ("c2", 2, "clean", None, None, False, None),
    ("c5", 5, "clean", None, None, False, None),
    ("c6", 6, "clean", None, None, False, None),
    ("p10", 10, "patch", "target", [5.0, 0.0], False, 0.99),
    ("p11", 11, "patch", "target", [0.0, 5.0], False, 0.97),
    ("b12", 12, "blend", "target", [0.0, 0.0], False, 0.14),
    ("s13", 13, "sticker", "shift", None, False, 0.90),
    ("w14", 14, "wanet", "target", [1.0, 1.0], True, 0.95),
    ("p0", 0, "patch", "target", [2.0, 2.0], False, None),  # backdoored with a reference seed: still evaluated
]
RULES = ZooRules(reference_seeds=(0, 1, 2))


def _store(path: Path, runs: list[tuple] = RUNS) -> ResultsStore:  # type: ignore[type-arg]
    store = ResultsStore(path)
    for run_id, seed, attack, relabel, target, adaptive, asr in runs:
        metrics = {"train_seconds": 100.0, **({} if asr is None else {"attack_success_rate": asr})}
        add_run(store, run_id, run_config(seed, attack, relabel, target, adaptive), metrics)
    _start_only(store, "still-running")
    return store


def _start_only(store: ResultsStore, run_id: str) -> None:
    store.start(run_id, "zoo", "task", run_id, run_config(3, "clean", None, None, False), "runs/x", "m", "0")


@pytest.fixture()
def zoo(tmp_path: Path) -> Zoo:
    _store(tmp_path / "zoo.sqlite")
    return Zoo.open(tmp_path / "zoo.sqlite", RULES)


def _ids(models: list[ZooModel]) -> list[str]:
    return [m.run_id for m in models]


def test_complete_runs_in_start_order_references_apart(zoo: Zoo) -> None:
    assert _ids(zoo.models) == [r[0] for r in RUNS]  # the running one is not part of the zoo
    assert _ids(zoo.references) == ["c0", "c1", "c2"]
    assert _ids(zoo.clean_evaluation) == ["c5", "c6"]
    assert _ids(zoo.evaluation) == ["c5", "c6", "p10", "p11", "b12", "s13", "w14", "p0"]
    p10 = zoo.models[5]
    assert (p10.attack, p10.relabel, p10.relabel_settings, p10.train_seconds) == (
        "patch", "target", {"name": "target", "target_deg": [5.0, 0.0]}, 100.0,
    )  # fmt: skip


def test_groups_put_unlearned_adaptive_and_other_relabel_backdoors_apart(zoo: Zoo) -> None:
    by_id = {m.run_id: zoo.group(m) for m in zoo.models}
    assert by_id["c5"] == "clean" and by_id["p10"] == "patch"
    assert by_id["b12"] == "blend (not learned, ASR < 0.5)"
    assert by_id["s13"] == "sticker (shift relabel)"
    assert by_id["w14"] == "wanet (adaptive)"
    assert by_id["p0"] == "patch (not learned, ASR < 0.5)"  # an unknown success rate is not a learned backdoor
    groups = {name: _ids(members) for name, members in zoo.groups().items()}
    assert list(groups)[:2] == [OVERALL, HEADLINE]
    assert groups[OVERALL] == ["p10", "p11", "b12", "s13", "w14", "p0"]
    assert groups[HEADLINE] == groups["patch"] == ["p10", "p11"]
    looser = Zoo(zoo.models, ZooRules(reference_seeds=(0, 1, 2), learned_asr=0.1))
    assert looser.group(zoo.models[7]) == "blend"


def _verdicts(zoo: Zoo, scores: dict[str, float]) -> dict[str, ZooVerdict]:
    return {m.run_id: ZooVerdict(score=scores[m.run_id], seconds=10.0, estimates={"t": 1}) for m in zoo.models}


SCORES = {"c0": 1.0, "c1": 1.2, "c2": 1.1, "c5": 1.15, "c6": 1.5, "p10": 3.0, "p11": 1.3,
          "b12": 0.9, "s13": 1.5, "w14": 2.0, "p0": 1.4}  # fmt: skip


def test_threshold_is_calibrated_on_the_references_only(zoo: Zoo) -> None:
    ev = zoo.evaluate(_verdicts(zoo, SCORES))
    assert ev.reference_scores == [1.0, 1.2, 1.1]
    assert ev.threshold == calibrated_threshold([1.0, 1.2, 1.1], 0.1) > 1.2
    strict = Zoo(zoo.models, ZooRules(reference_seeds=(0, 1, 2), max_false_alarm=0.4))
    assert strict.evaluate(_verdicts(zoo, SCORES)).threshold == calibrated_threshold([1.0, 1.2, 1.1], 0.4) < 1.2
    g = ev.groups[HEADLINE]
    assert (g.n_clean, g.n_backdoored) == (2, 2)  # references are never scored
    # flagged at the threshold (~1.21): c6 (false alarm), p10 and p11; c5 stays clean
    assert g.accuracy == 3 / 4
    assert g.auroc == 0.75  # p11 (1.3) is below c6 (1.5)
    assert [s.reference for s in ev.models] == [True, True, True] + [False] * 8
    assert ev.seconds_mean == 10.0 and ev.seconds_over_train_mean == pytest.approx(0.1)


def test_auroc_and_tpr_agree_with_scikit_learn(zoo: Zoo) -> None:
    rng = np.random.default_rng(0)
    for trial in range(20):
        scores = {k: float(v) for k, v in zip(SCORES, rng.integers(0, 4, len(SCORES)) / 2, strict=True)}  # ties
        ev = zoo.evaluate(_verdicts(zoo, scores))
        for name, members in zoo.groups().items():
            labels = [0] * len(zoo.clean_evaluation) + [1] * len(members)
            s = [scores[m.run_id] for m in zoo.clean_evaluation + members]
            assert ev.groups[name].auroc == pytest.approx(roc_auc_score(labels, s)), (trial, name)


def test_target_error_is_asked_for_detected_fixed_target_models_only(zoo: Zoo) -> None:
    asked: list[str] = []

    def error(model: ZooModel, verdict: ZooVerdict) -> float | None:
        asked.append(model.run_id)
        assert verdict.estimates == {"t": 1}
        return None if model.run_id == "p11" else 2.0

    ev = zoo.evaluate(_verdicts(zoo, SCORES), error)
    # above the threshold: p10, p11, s13 (shift: not asked), w14, p0 (the last two in OVERALL only)
    assert sorted(set(asked)) == ["p0", "p10", "p11", "w14"]
    assert (ev.groups[HEADLINE].target_error_mean, ev.groups[HEADLINE].n_detected_with_target) == (2.0, 1)
    assert ev.groups[OVERALL].n_detected_with_target == 3
    assert ev.groups["sticker (shift relabel)"].target_error_mean is None


def test_a_missing_verdict_or_role_is_one_clear_error(zoo: Zoo) -> None:
    verdicts = _verdicts(zoo, SCORES)
    del verdicts["p10"]
    with pytest.raises(BackdoorLabError, match=r"no verdict for 1 zoo model.*p10"):
        zoo.evaluate(verdicts)
    no_refs = Zoo(zoo.models, ZooRules(reference_seeds=(99,)))
    with pytest.raises(BackdoorLabError, match=r"no reference model \(clean, seed in 99\)"):
        no_refs.evaluate(_verdicts(zoo, SCORES))
    all_refs = Zoo(zoo.models, ZooRules(reference_seeds=(0, 1, 2, 5, 6)))
    with pytest.raises(BackdoorLabError, match="no clean evaluation model"):
        all_refs.evaluate(_verdicts(zoo, SCORES))


def test_references_from_another_store(tmp_path: Path) -> None:
    _store(tmp_path / "main.sqlite")
    held_out = [r for r in RUNS if r[2] != "clean" or r[1] >= 5]
    _store(tmp_path / "held.sqlite", held_out)
    zoo = Zoo.open(tmp_path / "held.sqlite", RULES, reference_store=tmp_path / "main.sqlite")
    assert _ids(zoo.references) == ["c0", "c1", "c2"]
    assert _ids(zoo.evaluation) == [r[0] for r in held_out]
    # a verdict on a reference is kept in the store the reference came from
    zoo.record_verdict(zoo.references[0], "m", ZooVerdict(score=1.0, settings={"a": 1}))
    assert [v["run_id"] for v in ResultsStore(tmp_path / "main.sqlite").verdicts()] == ["c0"]
    assert ResultsStore(tmp_path / "held.sqlite").verdicts() == []
    with pytest.raises(BackdoorLabError, match=r"main.sqlite have reference seeds \[0, 1, 2\]"):
        Zoo.open(tmp_path / "main.sqlite", RULES, reference_store=tmp_path / "held.sqlite")
    with pytest.raises(BackdoorLabError, match=r"held.sqlite has no complete clean model with a reference seed"):
        Zoo.open(tmp_path / "held.sqlite", RULES, reference_store=tmp_path / "held.sqlite")
    with pytest.raises(BackdoorLabError, match=r"nowhere.sqlite not found"):
        Zoo.open(tmp_path / "nowhere.sqlite")
    assert not (tmp_path / "nowhere.sqlite").exists()  # looking did not create it


def test_a_run_without_a_seed_is_named(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "s.sqlite")
    add_run(store, "odd", {"attack": None}, {})
    with pytest.raises(BackdoorLabError, match=r"run odd .*no integer 'seed'"):
        Zoo.open(tmp_path / "s.sqlite")


DEFAULTS = {"steps": 300, "scan_starts": 3, "width": 4, "device": "cpu"}
BEFORE = {"scan_starts": 0}


def test_a_stored_verdict_is_reused_only_if_every_setting_matches(zoo: Zoo) -> None:
    model = zoo.models[5]
    made_with = {"params": {**DEFAULTS, "device": "cuda"}, "n_clean": 256}
    zoo.record_verdict(model, "sg", ZooVerdict(score=2.5, seconds=3.0, estimates={"t": [1, 2]}, settings=made_with))
    current, defaults = {"params": DEFAULTS, "n_clean": 256}, {"params": DEFAULTS, "n_clean": 256}
    hit = zoo.cached_verdict(model, "sg", current, defaults, BEFORE)
    assert hit is not None and (hit.score, hit.seconds, hit.estimates) == (2.5, 3.0, {"t": [1, 2]})  # device ignored
    assert zoo.cached_verdict(model, "other", current, defaults, BEFORE) is None
    assert zoo.cached_verdict(zoo.models[6], "sg", current, defaults, BEFORE) is None
    for changed in ({"params": {**DEFAULTS, "steps": 100}, "n_clean": 256}, {"params": DEFAULTS, "n_clean": 128}):
        assert zoo.cached_verdict(model, "sg", changed, defaults, BEFORE) is None


def test_a_setting_added_later_counts_at_its_old_value_then_its_default(zoo: Zoo) -> None:
    model = zoo.models[5]
    old = {k: v for k, v in DEFAULTS.items() if k not in ("scan_starts", "width")}
    zoo.record_verdict(model, "sg", ZooVerdict(score=1.0, settings={"params": old}))
    defaults = {"params": DEFAULTS}
    assert zoo.cached_verdict(model, "sg", defaults, defaults, BEFORE) is None  # the scan changed what it does
    no_scan = {"params": {**DEFAULTS, "scan_starts": 0}}
    assert zoo.cached_verdict(model, "sg", no_scan, defaults, BEFORE) is not None
    assert zoo.cached_verdict(model, "sg", {"params": {**no_scan["params"], "width": 8}}, defaults, BEFORE) is None
    # the newest matching record wins
    zoo.record_verdict(model, "sg", ZooVerdict(score=2.0, settings=no_scan))
    hit = zoo.cached_verdict(model, "sg", no_scan, defaults, BEFORE)
    assert hit is not None and hit.score == 2.0


def test_settings_match_compares_nested_settings_leaf_by_leaf() -> None:
    current = {"detector": {"steps": 300, "device": "cpu"}, "fine_tune": {"epochs": 2}}
    assert settings_match({**current, "detector": {"steps": 300, "device": "cuda"}}, current, current)
    assert not settings_match({**current, "fine_tune": {"epochs": 3}}, current, current)
    assert settings_match({"detector": {"steps": 300}}, current, current)  # fine_tune missing: at its default
    assert not settings_match({"detector": {"steps": 300}}, current, current, {"epochs": 1})


def test_repairs_are_kept_and_reused_like_verdicts(zoo: Zoo) -> None:
    model = zoo.models[5]
    settings = {"params": {"epochs": 2, "device": "cpu"}, "n_clean": 256}
    record = MitigationRecord({"asr": 0.99}, {"asr": 0.01}, 12.0, settings, {"n_scored": 10})
    zoo.record_mitigation(model, "ft", record)
    assert zoo.cached_mitigation(model, "ft", settings) == record
    assert zoo.cached_mitigation(model, "ft", {**settings, "n_clean": 64}) is None
    assert zoo.cached_mitigation(model, "fp", settings) is None


def test_a_zoo_built_from_models_has_no_store_to_keep_verdicts_in(zoo: Zoo) -> None:
    bare = Zoo(zoo.models, RULES)
    with pytest.raises(BackdoorLabError, match="run c0 was not read from a results store"):
        bare.record_verdict(bare.models[0], "m", ZooVerdict(score=1.0))


def test_the_zoo_names_no_task() -> None:
    text = (Path(__file__).parents[1] / "src/backdoorlab/experiments/zoo.py").read_text().lower()
    store = (Path(__file__).parents[1] / "src/backdoorlab/experiments/store.py").read_text().lower()
    for word in ("gaze", "detection task", "recognition", "clean_error", "_deg"):
        assert word not in text and word not in store, word
