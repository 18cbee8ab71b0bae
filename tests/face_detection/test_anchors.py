"""Priors: count, order and coverage of the 192-px canvas; the box and landmark coding round trips."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backdoorlab.tasks.face_detection.anchors import (
    AnchorSpec,
    decode,
    decode_landmarks,
    encode,
    encode_landmarks,
    make_priors,
    priors_to_corners,
)
from backdoorlab.tasks.face_detection.matching import box_iou

FAST = settings(max_examples=60, deadline=None)


@pytest.mark.parametrize(("size", "count"), [(160, 2 * (400 + 100 + 25)), (192, 1512), (320, 2 * (1600 + 400 + 100))])
def test_prior_count(size: int, count: int) -> None:
    spec = AnchorSpec()
    assert spec.num_priors(size, size) == count
    assert make_priors(spec, size, size).shape == (count, 4)


def test_prior_layout_is_level_then_row_major_cells_then_sizes() -> None:
    p = make_priors(AnchorSpec(), 192, 192)
    # level 0 (stride 8, 24x24 cells): cell (0, 0) holds the 10 then the 20 px prior, centred on pixels 0..7
    torch.testing.assert_close(p[0], torch.tensor([3.5, 3.5, 10, 10]))
    torch.testing.assert_close(p[1], torch.tensor([3.5, 3.5, 20, 20]))
    torch.testing.assert_close(p[2], torch.tensor([11.5, 3.5, 10, 10]))  # next cell along the row
    torch.testing.assert_close(p[2 * 24], torch.tensor([3.5, 11.5, 10, 10]))  # first cell of the second row
    # level 1 starts after 24*24*2 priors, level 2 after another 12*12*2
    torch.testing.assert_close(p[1152], torch.tensor([7.5, 7.5, 32, 32]))
    torch.testing.assert_close(p[1152 + 288 + 1], torch.tensor([15.5, 15.5, 160, 160]))
    torch.testing.assert_close(p[-1], torch.tensor([175.5, 175.5, 160, 160]))


def test_for_canvas_scales_the_sizes_only() -> None:
    spec = AnchorSpec.for_canvas(384)
    assert spec.strides == (8, 16, 32)
    assert spec.min_sizes == ((20, 40), (64, 128), (192, 320))
    with pytest.raises(ValueError, match="same, non-zero number"):
        AnchorSpec(min_sizes=((10,), (20, 40), (80, 160)))


def test_every_face_from_10_to_170_px_keeps_a_prior() -> None:
    """The justification of the default sizes: no face of the canvas's range is dropped by the 0.2 rule,
    and a face centred on a prior has one of about its size (IoU >= 0.5)."""
    g = torch.Generator().manual_seed(0)
    priors = make_priors(AnchorSpec(), 192, 192)
    n = 2000
    side = 10 + 160 * torch.rand(n, generator=g)
    aspect = 1 + 0.3 * torch.rand(n, generator=g)  # faces are a little taller than wide
    wh = torch.stack([side, side * aspect], 1).clamp(max=190)
    x1y1 = torch.rand(n, 2, generator=g) * (191 - wh)
    boxes = torch.cat([x1y1, x1y1 + wh], 1)
    best = box_iou(boxes, priors_to_corners(priors)).max(1).values
    assert best.min() >= 0.2, f"a {wh[best.argmin()].tolist()} face has best prior IoU {best.min():.3f}"
    sides = torch.arange(10, 171, dtype=torch.float32)[:, None]
    prior_sides = torch.tensor([s for level in AnchorSpec().min_sizes for s in level], dtype=torch.float32)
    concentric_iou = (torch.minimum(sides, prior_sides) / torch.maximum(sides, prior_sides)) ** 2
    assert concentric_iou.max(1).values.min() >= 0.5


# ------------------------------------------------------------- coding round trips
coords = st.floats(-50, 350, width=32)
sizes = st.floats(2, 300, width=32)


@st.composite
def boxes_and_priors(draw: st.DrawFn, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    box = [[draw(coords), draw(coords), draw(sizes), draw(sizes)] for _ in range(n)]
    prior = [[draw(coords), draw(coords), draw(sizes), draw(sizes)] for _ in range(n)]
    b = torch.tensor(box)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1), torch.tensor(prior)


@given(bp=boxes_and_priors())
@FAST
def test_box_encode_decode_round_trip(bp: tuple[torch.Tensor, torch.Tensor]) -> None:
    boxes, priors = bp
    torch.testing.assert_close(decode(encode(boxes, priors), priors), boxes, atol=1e-4, rtol=1e-5)


@given(bp=boxes_and_priors(), data=st.data())
@FAST
def test_landmark_encode_decode_round_trip(bp: tuple[torch.Tensor, torch.Tensor], data: st.DataObject) -> None:
    _, priors = bp
    points = torch.tensor(data.draw(st.lists(coords, min_size=60, max_size=60))).reshape(6, 5, 2)
    enc = encode_landmarks(points, priors)
    assert enc.shape == (6, 10)
    torch.testing.assert_close(decode_landmarks(enc, priors), points, atol=1e-4, rtol=1e-5)


@given(bp=boxes_and_priors(), data=st.data())
@FAST
def test_decode_then_encode_gives_the_deltas_back(bp: tuple[torch.Tensor, torch.Tensor], data: st.DataObject) -> None:
    _, priors = bp
    deltas = torch.tensor(data.draw(st.lists(st.floats(-5, 5, width=32), min_size=24, max_size=24))).reshape(6, 4)
    torch.testing.assert_close(encode(decode(deltas, priors), priors), deltas, atol=1e-4, rtol=1e-4)


def test_encoding_of_a_box_on_its_prior_is_zero_and_uses_the_variances() -> None:
    prior = torch.tensor([[50.0, 60.0, 20.0, 40.0]])
    assert encode(priors_to_corners(prior), prior).abs().max() < 1e-6
    shifted = torch.tensor([[42.0, 20.0, 62.0, 100.0]])  # centre +2 px in x (0.1 * 20 = one unit), height doubled
    torch.testing.assert_close(encode(shifted, prior), torch.tensor([[1.0, 0.0, 0.0, 5 * 0.6931472]]))
    lm = torch.tensor([[[52.0, 64.0]] * 5])
    torch.testing.assert_close(encode_landmarks(lm, prior), torch.tensor([[1.0, 1.0] * 5]))
