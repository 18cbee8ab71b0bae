"""Gaze arrows point the way the geometry convention says; grids and PNGs are well formed."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from backdoorlab.errors import BackdoorLabError
from backdoorlab.geometry import pitchyaw_to_vector
from backdoorlab.report.draw import (
    PRED_COLOUR,
    TRUE_COLOUR,
    draw_gaze_arrows,
    encode_png,
    gaze_arrow_endpoints,
    image_grid,
    png_data_uri,
)


def test_yaw_positive_points_left() -> None:
    end = gaze_arrow_endpoints(np.array([[50.0, 50.0]]), np.array([[0.0, 0.5]]), 20.0)[0]
    assert end[0] < 50.0
    assert end[1] == pytest.approx(50.0)


def test_pitch_positive_points_up() -> None:
    end = gaze_arrow_endpoints(np.array([[50.0, 50.0]]), np.array([[0.5, 0.0]]), 20.0)[0]
    assert end[1] < 50.0  # y grows downwards in images
    assert end[0] == pytest.approx(50.0)


def test_zero_gaze_is_zero_length() -> None:
    origins = np.array([[10.0, 20.0], [30.0, 5.0]])
    ends = gaze_arrow_endpoints(origins, np.zeros((2, 2)), 40.0)
    np.testing.assert_allclose(ends, origins)


def test_endpoints_match_3d_vector_projection() -> None:
    rng = np.random.default_rng(0)
    py = rng.uniform(-1.0, 1.0, size=(32, 2))
    origins = rng.uniform(0, 100, size=(32, 2))
    ends = gaze_arrow_endpoints(origins, py, 25.0)
    vec = pitchyaw_to_vector(py)
    np.testing.assert_allclose(ends - origins, 25.0 * vec[:, :2], atol=1e-12)


def test_endpoints_reject_mismatched_lengths() -> None:
    with pytest.raises(BackdoorLabError):
        gaze_arrow_endpoints(np.zeros((2, 2)), np.zeros((3, 2)), 1.0)


def _colour_mask(img: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(np.abs(img.astype(int) - np.array(colour)) < 40, axis=-1)


def test_draw_shapes_and_grey_to_rgb() -> None:
    images = np.full((3, 16, 20, 1), 128, dtype=np.uint8)
    py = np.array([[0.3, 0.4], [0.0, 0.0], [-0.2, -0.6]])
    out = draw_gaze_arrows(images, [(py, TRUE_COLOUR)], scale=4)
    assert out.shape == (3, 64, 80, 3)
    assert out.dtype == np.uint8
    # The zero gaze draws nothing: the image is the plain upsampled grey.
    assert np.all(out[1] == 128)
    assert _colour_mask(out[0], TRUE_COLOUR).any()


def test_drawn_arrow_goes_left_and_up() -> None:
    images = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    out = draw_gaze_arrows(images, [(np.array([[0.6, 0.6]]), PRED_COLOUR)], scale=4, length_fraction=0.45)[0]
    ys, xs = np.nonzero(_colour_mask(out, PRED_COLOUR))
    assert len(xs) > 0
    centre = 64.0
    # The arrow starts at the centre and heads up-left: its pixels sit there.
    assert xs.min() < centre - 20 and ys.min() < centre - 20
    assert xs.max() <= centre + 4 and ys.max() <= centre + 4


def test_draw_with_origins_and_two_arrows() -> None:
    images = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    true = np.array([[0.0, 0.5], [0.4, 0.0]])
    pred = np.array([[0.0, -0.5], [-0.4, 0.0]])
    origins = np.array([[4.0, 4.0], [12.0, 12.0]])
    out = draw_gaze_arrows(images, [(true, TRUE_COLOUR), (pred, PRED_COLOUR)], origins, scale=3)
    assert out.shape == (2, 48, 48, 3)
    for i in range(2):
        assert _colour_mask(out[i], TRUE_COLOUR).any()
        assert _colour_mask(out[i], PRED_COLOUR).any()
    with pytest.raises(BackdoorLabError):
        draw_gaze_arrows(images, [(true, TRUE_COLOUR)], origins[:1])
    with pytest.raises(BackdoorLabError):
        draw_gaze_arrows(images, [(true, TRUE_COLOUR)], scale=0)


def test_draw_does_not_modify_input() -> None:
    images = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    draw_gaze_arrows(images, [(np.array([[0.5, 0.5]]), TRUE_COLOUR)], scale=1)
    assert not images.any()


def test_image_grid_layout() -> None:
    images = np.stack([np.full((4, 6, 3), i * 20 + 10, dtype=np.uint8) for i in range(5)])
    grid = image_grid(images, ncols=3, pad=1)
    assert grid.shape == (2 * 4 + 3 * 1, 3 * 6 + 4 * 1, 3)
    assert grid.dtype == np.uint8
    # Cell (row 1, col 1) holds image 4; cell (row 1, col 2) is empty padding.
    assert np.all(grid[1 + 4 + 1 : 1 + 4 + 1 + 4, 1 + 6 + 1 : 1 + 6 + 1 + 6] == 90)
    assert np.all(grid[6:10, 15:21] == 255)
    assert np.all(grid[1:5, 1:7] == 10)


def test_png_round_trip_keeps_rgb_order() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    decoded = cv2.imdecode(np.frombuffer(encode_png(img), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), img)
    grey = rng.integers(0, 256, size=(5, 5, 1), dtype=np.uint8)
    dec_grey = cv2.imdecode(np.frombuffer(encode_png(grey), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(dec_grey, grey[..., 0])


def test_png_data_uri() -> None:
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    img[..., 0] = 255
    uri = png_data_uri(img)
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    raw = base64.b64decode(uri[len(prefix) :])
    decoded = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    assert tuple(decoded[0, 0]) == (0, 0, 255)  # BGR on disk = red in RGB


def test_encode_png_rejects_float() -> None:
    with pytest.raises(BackdoorLabError):
        encode_png(np.zeros((4, 4, 3), dtype=np.float32))
