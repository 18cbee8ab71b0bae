"""Naming the culprit among three or more paired models: the one model in every flagged pair and in no agreeing one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backdoorlab.defenses.model_pairing import NO_CULPRIT, name_culprits
from backdoorlab.errors import BackdoorLabError

MODELS = ["a", "b", "c", "d"]


def flags_when(firing: list[set[str]], models: list[str]) -> dict[tuple[str, str], np.ndarray]:
    """Per input, the set of models whose backdoor fired; a pair disagrees when exactly one of its two fired."""
    return {(x, y): np.array([(x in f) != (y in f) for f in firing]) for x, y in itertools.combinations(models, 2)}


def test_one_firing_model_is_named_and_nothing_else_is() -> None:
    firing = [set(), {"a"}, {"b"}, {"c"}, {"a", "b"}]
    names = name_culprits(MODELS[:3], flags_when(firing, MODELS[:3]))
    # two of three firing look like the third alone disagreeing: the majority names the odd one out
    assert names.tolist() == [NO_CULPRIT, "a", "b", "c", "c"]


@given(st.lists(st.sampled_from([None, *MODELS]), min_size=1, max_size=30))
def test_with_four_models_a_single_backdoor_is_always_named(culprits: list[str | None]) -> None:
    firing = [set() if c is None else {c} for c in culprits]
    names = name_culprits(MODELS, flags_when(firing, MODELS))
    assert names.tolist() == [NO_CULPRIT if c is None else c for c in culprits]


def test_a_pattern_no_single_model_explains_names_nobody() -> None:
    flags = flags_when([set(), set()], MODELS[:3])
    flags[("a", "b")] = np.array([True, False])  # one pair alone disagrees
    assert name_culprits(MODELS[:3], flags).tolist() == [NO_CULPRIT, NO_CULPRIT]


def test_pairs_are_read_in_either_order() -> None:
    flags = {("b", "a"): np.array([True]), ("a", "c"): np.array([True]), ("c", "b"): np.array([False])}
    assert name_culprits(["a", "b", "c"], flags).tolist() == ["a"]


@pytest.mark.parametrize(
    ("models", "flags", "needle"),
    [
        (["a", "b"], {("a", "b"): np.array([True])}, "three or more"),
        (["a", "a", "b"], {}, "three or more"),
        (["a", "b", "c"], {("a", "b"): np.array([True]), ("a", "c"): np.array([True])}, "('b', 'c')"),
        (["a", "b", "c"], {("a", "b"): np.ones(2, bool), ("a", "c"): np.ones(3, bool), ("b", "c"): np.ones(2, bool)},
         "different numbers"),
    ],
)  # fmt: skip
def test_bad_inputs_are_refused(models: list[str], flags: dict, needle: str) -> None:
    with pytest.raises(BackdoorLabError) as err:
        name_culprits(models, flags)
    assert needle in str(err.value)
