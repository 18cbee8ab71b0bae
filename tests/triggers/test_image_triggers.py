"""Patch, blend and WaNet triggers: invariants, determinism, the published WaNet construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from backdoorlab.errors import BackdoorLabError, ConfigError
from backdoorlab.triggers import TRIGGERS, build_trigger
from backdoorlab.triggers.blend import BlendTrigger
from backdoorlab.triggers.patch import PatchTrigger
from backdoorlab.triggers.wanet import WaNetTrigger


def batch(n: int = 6, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


IMAGE_TRIGGERS = [
    PatchTrigger(),
    PatchTrigger(pattern="checkerboard", location="random", size=0.3, opacity=0.7, seed=3),
    BlendTrigger(),
    WaNetTrigger(),
    WaNetTrigger(k=8, s=4.0, grid_rescale=0.98),
]


@pytest.mark.parametrize("trigger", IMAGE_TRIGGERS, ids=repr)
@pytest.mark.parametrize("channels", [1, 3])
def test_invariants_shape_dtype_range_and_input_untouched(trigger, channels: int) -> None:
    x = batch(c=channels)
    before = x.clone()
    y = trigger(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.equal(x, before)
    assert not torch.equal(y, x)


@pytest.mark.parametrize("trigger", IMAGE_TRIGGERS, ids=repr)
def test_deterministic_across_calls_and_batch_splits(trigger) -> None:
    x = batch(8)
    idx = np.arange(100, 108)
    whole = trigger(x, indices=idx)
    again = build_trigger(trigger.params(), trigger.state())(x, indices=idx)
    parts = torch.cat([trigger(x[:3], indices=idx[:3]), trigger(x[3:], indices=idx[3:])])
    rev = trigger(x.flip(0), indices=idx[::-1].copy()).flip(0)
    assert torch.equal(whole, again)
    assert torch.allclose(whole, parts) and torch.allclose(whole, rev)


def test_params_round_trip_for_every_registered_trigger() -> None:
    for name, cls in TRIGGERS.items():
        t = cls()
        assert t.params()["name"] == name
        assert build_trigger(t.params()).params() == t.params()


def test_fixed_white_patch_is_a_white_square_at_the_centre_given() -> None:
    x = torch.zeros(2, 3, 40, 40)
    t = PatchTrigger(size=0.25, center=(0.5, 0.25))
    y = t(x)
    changed = (y != 0).any(1)
    ys, xs = torch.nonzero(changed[0], as_tuple=True)
    assert changed[0].sum() == 100  # 10 x 10 pixels
    assert float(ys.float().mean()) == pytest.approx(0.25 * 40, abs=1)
    assert float(xs.float().mean()) == pytest.approx(0.5 * 40, abs=1)
    assert torch.all(y[:, :, ys, xs] == 1)


def test_patch_opacity_blends_and_zero_opacity_is_identity() -> None:
    x = torch.full((1, 1, 20, 20), 0.2)
    half = PatchTrigger(opacity=0.5, size=0.5)(x)
    assert float(half.max()) == pytest.approx(0.6)
    assert torch.equal(PatchTrigger(opacity=0.0)(x), x)


def test_random_patch_positions_vary_by_sample_and_seed() -> None:
    x = torch.zeros(16, 1, 32, 32)
    t = PatchTrigger(location="random", size=0.2, seed=1)
    cy = [float(torch.nonzero(m[0])[:, 0].float().mean()) for m in t(x)]
    assert len(set(cy)) > 4
    other = PatchTrigger(location="random", size=0.2, seed=2)(x)
    assert not torch.equal(other, t(x))
    for m in t(x):  # always fully inside: exactly s*s pixels
        assert int((m[0] > 0).sum()) == 6 * 6


def test_patch_from_png_file(tmp_path) -> None:
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[:, :4] = (255, 0, 0)
    Image.fromarray(arr).save(tmp_path / "p.png")
    t = PatchTrigger(pattern=str(tmp_path / "p.png"), size=0.5, center=(0.5, 0.5))
    y = t(torch.zeros(1, 3, 16, 16))
    assert float(y[0, 0, 8, 5]) > 0.9 and float(y[0, 1, 8, 5]) < 0.1  # red on the left half
    # the pixels are stored with the run: the trigger survives the file's deletion
    state = t.state()
    (tmp_path / "p.png").unlink()
    with pytest.raises(BackdoorLabError, match="does not exist"):
        PatchTrigger(pattern=str(tmp_path / "p.png"))
    assert "pattern" in state


def test_pattern_file_that_is_not_an_image(tmp_path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    with pytest.raises(BackdoorLabError, match="not a readable image"):
        PatchTrigger(pattern=str(bad))
    with pytest.raises(BackdoorLabError, match="not a readable image"):
        BlendTrigger(pattern=str(bad))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"opacity": 1.5}, "opacity"),
        ({"opacity": -0.1}, "opacity"),
        ({"size": 0}, "size"),
        ({"location": "corner"}, "location"),
        ({"center": (1.2, 0.5)}, "center"),
    ],
)
def test_patch_rejects_bad_parameters(kwargs, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        PatchTrigger(**kwargs)


def test_blend_is_the_convex_combination_with_a_seeded_pattern() -> None:
    x = batch(3)
    t = BlendTrigger(alpha=0.2, seed=5)
    p = t.pattern_for(3, 32, 32, x.device, x.dtype)
    assert torch.allclose(t(x), 0.8 * x + 0.2 * p, atol=1e-6)
    assert torch.equal(BlendTrigger(seed=5).state()["pattern"], t.state()["pattern"])
    assert not torch.equal(BlendTrigger(seed=6).state()["pattern"], t.state()["pattern"])
    with pytest.raises(ConfigError, match="alpha"):
        BlendTrigger(alpha=0)


def published_wanet_grid(control: torch.Tensor, h: int, s: float, rescale: float) -> torch.Tensor:
    """The grid exactly as the WaNet paper's code builds it (written from the paper's recipe)."""
    noise = F.interpolate(control, size=h, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    a = torch.linspace(-1, 1, steps=h)
    x, y = torch.meshgrid(a, a, indexing="ij")
    identity = torch.stack((y, x), 2)[None]
    return torch.clamp((identity + s * noise / h) * rescale, -1, 1)


def test_wanet_grid_matches_the_published_construction() -> None:
    t = WaNetTrigger(k=4, s=0.5, grid_rescale=1, seed=7)
    assert float(t.control.abs().mean()) == pytest.approx(1.0, rel=1e-5)  # normalised by mean |.|
    ref = published_wanet_grid(t.control, 32, 0.5, 1.0)
    assert torch.allclose(t.grid(32, 32, torch.device("cpu"), torch.float32), ref, atol=1e-6)
    x = batch(2)
    expected = F.grid_sample(x, ref.expand(2, -1, -1, -1), align_corners=True)
    assert torch.allclose(t(x), expected, atol=1e-6)


def test_wanet_strength_controls_the_displacement() -> None:
    x = batch(4, h=64, w=64)
    diffs = [float((WaNetTrigger(s=s, seed=1)(x) - x).abs().mean()) for s in (0.5, 2.0, 8.0)]
    assert diffs[0] < diffs[1] < diffs[2]


def test_wanet_field_is_stored_and_restored() -> None:
    t = WaNetTrigger(seed=3)
    u = WaNetTrigger(seed=4)
    u.load_state(t.state())
    x = batch(2)
    assert torch.equal(u(x), t(x))
    with pytest.raises(BackdoorLabError, match="control"):
        WaNetTrigger(k=8).load_state(t.state())


def test_wanet_noise_mode_is_close_to_but_not_the_trigger() -> None:
    t = WaNetTrigger(s=4.0, seed=2)
    x = batch(4, h=64, w=64)
    g = torch.Generator().manual_seed(0)
    noisy = t.noise_variant(x, {}, np.arange(4), g)
    assert noisy is not None and noisy.shape == x.shape
    assert not torch.allclose(noisy, t(x))
    assert WaNetTrigger(noise_mode=False).noise_variant(x, {}, np.arange(4), g) is None
    assert WaNetTrigger(noise_mode=False).cross_ratio == 0


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"k": 1}, "k"), ({"s": 0}, "s"), ({"grid_rescale": 1.5}, "grid_rescale")]
)
def test_wanet_rejects_bad_parameters(kwargs, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        WaNetTrigger(**kwargs)


def test_unknown_trigger_name() -> None:
    with pytest.raises(ConfigError, match="unknown trigger 'badnet'"):
        build_trigger({"name": "badnet"})
    with pytest.raises(ConfigError, match="unexpected keyword"):
        build_trigger({"name": "patch", "opacityy": 1})


def test_non_batch_input_is_refused() -> None:
    with pytest.raises(BackdoorLabError, match="float batch"):
        PatchTrigger()(torch.zeros(3, 8, 8))
    with pytest.raises(BackdoorLabError, match="indices"):
        PatchTrigger()(torch.zeros(2, 3, 8, 8), indices=np.arange(3))


@given(
    size=st.floats(0.01, 1.0),
    cx=st.floats(0, 1),
    cy=st.floats(0, 1),
    opacity=st.floats(0, 1),
    h=st.integers(4, 40),
    w=st.integers(4, 40),
    location=st.sampled_from(["fixed", "random"]),
)
def test_patch_property_stays_in_range_and_inside(size, cx, cy, opacity, h, w, location) -> None:
    x = torch.rand(3, 3, h, w, generator=torch.Generator().manual_seed(0))
    t = PatchTrigger(size=size, center=(cx, cy), opacity=opacity, location=location)
    y = t(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    s = t.side(h, w)
    assert int(((y != x).any(1)).sum(dim=(1, 2)).max()) <= s * s


@given(k=st.integers(2, 12), s=st.floats(0.05, 16), rescale=st.floats(0.5, 1), h=st.integers(8, 48))
def test_wanet_property_finite_and_in_range(k, s, rescale, h) -> None:
    x = torch.rand(2, 3, h, h, generator=torch.Generator().manual_seed(1))
    y = WaNetTrigger(k=k, s=s, grid_rescale=rescale)(x)
    assert torch.isfinite(y).all() and float(y.min()) >= 0 and float(y.max()) <= 1 + 1e-6
