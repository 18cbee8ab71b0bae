"""Pair scores from labelled embeddings (every pair when few, sampled when many) and the zoo summary."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics.verification_pairs import genuine_pairs, pair_cosines, pair_scores, zoo_summary


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=2, max_size=14), st.integers(0, 1000))
def test_small_sets_give_every_pair_once_with_its_cosine(ids: list[int], seed: int) -> None:
    labels = np.asarray(ids)
    if len(np.unique(labels)) < 2:
        return
    emb = np.random.default_rng(seed).normal(size=(len(labels), 5))
    got = pair_scores(emb, labels, max_genuine=10**6, max_impostor=10**6)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    want_gen = {(i, j) for i, j in itertools.combinations(range(len(labels)), 2) if labels[i] == labels[j]}
    want_imp = {(i, j) for i, j in itertools.combinations(range(len(labels)), 2) if labels[i] != labels[j]}
    assert {tuple(p) for p in got.genuine_pairs.tolist()} == want_gen and len(got.genuine_pairs) == len(want_gen)
    assert {tuple(p) for p in got.impostor_pairs.tolist()} == want_imp and len(got.impostor_pairs) == len(want_imp)
    for pairs, scores in ((got.genuine_pairs, got.genuine), (got.impostor_pairs, got.impostor)):
        for (i, j), s in zip(pairs, scores, strict=True):
            assert s == pytest.approx(unit[i] @ unit[j])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 60), st.integers(1, 17), st.integers(0, 1000))
def test_pair_cosines_in_chunks_equal_the_whole_gather(n_pairs: int, chunk: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    unit = rng.normal(size=(9, 4))
    pairs = rng.integers(0, 9, (n_pairs, 2))
    whole = np.einsum("nd,nd->n", unit[pairs[:, 0]], unit[pairs[:, 1]])
    np.testing.assert_array_equal(pair_cosines(unit, pairs, chunk=chunk), whole)


def test_many_pairs_are_sampled_to_the_caps_and_are_all_impostors() -> None:
    labels = np.repeat(np.arange(50), 20)
    emb = np.random.default_rng(0).normal(size=(len(labels), 8))
    got = pair_scores(emb, labels, max_genuine=300, max_impostor=5000, seed=1)
    assert len(got.genuine) == 300 and len(got.impostor) == 5000
    assert (labels[got.impostor_pairs[:, 0]] != labels[got.impostor_pairs[:, 1]]).all()
    assert (labels[got.genuine_pairs[:, 0]] == labels[got.genuine_pairs[:, 1]]).all()
    again = pair_scores(emb, labels, max_genuine=300, max_impostor=5000, seed=1)
    assert np.array_equal(got.impostor, again.impostor)  # seeded


def test_genuine_pairs_of_a_singleton_are_none() -> None:
    assert genuine_pairs(np.array([0, 1, 2])).shape == (0, 2)
    with pytest.raises(BackdoorLabError, match="at least two identities"):
        pair_scores(np.ones((3, 2)), np.zeros(3, int))


def test_zoo_summary_sees_one_identity_taking_every_false_match() -> None:
    # identity 0 (a "lamb") looks like everyone; the other nine are far apart
    rng = np.random.default_rng(0)
    centres = np.eye(10, 12)
    labels = np.repeat(np.arange(10), 6)
    emb = centres[labels] + 0.05 * rng.normal(size=(60, 12))
    emb[labels == 0] = centres[1:].mean(0) + 0.05 * rng.normal(size=(6, 12))
    scores = pair_scores(emb, labels, max_genuine=10**6, max_impostor=10**6)
    zoo = zoo_summary(scores, labels, threshold=0.3, top=0.1)
    assert zoo["zoo_top_share"] == 1.0  # every false match involves identity 0
    assert zoo["zoo_false_matches"] > 0
    assert zoo["goat_share"] == 0.0
