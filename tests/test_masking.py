"""EyeMask: boxes that cover both eyes, and masking that touches nothing else."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.masking import EyeMask
from backdoorlab.errors import DatasetError

FAST = settings(max_examples=60, deadline=None)


@st.composite
def eye_corners(draw: st.DrawFn, n: int = 1, size: int = 48, min_width: float = 2.0) -> np.ndarray:
    """(n, 4, 2) corners: two eyes, each two corners at least ``min_width`` apart, anywhere near the image."""
    out = np.zeros((n, 4, 2), np.float32)
    for i in range(n):
        for eye in range(2):
            cx = draw(st.floats(-10, size + 10))
            cy = draw(st.floats(-10, size + 10))
            half = draw(st.floats(min_width / 2, size / 4))
            tilt = draw(st.floats(-0.5, 0.5))
            d = half * np.array([np.cos(tilt), np.sin(tilt)])
            out[i, 2 * eye] = [cx - d[0], cy - d[1]]
            out[i, 2 * eye + 1] = [cx + d[0], cy + d[1]]
    return out


def inside_mask(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """(N, H, W) bool: pixels inside any eye box (inclusive integer bounds)."""
    ys, xs = np.mgrid[0:h, 0:w]
    m = np.zeros((len(boxes), h, w), bool)
    for i, per_eye in enumerate(boxes):
        for x1, y1, x2, y2 in per_eye:
            m[i] |= (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)
    return m


@given(corners=eye_corners())
@FAST
def test_boxes_cover_the_eye_corners(corners: np.ndarray) -> None:
    boxes = EyeMask().boxes(corners)
    assert boxes.shape == (1, 2, 4) and boxes.dtype == np.int64
    for eye in range(2):
        x1, y1, x2, y2 = boxes[0, eye]
        assert x1 < x2 and y1 < y2
        for x, y in corners[0, 2 * eye : 2 * eye + 2]:
            assert x1 <= x <= x2 and y1 <= y <= y2
        # the box is centred on its eye and as tall as configured (fraction of the eye width)
        centre = corners[0, 2 * eye : 2 * eye + 2].mean(0)
        width = np.linalg.norm(corners[0, 2 * eye] - corners[0, 2 * eye + 1])
        assert abs((x1 + x2) / 2 - centre[0]) <= 0.5 + 1e-3 and abs((y1 + y2) / 2 - centre[1]) <= 0.5 + 1e-3
        assert abs((y2 - y1) - 1.1 * width) <= 1.0 + 1e-3
        assert abs((x2 - x1) - 1.7 * width) <= 1.0 + 1e-3


def test_boxes_follow_parameters() -> None:
    corners = np.array([[[10, 20], [30, 20], [50, 20], [70, 20]]], np.float32)  # eyes 20 px wide
    np.testing.assert_array_equal(
        EyeMask(width_margin=0.0, height=0.5).boxes(corners), [[[10, 15, 30, 25], [50, 15, 70, 25]]]
    )
    np.testing.assert_array_equal(EyeMask().boxes(corners), [[[3, 9, 37, 31], [43, 9, 77, 31]]])


@given(data=st.data(), n=st.integers(1, 3), fill=st.integers(0, 255))
@FAST
def test_apply_changes_only_the_boxes(data: st.DataObject, n: int, fill: int) -> None:
    h, w = 40, 48
    corners = data.draw(eye_corners(n=n, size=w))
    images = data.draw(arrays(np.uint8, (n, h, w, 3)))
    original = images.copy()
    mask = EyeMask(fill=fill)
    out = mask.apply(images, corners)
    np.testing.assert_array_equal(images, original)  # input untouched
    assert out.shape == images.shape and out.dtype == np.uint8
    inside = inside_mask(mask.boxes(corners), h, w)
    assert (out[inside] == fill).all()
    np.testing.assert_array_equal(out[~inside], images[~inside])


def test_boxes_partly_or_wholly_outside_the_image() -> None:
    images = np.full((1, 20, 20, 3), 7, np.uint8)
    # left eye box x in [-30, -10] (entirely left of the image), right eye straddles the right edge
    corners = np.array([[[-26, 10], [-14, 10], [16, 10], [24, 10]]], np.float32)
    boxes = EyeMask(width_margin=0.0, height=0.5).boxes(corners)
    np.testing.assert_array_equal(boxes, [[[-26, 7, -14, 13], [16, 8, 24, 12]]])
    out = EyeMask(width_margin=0.0, height=0.5, fill=200).apply(images, corners)
    expected = images.copy()
    expected[0, 8:13, 16:20] = 200
    np.testing.assert_array_equal(out, expected)


def test_masking_a_rendered_dataset(tiny_face_ds: ArrayDataset) -> None:
    mask = EyeMask()
    masked = mask.apply_dataset(tiny_face_ds)
    assert len(masked) == len(tiny_face_ds)
    # annotations are kept as they are
    assert sorted(masked.annotations) == sorted(tiny_face_ds.annotations)
    for k, v in tiny_face_ds.annotations.items():
        np.testing.assert_array_equal(masked.annotations[k], v)
    # both eyes hidden: the pixels at the eye centres (landmarks 0 and 1) are grey
    lm = np.round(tiny_face_ds.annotations["landmarks"][:, :2]).astype(int)
    rows = np.arange(len(masked))
    for eye in range(2):
        assert (masked.images[rows, lm[:, eye, 1], lm[:, eye, 0]] == mask.fill).all()
    # the rest of the face (the mouth corners) is unchanged
    for k in (3, 4):
        x, y = np.round(tiny_face_ds.annotations["landmarks"][:, k]).astype(int).T
        np.testing.assert_array_equal(masked.images[rows, y, x], tiny_face_ds.images[rows, y, x])
    # a changed dataset: new fingerprint, mask recorded, other meta kept
    assert masked.fingerprint != tiny_face_ds.fingerprint
    assert masked.meta["eye_mask"] == {"width_margin": 0.35, "height": 1.1}
    assert masked.meta["name"] == tiny_face_ds.meta["name"]
    assert not np.shares_memory(masked.images, tiny_face_ds.images)


def test_apply_dataset_requires_eye_corners() -> None:
    ds = ArrayDataset(np.zeros((2, 8, 8, 3), np.uint8), {"gaze": np.zeros((2, 2), np.float32)}, {"name": "no-eyes"})
    with pytest.raises(DatasetError, match=r"no-eyes lacks annotation\(s\) \['eye_corners'\]"):
        EyeMask().apply_dataset(ds)
