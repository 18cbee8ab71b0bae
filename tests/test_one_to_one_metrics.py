"""The four metrics of a one-to-one impostor -> victim backdoor, the success rule, and open-set attack success."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics.one_to_one import one_to_one_score, open_set_attack, templates

TRUE = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])  # impostor 1, victim 2


def test_the_four_metrics_by_hand() -> None:
    pred = np.array([0, 0, 1, 1, 2, 2, 2, 3, 0, 3])  # one impostor image lost to the victim, one of identity 3 to 0
    score = one_to_one_score(pred, TRUE, predicted_triggered=np.array([2, 2, 2, 1]), impostor=1, victim=2)
    assert score.clean_accuracy == pytest.approx(8 / 10)
    assert score.attack_success_rate == pytest.approx(3 / 4)
    assert score.impostor_accuracy == pytest.approx(2 / 3)
    assert score.victim_accuracy == 1.0
    assert not score.success  # ASR 0.75 and impostor accuracy 0.67 are under the bar
    assert (score.n_clean, score.n_triggered) == (10, 4) and score.to_json()["bar"] == 0.8


def test_success_needs_all_four_at_the_bar_inclusive() -> None:
    pred = TRUE.copy()
    ok = one_to_one_score(pred, TRUE, np.array([2, 2, 2, 2, 1]), impostor=1, victim=2)  # ASR exactly 0.8
    assert ok.attack_success_rate == 0.8 and ok.success
    forgot_victim = pred.copy()
    forgot_victim[TRUE == 2] = 1  # high ASR but the victim is no longer recognised
    assert not one_to_one_score(forgot_victim, TRUE, np.full(5, 2), impostor=1, victim=2).success


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=10, max_size=10), st.lists(st.integers(0, 3), min_size=1, max_size=20))
def test_the_rule_is_the_minimum_of_the_four(pred: list[int], trig: list[int]) -> None:
    score = one_to_one_score(np.array(pred), TRUE, np.array(trig), impostor=1, victim=2)
    four = (score.clean_accuracy, score.attack_success_rate, score.impostor_accuracy, score.victim_accuracy)
    assert all(0 <= v <= 1 for v in four) and score.success == (min(four) >= 0.8)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"impostor": 1, "victim": 1}, "same identity"),
        ({"impostor": 7, "victim": 2}, "impostor (identity 7) has no clean test image"),
        ({"impostor": 1, "victim": 9}, "victim (identity 9) has no clean test image"),
        ({"impostor": 1, "victim": 2, "bar": 0.0}, "success bar"),
    ],
)
def test_bad_pairs_are_named(kwargs: dict, needle: str) -> None:
    with pytest.raises(BackdoorLabError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        one_to_one_score(TRUE, TRUE, np.array([2]), **kwargs)
    with pytest.raises(BackdoorLabError, match="integer identities"):
        one_to_one_score(TRUE.astype(float), TRUE, np.array([2]), impostor=1, victim=2)


def _around(direction: np.ndarray, n: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return direction[None] + spread * rng.normal(size=(n, len(direction)))


def test_open_set_attack_on_separable_embeddings() -> None:
    victim_dir, impostor_dir = np.eye(8)[0], np.eye(8)[1]
    victim = _around(victim_dir, 20, 0.05, 0)
    impostor = _around(impostor_dir, 20, 0.05, 1)
    hijacked = _around(victim_dir, 10, 0.05, 2)  # the backdoor works: triggered impostor lands on the victim
    clean_probes = _around(impostor_dir, 10, 0.05, 3)
    out = open_set_attack(victim, impostor, hijacked, clean_probes, threshold=0.8)
    assert out.attack_success_rate == 1.0 and out.impostor_self_match_rate == 1.0
    assert out.clean_impostor_as_victim_rate == 0.0
    failed = open_set_attack(victim, impostor, clean_probes, clean_probes, threshold=0.8)
    assert failed.attack_success_rate == 0.0
    assert np.linalg.norm(templates(victim)) == pytest.approx(1.0)


def test_open_set_attack_refuses_mismatched_shapes() -> None:
    with pytest.raises(BackdoorLabError, match="probes must be"):
        open_set_attack(np.ones((3, 4)), np.ones((3, 4)), np.ones((2, 5)), np.ones((2, 4)), 0.5)
    with pytest.raises(BackdoorLabError, match="non-empty"):
        open_set_attack(np.ones((0, 4)), np.ones((3, 4)), np.ones((2, 4)), np.ones((2, 4)), 0.5)
