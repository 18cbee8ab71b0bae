"""Five-point alignment: Umeyama similarity fit, ArcFace template, aligned crops, rotation, damage."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backdoorlab.data.alignment import (
    ARCFACE_TEMPLATE_112,
    align_faces,
    alignment_matrices,
    rotation_degrees,
    similarity_transform,
    template,
    wrap_degrees,
)
from backdoorlab.metrics.alignment_damage import alignment_damage

FAST = settings(max_examples=60, deadline=None)
IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    """2x3 matrix: rotate by angle (clockwise on screen, y down), scale, translate."""
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]])


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def textured_image(size: int = 240, seed: int = 0) -> np.ndarray:
    """Smooth random colour texture: structure at every orientation, no flat regions."""
    noise = np.random.default_rng(seed).random((size, size, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 3.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (255 * smooth).astype(np.uint8)


# ------------------------------------------------------------------ similarity fit
@FAST
@given(
    st.floats(-179.0, 179.0),
    st.floats(0.2, 5.0),
    st.floats(-200.0, 200.0),
    st.floats(-200.0, 200.0),
    st.integers(2, 8),
    st.integers(0, 2**31 - 1),
)
def test_similarity_transform_recovers_a_known_similarity(
    angle: float, scale: float, tx: float, ty: float, n: int, seed: int
) -> None:
    src = np.random.default_rng(seed).uniform(-50, 150, (n, 2))
    if np.ptp(src, axis=0).max() < 1.0:
        return
    truth = similarity(angle, scale, tx, ty)
    fitted = similarity_transform(src, apply(truth, src))
    np.testing.assert_allclose(fitted, truth, atol=1e-6 * max(1.0, scale * 150 + 200))
    assert rotation_degrees(fitted) == pytest.approx(angle, abs=1e-6)


def test_least_squares_with_noise_beats_exact_fit_through_two_points() -> None:
    rng = np.random.default_rng(3)
    src = ARCFACE_TEMPLATE_112
    dst = apply(similarity(12.0, 1.7, 30.0, -4.0), src) + rng.normal(0, 0.5, src.shape)
    fitted = similarity_transform(src, dst)
    two_point = similarity_transform(src[:2], dst[:2])
    err = lambda m: ((apply(m, src) - dst) ** 2).sum()  # noqa: E731
    assert err(fitted) < err(two_point)
    assert rotation_degrees(fitted) == pytest.approx(12.0, abs=2.0)


def test_template_maps_to_itself_with_identity() -> None:
    np.testing.assert_allclose(similarity_transform(ARCFACE_TEMPLATE_112, ARCFACE_TEMPLATE_112), IDENTITY, atol=1e-12)
    np.testing.assert_allclose(alignment_matrices(template(112)[None])[0], IDENTITY, atol=1e-12)
    np.testing.assert_allclose(alignment_matrices(template(224)[None], size=224)[0], IDENTITY, atol=1e-12)
    np.testing.assert_allclose(template(224), 2 * ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(ARCFACE_TEMPLATE_112[0], [38.2946, 51.6963])
    np.testing.assert_allclose(ARCFACE_TEMPLATE_112[4], [70.7299, 92.2041])


def test_reflection_is_refused() -> None:
    src = ARCFACE_TEMPLATE_112
    mirrored = src * np.array([-1.0, 1.0])  # a mirror image: an affine map fits it exactly
    fitted = similarity_transform(src, mirrored)
    assert np.linalg.det(fitted[:, :2]) > 0  # a proper rotation, no reflection
    residual = np.abs(apply(fitted, src) - mirrored).max()
    assert residual > 5.0  # the mirrored set is not reproduced
    # and the scale shrinks, as the best rotation cannot line the mirrored points up
    assert math.sqrt(np.linalg.det(fitted[:, :2])) < 1.0


def test_similarity_transform_rejects_degenerate_input() -> None:
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE_112)
    with pytest.raises(ValueError, match="two"):
        similarity_transform(np.ones((1, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="both be"):
        similarity_transform(np.ones((5, 2)), np.ones((4, 2)))


# ------------------------------------------------------------------- rotation angle
def test_rotation_degrees_convention() -> None:
    assert rotation_degrees(similarity(30.0, 2.0, 5.0, 5.0)) == pytest.approx(30.0)
    # OpenCV's positive angle is counter-clockwise on screen: ours is clockwise
    assert rotation_degrees(cv2.getRotationMatrix2D((10.0, 10.0), 30.0, 1.0)) == pytest.approx(-30.0)
    assert rotation_degrees(similarity(180.0, 1.0, 0, 0)) == pytest.approx(180.0)
    np.testing.assert_allclose(rotation_degrees(np.stack([IDENTITY, similarity(-90, 1, 0, 0)])), [0.0, -90.0])
    assert wrap_degrees(190.0) == pytest.approx(-170.0) and wrap_degrees(-180.0) == 180.0


# ------------------------------------------------------------------- aligned crops
def test_crop_of_template_placed_face_is_the_image_region() -> None:
    image = textured_image()
    placed = similarity(0.0, 1.0, 50.0, 70.0)  # the template, unscaled, at offset (50, 70)
    crops = align_faces(image, apply(placed, ARCFACE_TEMPLATE_112)[None])
    assert crops.shape == (1, 112, 112, 3) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops[0], image[70:182, 50:162])


@pytest.mark.parametrize("angle", [-35.0, 12.0, 60.0])
def test_aligned_crop_of_a_rotated_image_undoes_the_rotation(angle: float) -> None:
    image = textured_image()
    face = apply(similarity(8.0, 1.1, 60.0, 50.0), ARCFACE_TEMPLATE_112)
    turn = cv2.getRotationMatrix2D((120.0, 120.0), angle, 1.0)  # counter-clockwise on screen by `angle`
    rotated = cv2.warpAffine(image, turn, (240, 240), flags=cv2.INTER_LINEAR)
    face_rotated = apply(turn, face)
    m_clean, m_rot = alignment_matrices(np.stack([face, face_rotated]))
    # the alignment of the rotated face turns back by exactly the applied rotation
    assert wrap_degrees(rotation_degrees(m_rot) - rotation_degrees(m_clean)) == pytest.approx(
        -rotation_degrees(turn), abs=1e-6
    )
    assert wrap_degrees(rotation_degrees(m_rot) - rotation_degrees(m_clean)) == pytest.approx(angle, abs=1e-6)
    # and the crops agree up to resampling (the face is well inside both images)
    clean_crop = align_faces(image, face[None])[0].astype(float)
    rot_crop = align_faces(rotated, face_rotated[None])[0].astype(float)
    assert np.abs(clean_crop - rot_crop)[8:-8, 8:-8].mean() < 3.0
    unaligned = align_faces(rotated, face[None])[0].astype(float)
    assert np.abs(clean_crop - unaligned)[8:-8, 8:-8].mean() > 3 * np.abs(clean_crop - rot_crop)[8:-8, 8:-8].mean()


def test_align_faces_batches_and_index() -> None:
    images = np.stack([textured_image(seed=0), textured_image(seed=1)])
    face = apply(similarity(0.0, 1.0, 50.0, 70.0), ARCFACE_TEMPLATE_112)
    crops = align_faces(images, np.stack([face, face]))  # face k from image k
    np.testing.assert_array_equal(crops[1], images[1, 70:182, 50:162])
    crops = align_faces(images, np.stack([face] * 3), image_index=np.array([1, 0, 1]))
    np.testing.assert_array_equal(crops[0], crops[2])
    np.testing.assert_array_equal(crops[1], images[0, 70:182, 50:162])
    assert align_faces(images[0], np.stack([face] * 2), size=56).shape == (2, 56, 56, 3)
    with pytest.raises(ValueError, match="image_index"):
        align_faces(images, np.stack([face] * 3))
    with pytest.raises(ValueError, match="image_index"):
        align_faces(images, np.stack([face]), image_index=np.array([2]))
    assert align_faces(images[0], np.zeros((0, 5, 2))).shape == (0, 112, 112, 3)


# -------------------------------------------------------------- alignment damage
def turn_points(points: np.ndarray, phi_deg: float) -> np.ndarray:
    """Rotate each face's points by phi (clockwise on screen) about their centroid, as LSA does."""
    c = points.mean(axis=1, keepdims=True)
    return (points - c) @ similarity(phi_deg, 1.0, 0.0, 0.0)[:, :2].T + c


def test_alignment_damage_of_turned_landmarks() -> None:
    image = textured_image()
    true = np.stack([apply(similarity(5.0, 0.9, 60.0, 60.0), ARCFACE_TEMPLATE_112)] * 3)
    phis = np.array([0.0, 2.0, -45.0])
    pred = np.stack([turn_points(true[k : k + 1], phi)[0] for k, phi in enumerate(phis)])
    damage = alignment_damage(image, pred, true)
    # the recogniser's crop is the true crop turned by -phi
    np.testing.assert_allclose(damage.rotation_deg, -phis, atol=1e-6)
    np.testing.assert_allclose(damage.scale_ratio, 1.0, atol=1e-9)
    assert damage.ssim[0] == pytest.approx(1.0)
    # a small turn already changes the crop; a large one decorrelates the texture
    assert 0.3 < damage.ssim[1] < 0.95 and damage.ssim[2] < 0.3
    assert damage.pred_crops.shape == damage.true_crops.shape == (3, 112, 112, 3)


def test_alignment_damage_shifted_and_scaled_landmarks() -> None:
    image = textured_image()
    true = apply(similarity(0.0, 1.0, 60.0, 60.0), ARCFACE_TEMPLATE_112)[None]
    pred = (true - true.mean(axis=1, keepdims=True)) * 1.25 + true.mean(axis=1, keepdims=True) + 3.0
    damage = alignment_damage(image, pred, true)
    assert damage.rotation_deg[0] == pytest.approx(0.0, abs=1e-9)
    assert damage.scale_ratio[0] == pytest.approx(1 / 1.25)
    empty = alignment_damage(image, np.zeros((0, 5, 2)), np.zeros((0, 5, 2)))
    assert empty.rotation_deg.shape == empty.ssim.shape == empty.scale_ratio.shape == (0,)
