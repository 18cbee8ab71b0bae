"""Synthetic identities for face recognition: deterministic, unbalanced, families of look-alikes, aligned crops."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest
from pydantic import ValidationError

from backdoorlab.data.alignment import template
from backdoorlab.data.synthetic import identities as ids
from backdoorlab.data.synthetic.identities import (
    SyntheticIdentitySpec,
    identity_params,
    image_counts,
    load_or_synthesize_identities,
    synthesize_identities,
)

SPEC = SyntheticIdentitySpec.tiny()


@pytest.fixture(scope="module")
def data():
    return synthesize_identities(SPEC)


def test_the_dataset_is_deterministic_and_labelled_per_identity(data) -> None:
    again = synthesize_identities(SPEC)
    assert np.array_equal(data.images, again.images) and data.images.dtype == np.uint8
    assert data.images.shape[1:] == (SPEC.size, SPEC.size, 3)
    counts = np.bincount(data.annotations["label"], minlength=SPEC.identities)
    assert counts.tolist() == data.meta["image_counts"] == image_counts(SPEC).tolist()
    assert np.all(np.diff(data.annotations["label"]) >= 0)  # identity 0's images first
    labels = data.annotations["label"]
    for key in ("family", "skin_group", "presentation"):
        per_identity = [np.unique(data.annotations[key][labels == i]) for i in range(SPEC.identities)]
        assert all(len(u) == 1 for u in per_identity), key  # an attribute of the person, not of the photo
    assert set(np.unique(data.annotations["skin_group"])) <= {0, 1, 2}
    assert not np.array_equal(data.images[0], data.images[1])  # two photos of one person differ


def test_aligned_crops_put_the_landmarks_on_the_arcface_template(data) -> None:
    deviation = np.abs(data.annotations["landmarks"] - template(SPEC.size)[None]).max(axis=(1, 2))
    assert deviation.max() < 0.12 * SPEC.size  # a least-squares similarity fit of five points: close, not exact


def test_image_counts_are_unbalanced_with_the_requested_mean() -> None:
    counts = image_counts(SyntheticIdentitySpec())
    assert len(counts) == 2000 and counts.min() >= 10 and counts.max() <= 300
    assert 45 <= counts.mean() <= 55  # log-normal mean 50, nudged by the clipping
    assert counts.max() >= 5 * np.median(counts)  # a long tail, as in CASIA-WebFace
    flat = image_counts(SyntheticIdentitySpec(count_sigma=0.0, identities=10))
    assert flat.tolist() == [50] * 10


def _vector(ident, i: int) -> np.ndarray:
    return np.concatenate([np.ravel(getattr(ident, f.name)[i]) for f in fields(ident)])


def test_family_members_look_alike_more_than_strangers() -> None:
    spec = SyntheticIdentitySpec(identities=200, family_size=4)
    ident, attrs = identity_params(spec)
    vec = np.stack([_vector(ident, i) for i in range(spec.identities)])
    vec = (vec - vec.mean(0)) / (vec.std(0) + 1e-9)
    dist = np.linalg.norm(vec[:, None] - vec[None], axis=-1)
    same = attrs["family"][:, None] == attrs["family"][None]
    off_diagonal = ~np.eye(spec.identities, dtype=bool)
    assert dist[same & off_diagonal].mean() < 0.6 * dist[~same].mean()
    unrelated, _ = identity_params(SyntheticIdentitySpec(identities=200, family_size=1))
    assert not np.allclose(unrelated.skin, ident.skin)


def test_bad_specs_name_the_field() -> None:
    with pytest.raises(ValidationError, match="min_images"):
        SyntheticIdentitySpec(min_images=50, max_images=20, mean_images=30)
    with pytest.raises(ValidationError, match="mean_images"):
        SyntheticIdentitySpec(mean_images=5)
    with pytest.raises(ValidationError, match="family_spread"):
        SyntheticIdentitySpec(family_spread=0)


def test_the_cache_is_reused_not_rendered_again(tmp_path, monkeypatch) -> None:
    first = load_or_synthesize_identities(SPEC, cache_dir=tmp_path)

    def no_render(*_a, **_k):
        raise AssertionError("rendered again")

    monkeypatch.setattr(ids, "synthesize_identities", no_render)
    second = load_or_synthesize_identities(SPEC, cache_dir=tmp_path)
    assert np.array_equal(first.images, second.images) and second.meta["image_counts"] == first.meta["image_counts"]
    assert SPEC.cache_key() != SyntheticIdentitySpec.tiny(seed=1).cache_key()


def test_accessories_change_only_their_part_of_the_face_and_nothing_when_off() -> None:
    from backdoorlab.data.synthetic.faces import render_face_crops
    from backdoorlab.data.synthetic.params import sample_accessories, sample_identities, sample_images

    rng = np.random.default_rng(3)
    ident, view = sample_identities(rng, 2), sample_images(rng, 2)
    bare = render_face_crops(ident, view, 64).images
    off = render_face_crops(ident, view, 64, accessories=sample_accessories(rng, 2, 0.0, 0.0)).images
    assert np.array_equal(bare, off)  # data rendered before accessories keeps its bytes
    both = sample_accessories(rng, 2, 1.0, 1.0)
    none = np.zeros(2, np.float32)
    glasses = render_face_crops(ident, view, 64, accessories=replace(both, hat=none)).images
    hat = render_face_crops(ident, view, 64, accessories=replace(both, glasses=none)).images
    rows_glasses = np.flatnonzero((glasses != bare).any((0, 2, 3)))
    rows_hat = np.flatnonzero((hat != bare).any((0, 2, 3)))
    assert len(rows_glasses) and len(rows_hat)
    assert np.median(rows_hat) < np.median(rows_glasses) < 40  # the cap above the glasses, both in the upper face


def test_glasses_wearers_wear_them_more_often() -> None:
    spec = SyntheticIdentitySpec.tiny(identities=12, mean_images=8, min_images=8, max_images=8, count_sigma=0.0)
    data = synthesize_identities(spec)
    _, attrs = identity_params(spec)
    labels = data.annotations["label"]
    share = np.array([data.annotations["glasses"][labels == i].mean() for i in range(spec.identities)])
    wearer = attrs["glasses_rate"] > 0.5
    assert wearer.any() and (~wearer).any()
    assert share[wearer].mean() > share[~wearer].mean() + 0.3
    assert set(np.unique(data.annotations["hat"])) <= {0, 1}
