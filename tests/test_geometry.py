"""The gaze/head-pose conventions of ``backdoorlab.geometry`` (see its module docstring)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from backdoorlab.geometry import (
    angular_error_deg,
    head_pose_from_rotation,
    pitchyaw_to_vector,
    rotation_matrices,
    rotation_matrix,
    vector_to_pitchyaw,
)

FAST = settings(max_examples=60, deadline=None)

# pitch strictly inside (-pi/2, pi/2) and yaw inside (-pi, pi): the domain where the
# (pitch, yaw) pair of a direction is unique.
pitch_st = st.floats(-1.5, 1.5)
yaw_st = st.floats(-3.1, 3.1)
pitchyaw_batch = st.integers(1, 8).flatmap(
    lambda n: st.tuples(arrays(np.float64, n, elements=pitch_st), arrays(np.float64, n, elements=yaw_st)).map(
        lambda t: np.stack(t, -1)
    )
)
angle_st = st.floats(-1.2, 1.2)


# ----------------------------------------------------------------- conventions
def test_straight_at_camera_is_minus_z() -> None:
    np.testing.assert_allclose(pitchyaw_to_vector(np.zeros(2)), [0.0, 0.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(vector_to_pitchyaw(np.array([0.0, 0.0, -1.0])), [0.0, 0.0], atol=1e-12)


@given(p=st.floats(0.05, 1.5))
@FAST
def test_looking_up_is_positive_pitch_and_negative_y(p: float) -> None:
    v = pitchyaw_to_vector(np.array([p, 0.0]))
    assert v[1] < 0  # image y grows downwards, so "up" is -y
    assert v[0] == pytest.approx(0.0, abs=1e-12)
    up = vector_to_pitchyaw(np.array([0.0, -math.sin(p), -math.cos(p)]))
    assert up[0] == pytest.approx(p) and up[0] > 0


@given(y=st.floats(0.05, 1.5))
@FAST
def test_looking_to_image_left_is_positive_yaw_and_negative_x(y: float) -> None:
    v = pitchyaw_to_vector(np.array([0.0, y]))
    assert v[0] < 0  # image x grows to the right
    assert v[1] == pytest.approx(0.0, abs=1e-12)
    left = vector_to_pitchyaw(np.array([-math.sin(y), 0.0, -math.cos(y)]))
    assert left[1] == pytest.approx(y) and left[1] > 0


def test_explicit_formula_from_docstring() -> None:
    p, y = 0.3, -0.7
    expected = [-math.cos(p) * math.sin(y), -math.sin(p), -math.cos(p) * math.cos(y)]
    np.testing.assert_allclose(pitchyaw_to_vector(np.array([p, y])), expected, atol=1e-12)


# ----------------------------------------------------------------- round trips
@given(py=pitchyaw_batch)
@FAST
def test_pitchyaw_vector_round_trip_numpy(py: np.ndarray) -> None:
    v = pitchyaw_to_vector(py)
    assert v.shape == (*py.shape[:-1], 3)
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(vector_to_pitchyaw(v), py, atol=1e-7)


@given(py=pitchyaw_batch)
@FAST
def test_numpy_and_torch_agree(py: np.ndarray) -> None:
    t = torch.from_numpy(py)
    v_np, v_t = pitchyaw_to_vector(py), pitchyaw_to_vector(t)
    assert isinstance(v_t, torch.Tensor)
    np.testing.assert_allclose(v_t.numpy(), v_np, atol=1e-12)
    back = vector_to_pitchyaw(v_t)
    assert isinstance(back, torch.Tensor)
    np.testing.assert_allclose(back.numpy(), vector_to_pitchyaw(v_np), atol=1e-9)
    np.testing.assert_allclose(back.numpy(), py, atol=1e-7)


@given(
    v=arrays(np.float64, 3, elements=st.floats(-10, 10)).filter(lambda v: np.linalg.norm(v) > 1e-3),
    scale=st.floats(0.01, 100),
)
@FAST
def test_vector_to_pitchyaw_ignores_length(v: np.ndarray, scale: float) -> None:
    a, b = vector_to_pitchyaw(v), vector_to_pitchyaw(v * scale)
    assert angular_error_deg(a, b) < 1e-4
    # and the direction comes back
    np.testing.assert_allclose(pitchyaw_to_vector(a), v / np.linalg.norm(v), atol=1e-9)


def test_leading_batch_dims_are_kept() -> None:
    py = np.zeros((2, 3, 2))
    assert pitchyaw_to_vector(py).shape == (2, 3, 3)
    assert vector_to_pitchyaw(np.ones((4, 1, 3))).shape == (4, 1, 2)
    assert angular_error_deg(py, py).shape == (2, 3)


# ------------------------------------------------------------- angular error
@given(a=pitchyaw_batch, data=st.data())
@FAST
def test_angular_error_symmetric_and_zero_on_identical(a: np.ndarray, data: st.DataObject) -> None:
    b = data.draw(arrays(np.float64, a.shape, elements=st.floats(-1.5, 1.5)))
    e_ab, e_ba = angular_error_deg(a, b), angular_error_deg(b, a)
    np.testing.assert_allclose(e_ab, e_ba, atol=1e-9)
    assert np.all(e_ab >= 0) and np.all(e_ab <= 180)
    np.testing.assert_allclose(angular_error_deg(a, a), 0.0, atol=1e-4)
    et = angular_error_deg(torch.from_numpy(a), torch.from_numpy(b))
    assert isinstance(et, torch.Tensor)
    np.testing.assert_allclose(et.numpy(), e_ab, atol=1e-6)


@given(d=st.floats(-1.5, 1.5))
@FAST
def test_angular_error_equals_known_angle(d: float) -> None:
    # a pure pitch or pure yaw difference from straight ahead is that angle
    assert angular_error_deg(np.array([d, 0.0]), np.zeros(2)) == pytest.approx(abs(math.degrees(d)), abs=1e-5)
    assert angular_error_deg(np.array([0.0, d]), np.zeros(2)) == pytest.approx(abs(math.degrees(d)), abs=1e-5)


def test_angular_error_simple_cases() -> None:
    # straight ahead vs straight up: 90 degrees; opposite yaws of 90 degrees: 180
    assert angular_error_deg(np.array([math.pi / 2, 0.0]), np.zeros(2)) == pytest.approx(90.0)
    assert angular_error_deg(np.array([0.0, math.pi / 2]), np.array([0.0, -math.pi / 2])) == pytest.approx(180.0)
    # yaw at non-zero pitch is foreshortened: the angle is smaller than the yaw difference
    e = angular_error_deg(np.array([1.0, 0.5]), np.array([1.0, 0.0]))
    assert 0 < e < math.degrees(0.5)


# ------------------------------------------------------------------ rotations
@given(yaw=angle_st, pitch=angle_st, roll=angle_st)
@FAST
def test_rotation_matrix_is_a_rotation(yaw: float, pitch: float, roll: float) -> None:
    r = rotation_matrix(yaw, pitch, roll)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)


@given(
    angles=st.integers(1, 6).flatmap(lambda n: arrays(np.float64, (n, 3), elements=angle_st)),
)
@FAST
def test_batched_rotation_matrices_equal_single(angles: np.ndarray) -> None:
    t = torch.from_numpy(angles)
    batched = rotation_matrices(t[:, 0], t[:, 1], t[:, 2])
    assert batched.shape == (len(angles), 3, 3)
    for i, (yaw, pitch, roll) in enumerate(angles):
        np.testing.assert_allclose(batched[i].numpy(), rotation_matrix(yaw, pitch, roll), atol=1e-12)


@given(yaw=angle_st, pitch=angle_st, roll=angle_st)
@FAST
def test_head_pose_from_rotation_recovers_pitch_yaw(yaw: float, pitch: float, roll: float) -> None:
    np.testing.assert_allclose(head_pose_from_rotation(rotation_matrix(yaw, pitch, 0.0)), [pitch, yaw], atol=1e-9)
    # roll spins the face about its forward axis, so it does not change where it points
    np.testing.assert_allclose(head_pose_from_rotation(rotation_matrix(yaw, pitch, roll)), [pitch, yaw], atol=1e-9)
    t = torch.tensor([yaw], dtype=torch.float64), torch.tensor([pitch], dtype=torch.float64)
    hp = head_pose_from_rotation(rotation_matrices(t[0], t[1], torch.zeros(1, dtype=torch.float64)))
    np.testing.assert_allclose(hp.numpy()[0], [pitch, yaw], atol=1e-9)


def test_head_rotation_signs_match_gaze_convention() -> None:
    # zero angles: the face (head -z axis) looks into the camera
    np.testing.assert_allclose(-rotation_matrix(0, 0, 0)[:, 2], [0, 0, -1])
    # positive yaw turns the face towards the image's left (x < 0); positive pitch tilts it up (y < 0)
    assert -rotation_matrix(0.4, 0.0, 0.0)[0, 2] < 0
    assert -rotation_matrix(0.0, 0.4, 0.0)[1, 2] < 0
