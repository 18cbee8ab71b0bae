"""Embedding translators of model pairing: the closed form (Procrustes / Kabsch) and the learned affine map."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from backdoorlab.defenses.model_pairing import fit_affine, fit_procrustes
from backdoorlab.errors import BackdoorLabError


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 24), st.integers(0, 10_000))
def test_a_known_rotation_is_recovered_exactly_and_its_inverse_is_the_transpose(d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rot = random_rotation(d, rng)
    probe = unit(rng.normal(size=(4 * d + 8, d)))
    reference = probe @ rot.T  # row convention: e_ref = R e_probe
    tr = fit_procrustes(probe, reference)
    np.testing.assert_allclose(tr.weight, rot, atol=1e-9)
    np.testing.assert_allclose(tr.weight @ tr.weight.T, np.eye(d), atol=1e-9)
    back = fit_procrustes(reference, probe)
    np.testing.assert_allclose(back.weight, tr.weight.T, atol=1e-9)
    np.testing.assert_allclose(tr.scores(probe, reference), 1.0, atol=1e-9)


def test_the_sign_correction_keeps_a_proper_rotation_against_a_reflection() -> None:
    rng = np.random.default_rng(1)
    probe = unit(rng.normal(size=(50, 3)))
    mirror = np.diag([1.0, 1.0, -1.0])
    reference = probe @ mirror.T
    assert np.linalg.det(fit_procrustes(probe, reference, proper=False).weight) == pytest.approx(-1)
    proper = fit_procrustes(probe, reference)
    assert np.linalg.det(proper.weight) == pytest.approx(1)
    assert proper.scores(probe, reference).mean() < 0.999  # a rotation cannot undo a mirror


def test_procrustes_matches_scipys_kabsch_on_noisy_3d_points() -> None:
    rng = np.random.default_rng(2)
    rot = Rotation.random(random_state=3)
    probe = unit(rng.normal(size=(200, 3)))
    reference = unit(rot.apply(probe) + 0.05 * rng.normal(size=probe.shape))
    ours = fit_procrustes(probe, reference).weight
    theirs, _ = Rotation.align_vectors(unit(reference), probe)
    np.testing.assert_allclose(ours, theirs.as_matrix(), atol=1e-9)


def test_the_learned_affine_map_aligns_spaces_of_different_sizes() -> None:
    rng = np.random.default_rng(4)
    probe = unit(rng.normal(size=(3000, 16)))
    mix = rng.normal(size=(24, 16))
    reference = unit(probe @ mix.T + 0.3)
    held_p = unit(rng.normal(size=(500, 16)))
    held_r = unit(held_p @ mix.T + 0.3)
    tr = fit_affine(probe, reference, steps=300)
    assert tr.dims == (16, 24) and tr.method == "affine"
    assert tr.scores(held_p, held_r).mean() > 0.99
    assert len(tr.history) == 300 and tr.history[-1] < -0.99  # the mean negative cosine, batch by batch
    shuffled = held_r[rng.permutation(len(held_r))]
    assert tr.scores(held_p, shuffled).mean() < 0.5  # disagreeing pairs score low


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: fit_procrustes(np.ones((3, 4)), np.ones((3, 5))), "equal embedding sizes"),
        (lambda: fit_procrustes(np.ones((3, 4)), np.ones((2, 4))), "one pair per face"),
        (lambda: fit_affine(np.full((3, 4), np.nan), np.ones((3, 4))), "NaN"),
        (lambda: fit_procrustes(np.ones(4), np.ones(4)), r"\(N, D\) array"),
        (lambda: fit_procrustes(np.eye(4), np.eye(4))(np.ones((2, 3))), "4-d probe embeddings"),
    ],
)
def test_bad_inputs_are_refused_with_a_reason(call, needle: str) -> None:
    with pytest.raises(BackdoorLabError, match=needle):
        call()
