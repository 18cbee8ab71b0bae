"""The face-recognition thesis's trigger set as built-in patterns: a dot square, and shapes pasted through a mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backdoorlab.triggers.face_patch import FacePatchTrigger
from backdoorlab.triggers.patch import BUILTIN_PATTERNS, SHAPED_PATTERNS, PatchTrigger, builtin_mask, builtin_pattern

GREY = 0.5


def _grey(b: int = 2, size: int = 56) -> torch.Tensor:
    return torch.full((b, 3, size, size), GREY)


def test_dot_square_is_white_with_one_black_centre_pixel() -> None:
    p = builtin_pattern("dot_square", 7, 7)[0]
    assert p[3, 3] == 0 and (p == 0).sum() == 1 and (p == 1).sum() == 48
    assert builtin_mask("dot_square", 7, 7) is None  # a full square


@pytest.mark.parametrize("name", SHAPED_PATTERNS)
def test_a_shape_mask_is_a_soft_blob_inside_its_square(name: str) -> None:
    m = builtin_mask(name, 32, 32)
    assert m is not None and m.shape == (1, 32, 32) and float(m.min()) >= 0 and float(m.max()) <= 1
    area = float(m.mean())
    assert 0.15 < area < 0.6, area  # a shape, neither a dot nor the whole square
    assert float(m[0, 0, 0]) == 0 and float(m[0, -1, -1]) == 0  # corners untouched
    soft = ((m > 0) & (m < 1)).sum().item()
    assert 0 < soft < 0.5 * (m > 0).sum().item()  # a one-pixel anti-aliased rim, not a blur


def test_the_flower_is_black_petals_about_a_heart() -> None:
    m = builtin_mask("flower", 64, 64)[0]
    assert m[32, 32] == 1  # heart
    assert m[32, 56] > 0.5 and m[4, 32] < 0.5  # a petal along +x (angle 0) reaching 0.85, -90 degrees only 0.55
    assert torch.equal(builtin_pattern("flower", 4, 4), torch.zeros(1, 4, 4))


def test_the_eyebrow_is_a_dark_arc_highest_in_its_middle() -> None:
    m = builtin_mask("eyebrow", 64, 64)[0]
    ys = torch.arange(64, dtype=torch.float32)

    def centre_row(col: int) -> float:
        return float((m[:, col] * ys).sum() / m[:, col].sum())

    assert centre_row(32) < centre_row(10) and centre_row(32) < centre_row(54)  # y points down: the middle is up
    assert m[:, 1].sum() < m[:, 32].sum()  # thinner at its ends
    colour = builtin_pattern("eyebrow", 2, 2)[:, 0, 0]
    assert colour.shape == (3,) and float(colour.max()) < 0.3


def test_the_mosaic_is_four_by_four_coloured_cells_whose_neighbours_differ() -> None:
    p = builtin_pattern("mosaic", 16, 16)
    assert p.shape == (3, 16, 16) and builtin_mask("mosaic", 16, 16) is None
    cells = p[:, ::4, ::4]  # one pixel per cell
    assert torch.equal(p, cells.repeat_interleave(4, 1).repeat_interleave(4, 2))  # flat cells
    assert (cells[:, 1:] != cells[:, :-1]).any(0).all() and (cells[:, :, 1:] != cells[:, :, :-1]).any(0).all()
    spread = cells.amax(0) - cells.amin(0)  # saturation: neither grey nor white nor black
    assert float(spread.min()) > 0.25


@pytest.mark.parametrize("location", ["fixed", "random"])
def test_a_shaped_patch_pastes_its_shape_only(location: str) -> None:
    trig = PatchTrigger(pattern="flower", size=0.3, location=location, center=(0.4, 0.6), seed=1)
    images = _grey()
    out = trig(images, indices=np.arange(2))
    changed = (out != images).any(1)  # (B, H, W)
    side = trig.side(56, 56)
    per_image = changed.flatten(1).sum(1)
    assert (per_image > 0.15 * side**2).all() and (per_image < 0.75 * side**2).all()
    assert float(out.min()) == 0.0  # black at the heart
    half = PatchTrigger(pattern="flower", size=0.3, location=location, center=(0.4, 0.6), seed=1, opacity=0.5)
    blended = half(images, indices=np.arange(2))
    assert float(blended.min()) == pytest.approx(GREY / 2)  # opacity scales the mask


def test_the_thesis_placement_is_the_cheek_at_forty_percent_width_sixty_percent_height() -> None:
    trig = PatchTrigger(pattern="checkerboard", size=0.2, center=(0.4, 0.6))
    placed = trig.placement(_grey(1), _grey(1), {}, np.arange(1))
    x0, y0, x1, y1 = placed.boxes[0].tolist()
    assert (x0 + x1) / 2 == pytest.approx(0.4 * 56, abs=1) and (y0 + y1) / 2 == pytest.approx(0.6 * 56, abs=1)


@pytest.mark.parametrize("name", BUILTIN_PATTERNS)
def test_every_built_in_pattern_keeps_the_batch_in_range_and_repeats(name: str) -> None:
    trig = PatchTrigger(pattern=name, size=0.25, location="random", seed=2)
    images = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    a, b = trig(images, indices=np.arange(3)), trig(images, indices=np.arange(3))
    assert torch.equal(a, b) and a.shape == images.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.equal(a, images)


def test_a_face_anchored_shape_follows_the_face_and_pastes_its_shape_only() -> None:
    from backdoorlab.data.instances import InstanceBatch

    boxes = torch.tensor([[8.0, 8.0, 48.0, 48.0]])
    landmarks = torch.tensor([[[20.0, 22.0], [36.0, 22.0], [28.0, 30.0], [22.0, 38.0], [34.0, 38.0]]])
    visible = torch.ones(1, 5, dtype=torch.bool)
    columns = {"boxes": boxes, "landmarks": landmarks, "visible": visible}
    ann = {"instances": InstanceBatch(torch.tensor([0, 1]), columns)}
    images = _grey(1)
    square = FacePatchTrigger(pattern="checkerboard", size=0.3, min_face_px=8)(images, ann, np.arange(1))
    shape = FacePatchTrigger(pattern="flower", size=0.3, min_face_px=8)(images, ann, np.arange(1))
    n_square, n_shape = int((square != images).any(1).sum()), int((shape != images).any(1).sum())
    assert 0 < n_shape < n_square
