"""The face-anchored sticker: invariants, determinism, geometry that follows the face, shading, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import BackdoorLabError, ConfigError
from backdoorlab.triggers.sticker import FaceStickerTrigger, _boxes, _coverage

# no per-sample variation
STILL = dict(jitter_position=0.0, jitter_angle_deg=0.0, jitter_scale=0.0, jitter_brightness=0.0)
# ... and a 1-pixel edge ramp: the sampled coverage of an axis-aligned edge is then its
# exact box-filtered area, so centroids and areas come out exact (a sharper ramp is off
# by up to ~0.2 px)
EXACT = dict(STILL, edge_px=1.0)


def face_batch(ds: ArrayDataset) -> tuple[torch.Tensor, dict[str, torch.Tensor], np.ndarray]:
    idx = np.arange(len(ds))
    img, ann = ds.batch(idx)
    return img, ann, idx


def frontal_landmarks(
    n: int = 1, mid: tuple[float, float] = (32.0, 34.0), iod: float = 24.0, roll_deg: float = 0.0
) -> torch.Tensor:
    """(n, 5, 2) landmarks of an upright frontal face (eye-mouth distance = IOD), rolled about the eye midpoint."""
    unit = torch.tensor([[-0.5, 0.0], [0.5, 0.0], [0.0, 0.55], [-0.35, 1.0], [0.35, 1.0]], dtype=torch.float64)
    a = math.radians(roll_deg)
    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
    pts = (unit @ rot.T) * iod + torch.tensor(mid, dtype=torch.float64)
    return pts.float().expand(n, 5, 2).clone()


def grey(n: int = 1, value: float = 0.5, h: int = 64, w: int = 64, c: int = 3) -> torch.Tensor:
    return torch.full((n, c, h, w), value)


def change(out: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """(B, H, W) largest per-channel change."""
    return (out - img).abs().amax(1)


def centroid(weight: torch.Tensor) -> torch.Tensor:
    """(B, 2) weighted pixel-centre (x, y) of a (B, H, W) map."""
    _, h, w = weight.shape
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    s = weight.sum((1, 2))
    return torch.stack([(weight * xs).sum((1, 2)) / s, (weight * ys).sum((1, 2)) / s], -1)


def principal_angle_deg(weight: torch.Tensor) -> float:
    """Angle of the major axis of one (H, W) map's weighted pixel cloud, in (-90, 90]."""
    h, w = weight.shape
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    s = weight.sum()
    mx, my = (weight * xs).sum() / s, (weight * ys).sum() / s
    cxx = (weight * (xs - mx) ** 2).sum() / s
    cyy = (weight * (ys - my) ** 2).sum() / s
    cxy = (weight * (xs - mx) * (ys - my)).sum() / s
    return math.degrees(0.5 * math.atan2(2 * float(cxy), float(cxx - cyy)))


def angle_diff_deg(a: float, b: float) -> float:
    """Difference of two axis angles, modulo 180 degrees."""
    return abs((a - b + 90.0) % 180.0 - 90.0)


# ------------------------------------------------------------------ invariants
def test_invariants_on_synthetic_faces(tiny_face_ds: ArrayDataset) -> None:
    img, ann, idx = face_batch(tiny_face_ds)
    before = img.clone()
    out = FaceStickerTrigger()(img, ann, idx)
    assert out.shape == img.shape and out.dtype == img.dtype and out.device == img.device
    assert torch.equal(img, before), "the input batch was modified"
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    changed = (change(out, img) > 1e-6).float().mean((1, 2))
    assert (changed > 0.005).all(), "every face gets a sticker"
    assert (changed < 0.15).all(), "the sticker is a small patch, not the whole image"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_keeps_dtype(dtype: torch.dtype) -> None:
    img = grey(2).to(dtype)
    out = FaceStickerTrigger()(img, {"landmarks": frontal_landmarks(2)}, np.arange(2))
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    assert (out != img).any()


def test_one_channel_and_grey_tape() -> None:
    lm = frontal_landmarks(1)
    out1 = FaceStickerTrigger(**STILL)(grey(1, c=1), {"landmarks": lm})
    assert out1.shape == (1, 1, 64, 64) and (out1 != 0.5).any()
    colour = torch.tensor([0.2, 0.5, 0.8])[None, :, None, None].expand(1, 3, 64, 64).clone()
    out3 = FaceStickerTrigger(**STILL)(colour, {"landmarks": lm})
    # at the sticker centre (full coverage) the tape has the same value in every channel
    cx, cy = 32, int(34 - 0.55 * 24)
    px = out3[0, :, cy, cx]
    assert torch.allclose(px, px[0].expand(3)), px


# ---------------------------------------------------------------- determinism
def test_deterministic_across_calls_and_batch_splits(tiny_face_ds: ArrayDataset) -> None:
    img, ann, idx = face_batch(tiny_face_ds)
    trig = FaceStickerTrigger(seed=3)
    full = trig(img, ann, idx)
    assert torch.equal(full, trig(img, ann, idx))
    order = np.random.default_rng(0).permutation(len(idx))
    for part in np.array_split(order, 3):
        sub_img, sub_ann = tiny_face_ds.batch(part)
        assert torch.equal(trig(sub_img, sub_ann, part), full[torch.as_tensor(part)])
    assert not torch.equal(FaceStickerTrigger(seed=4)(img, ann, idx), full)


def test_jitter_depends_on_the_dataset_index_only() -> None:
    img, lm = grey(4), frontal_landmarks(4)
    trig = FaceStickerTrigger(seed=1)
    out = trig(img, {"landmarks": lm}, np.array([5, 5, 6, 7]))
    assert torch.equal(out[0], out[1])
    assert not torch.equal(out[0], out[2]) and not torch.equal(out[2], out[3])
    still = FaceStickerTrigger(**STILL)(img, {"landmarks": lm}, np.array([5, 6, 7, 8]))
    assert all(torch.equal(still[0], still[i]) for i in range(1, 4))


# ------------------------------------------------------------------- geometry
def test_forehead_sticker_above_the_eyes_and_between_them() -> None:
    img, lm = grey(1, h=60, w=72), frontal_landmarks(1, mid=(36.0, 34.0), iod=24.0)
    out = FaceStickerTrigger(**EXACT)(img, {"landmarks": lm})
    weight = change(out, img)
    cx, cy = centroid(weight)[0].tolist()
    assert cx == pytest.approx(36.0, abs=0.05)
    assert cy == pytest.approx(34.0 - 0.55 * 24, abs=0.05)
    # the tape is 0.9 x 0.3 IOD: coverage sums to its area
    assert float((weight / weight.max()).sum()) == pytest.approx(0.9 * 0.3 * 24**2, rel=0.02)


def test_forehead_on_synthetic_faces(tiny_face_ds: ArrayDataset) -> None:
    img, ann, idx = face_batch(tiny_face_ds)
    out = FaceStickerTrigger()(img, ann, idx)
    lm = ann["landmarks"]
    u = lm[:, 1] - lm[:, 0]
    rel = centroid(change(out, img)) - (lm[:, 0] + lm[:, 1]) / 2
    along = (rel * u).sum(-1) / u.norm(dim=-1)  # along the eye line
    across = (rel[:, 0] * u[:, 1] - rel[:, 1] * u[:, 0]) / u.norm(dim=-1)  # > 0: above the eye line
    iod = u.norm(dim=-1)
    assert (along.abs() < 0.3 * iod).all(), along / iod
    assert (across > 0.3 * iod).all(), across / iod
    assert (rel[:, 1] < 0).all(), "above the eye midpoint in the image"


@pytest.mark.parametrize(("anchor", "eye"), [("left_cheek", 0), ("right_cheek", 1)])
def test_cheek_sticker_below_its_eye(anchor: str, eye: int) -> None:
    img, lm = grey(1), frontal_landmarks(1)
    out = FaceStickerTrigger(anchor=anchor, width=0.4, **EXACT)(img, {"landmarks": lm})
    cx, cy = centroid(change(out, img))[0].tolist()
    ex, ey = lm[0, eye].tolist()
    assert cx == pytest.approx(ex, abs=0.05)
    assert cy == pytest.approx(ey + 0.55 * 24, abs=0.05)


def test_cheeks_on_synthetic_faces(tiny_face_ds: ArrayDataset) -> None:
    img, ann, idx = face_batch(tiny_face_ds)
    lm = ann["landmarks"]
    for anchor, eye in (("left_cheek", 0), ("right_cheek", 1)):
        out = FaceStickerTrigger(anchor=anchor, width=0.4)(img, ann, idx)
        c = centroid(change(out, img))
        iod = (lm[:, 1] - lm[:, 0]).norm(dim=-1)
        assert (c[:, 1] > lm[:, eye, 1] + 0.3 * iod).all(), "below the eye"
        assert ((c[:, 0] - lm[:, eye, 0]).abs() < 0.25 * iod).all(), "under that eye"


@pytest.mark.parametrize("roll", [25.0, -40.0, 90.0])
def test_follows_head_roll(roll: float) -> None:
    img = grey(2)
    lm = torch.cat([frontal_landmarks(1), frontal_landmarks(1, roll_deg=roll)])
    out = FaceStickerTrigger(**STILL)(img, {"landmarks": lm})
    weight = change(out, img)
    assert abs(principal_angle_deg(weight[0])) < 1.0
    assert angle_diff_deg(principal_angle_deg(weight[1]), roll) < 2.0
    # the centre turns with the face about the eye midpoint
    a = math.radians(roll)
    expected = torch.tensor([32.0 + 0.55 * 24 * math.sin(a), 34.0 - 0.55 * 24 * math.cos(a)])
    assert torch.allclose(centroid(weight)[1], expected, atol=0.2)


def test_scales_with_the_inter_ocular_distance() -> None:
    img = grey(2)
    lm = torch.cat([frontal_landmarks(1, iod=12.0), frontal_landmarks(1, iod=24.0)])
    weight = change(FaceStickerTrigger(**EXACT)(img, {"landmarks": lm}), img)
    area = (weight / weight.amax((1, 2), keepdim=True)).sum((1, 2))
    assert area.tolist() == pytest.approx([0.27 * 12**2, 0.27 * 24**2], rel=0.01)


def test_yaw_and_pitch_foreshorten() -> None:
    """Yaw shortens the eye line (sticker narrower); pitch shortens the eye-mouth line (sticker flatter)."""
    img = grey(3)
    lm = frontal_landmarks(3)
    lm[1, :2, 0] = 32.0 + (lm[1, :2, 0] - 32.0) * 0.5  # eyes closer together, mouth unchanged
    lm[2, 3:, 1] = 34.0 + (lm[2, 3:, 1] - 34.0) * 0.5  # mouth closer to the eye line
    weight = change(FaceStickerTrigger(**STILL)(img, {"landmarks": lm}), img)
    binary = weight > 0.5 * weight.amax((1, 2), keepdim=True)
    widths = binary.any(1).sum(1).float()  # columns touched
    heights = binary.any(2).sum(1).float()  # rows touched
    assert widths[1] == pytest.approx(widths[0] / 2, abs=1) and heights[1] == pytest.approx(heights[0], abs=1)
    assert heights[2] == pytest.approx(heights[0] / 2, abs=1) and widths[2] == pytest.approx(widths[0], abs=1)


def test_non_square_images_use_the_right_axes() -> None:
    img = grey(1, h=40, w=90)
    lm = frontal_landmarks(1, mid=(70.0, 25.0), iod=20.0)
    cx, cy = centroid(change(FaceStickerTrigger(**EXACT)(img, {"landmarks": lm}), img))[0].tolist()
    assert cx == pytest.approx(70.0, abs=0.05) and cy == pytest.approx(25.0 - 11.0, abs=0.05)


def test_eye_corners_fallback(tiny_face_ds: ArrayDataset) -> None:
    img, ann, idx = face_batch(tiny_face_ds)
    trig = FaceStickerTrigger(**STILL)
    with_lm = trig(img, ann, idx)
    corners_only = trig(img, {"eye_corners": ann["eye_corners"]}, idx)
    assert torch.isfinite(corners_only).all() and not torch.equal(corners_only, img)
    shift = (centroid(change(corners_only, img)) - centroid(change(with_lm, img))).norm(dim=-1)
    assert (shift < 1.5).all(), shift  # same place up to the down axis (perpendicular vs towards the mouth)


def test_eye_corners_frame_is_the_eye_line_turned_down() -> None:
    img, lm = grey(1), frontal_landmarks(1)
    c = lm[:, :2, None, :] + torch.tensor([[-2.0, 0.0], [2.0, 0.0]])  # corners 2 px either side of each centre
    ec = c.reshape(1, 4, 2)
    trig = FaceStickerTrigger(**STILL)
    # a frontal face with eye-mouth distance = IOD: the same sticker from either annotation
    assert torch.allclose(trig(img, {"eye_corners": ec}), trig(img, {"landmarks": lm}), atol=1e-5)


@pytest.mark.parametrize("bad_mouth", [(float("nan"), 1.0), (0.0, 0.0), (3.0, 0.0)])
def test_unusable_mouth_points_fall_back_to_the_perpendicular(bad_mouth: tuple[float, float]) -> None:
    img, lm = grey(1), frontal_landmarks(1)
    bad = lm.clone()
    bad[0, 3:] = torch.tensor(bad_mouth) * 24 + torch.tensor([32.0, 34.0])  # both corners at that point
    trig = FaceStickerTrigger(**STILL)
    assert torch.allclose(trig(img, {"landmarks": bad}), trig(img, {"landmarks": lm}), atol=1e-5)


# -------------------------------------------------------------------- shading
def test_shading_follows_the_image_brightness() -> None:
    cx, cy = 32, int(34 - 0.55 * 24)
    lm = frontal_landmarks(2)
    img = torch.cat([grey(1, 0.6), grey(1, 0.3)])
    shaded = FaceStickerTrigger(albedo=0.9, **STILL)(img, {"landmarks": lm})[:, 0, cy, cx]
    assert shaded[0] > shaded[1]
    expected = [0.9 * min(max(v / 0.55, 0.2), 1.5) for v in (0.6, 0.3)]
    assert shaded.tolist() == pytest.approx([min(e, 1.0) for e in expected], abs=1e-5)
    flat = FaceStickerTrigger(albedo=0.9, shading=False, **STILL)(img, {"landmarks": lm})[:, 0, cy, cx]
    assert flat.tolist() == pytest.approx([0.9, 0.9], abs=1e-6)


def test_brightness_jitter_stays_in_its_range() -> None:
    n = 16
    cx, cy = 32, int(34 - 0.55 * 24)
    jitter = dict(STILL, jitter_brightness=0.1)
    tape = FaceStickerTrigger(albedo=0.8, shading=False, **jitter)(grey(n), {"landmarks": frontal_landmarks(n)})
    values = tape[:, 0, cy, cx]
    assert values.min() >= 0.8 * 0.9 - 1e-6 and values.max() <= 0.8 * 1.1 + 1e-6
    assert values.std() > 0.01


# --------------------------------------------------------------------- errors
@pytest.mark.parametrize("annotations", [{}, {"gaze": torch.zeros(1, 2)}])
def test_missing_annotations_are_named(annotations: dict[str, torch.Tensor]) -> None:
    with pytest.raises(BackdoorLabError, match=r"landmarks.*eye_corners"):
        FaceStickerTrigger()(grey(1), annotations)


@pytest.mark.parametrize(
    ("key", "value"),
    [("landmarks", torch.zeros(1, 4, 2)), ("eye_corners", torch.zeros(1, 5, 2)), ("landmarks", torch.zeros(2, 5, 2))],
)
def test_misshapen_annotations_are_named(key: str, value: torch.Tensor) -> None:
    with pytest.raises(BackdoorLabError, match=key):
        FaceStickerTrigger()(grey(1), {key: value})


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("anchor", "chin"),
        ("width", 0.0),
        ("width", 3.5),
        ("height", -0.1),
        ("height", float("nan")),
        ("offset", -0.2),
        ("albedo", 0.0),
        ("albedo", 1.01),
        ("shading", 1),
        ("skin_reference", 0.0),
        ("jitter_position", -0.01),
        ("jitter_angle_deg", -1.0),
        ("jitter_scale", 1.0),
        ("jitter_brightness", -0.5),
        ("edge_px", 0.0),
        ("edge_px", "wide"),
        ("seed", 1.5),
        ("width", True),
    ],
)
def test_bad_parameters_are_named(param: str, value: object) -> None:
    with pytest.raises(ConfigError, match=param):
        FaceStickerTrigger(**{param: value})  # type: ignore[arg-type]


def test_params_rebuild_the_same_trigger() -> None:
    trig = FaceStickerTrigger(anchor="right_cheek", width=0.5, albedo=0.8, shading=False, seed=9)
    p = json.loads(json.dumps(trig.params()))
    assert p["name"] == "sticker" and p["anchor"] == "right_cheek" and p["seed"] == 9
    again = FaceStickerTrigger(**{k: v for k, v in p.items() if k != "name"})
    assert again.params() == trig.params() and trig.state() == {}
    img, lm = grey(3), frontal_landmarks(3)
    assert torch.equal(again(img, {"landmarks": lm}), trig(img, {"landmarks": lm}))
    assert "right_cheek" in repr(trig)


# ----------------------------------------------------------------- robustness
def test_degenerate_landmarks_leave_the_image_unchanged() -> None:
    n = 6
    img = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    lm = frontal_landmarks(n, mid=(16.0, 18.0), iod=10.0)
    lm[0, 0, 0] = float("nan")
    lm[1, 1, 1] = float("inf")
    lm[2, 1] = lm[2, 0]  # both eyes at one point
    lm[3, 1] = lm[3, 0] + 1e-4
    lm[4, :2] = torch.tensor([[-3e38, 0.0], [3e38, 0.0]])  # IOD overflows
    out = FaceStickerTrigger()(img, {"landmarks": lm}, np.arange(n))
    assert torch.isfinite(out).all()
    assert all(torch.equal(out[i], img[i]) for i in range(5))
    assert not torch.equal(out[5], img[5])


finite = st.floats(-100.0, 150.0, allow_nan=False)
STICKER_PARAMS = st.fixed_dictionaries(
    {
        "anchor": st.sampled_from(["forehead", "left_cheek", "right_cheek"]),
        "width": st.floats(0.01, 3.0),
        "height": st.floats(0.01, 3.0),
        "offset": st.floats(0.0, 3.0),
        "albedo": st.floats(0.01, 1.0),
        "shading": st.booleans(),
        "skin_reference": st.floats(0.01, 1.0),
        "jitter_position": st.floats(0.0, 3.0),
        "jitter_angle_deg": st.floats(0.0, 180.0),
        "jitter_scale": st.floats(0.0, 0.99),
        "jitter_brightness": st.floats(0.0, 1.0),
        "edge_px": st.floats(0.001, 100.0),
        "seed": st.integers(-(2**40), 2**40),
    }
)


@settings(max_examples=40, deadline=None)
@given(
    params=STICKER_PARAMS,
    landmarks=arrays(np.float32, (3, 5, 2), elements=finite | st.sampled_from([np.nan, np.inf, 1e30])),
    use_corners=st.booleans(),
    channels=st.sampled_from([1, 3]),
)
def test_outputs_stay_finite_and_in_range(
    params: dict[str, object], landmarks: np.ndarray, use_corners: bool, channels: int
) -> None:
    img = torch.rand(3, channels, 20, 28, generator=torch.Generator().manual_seed(1))
    lm = torch.from_numpy(landmarks)
    ann = {"eye_corners": lm[:, :4]} if use_corners else {"landmarks": lm}
    out = FaceStickerTrigger(**params)(img, ann, np.array([0, 7, 123456789]))  # type: ignore[arg-type]
    assert out.shape == img.shape and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


# ------------------------------------------------------ box-restricted painting
def full_coverage(trig: FaceStickerTrigger, img: torch.Tensor, ann: dict[str, torch.Tensor], idx: np.ndarray):
    """(B, H, W) coverage over every pixel, and the (y0, x0, bh, bw) boxes that apply paints in."""
    b, _, h, w = img.shape
    sticker, _ = trig._stickers(img, ann, idx, torch.float32)
    rows = torch.arange(h, dtype=torch.float32).expand(b, h)
    cols = torch.arange(w, dtype=torch.float32).expand(b, w)
    return _coverage(sticker, rows, cols, trig.edge_px), _boxes(sticker, trig.edge_px, h, w)


def assert_boxes_hold_the_stickers(trig: FaceStickerTrigger, img: torch.Tensor, ann: dict, idx: np.ndarray) -> None:
    """Every pixel with non-zero coverage lies in its sample's box, and apply == the whole-image blend."""
    h, w = img.shape[2:]
    cov, (y0, x0, bh, bw) = full_coverage(trig, img, ann, idx)
    assert 0 <= bh <= h and 0 <= bw <= w
    assert (y0 >= 0).all() and (y0 + bh <= h).all() and (x0 >= 0).all() and (x0 + bw <= w).all()
    rr, cc = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    inside = (rr >= y0[:, None, None]) & (rr < (y0 + bh)[:, None, None])
    inside = inside & (cc >= x0[:, None, None]) & (cc < (x0 + bw)[:, None, None])  # (B, H, W)
    assert not (cov[~inside] != 0).any(), "a touched pixel lies outside its box"
    out, ref = trig(img, ann, idx), trig._full_image(img, ann, idx)
    assert out.dtype == ref.dtype == img.dtype
    assert torch.equal(out, ref), "the box-restricted sticker differs from the whole-image one"
    assert torch.equal(out.permute(0, 2, 3, 1)[~inside], img.permute(0, 2, 3, 1)[~inside]), "changed outside a box"


@pytest.mark.parametrize("anchor", ["forehead", "left_cheek", "right_cheek"])
def test_boxes_match_the_whole_image_on_synthetic_faces(tiny_face_ds: ArrayDataset, anchor: str) -> None:
    img, ann, idx = face_batch(tiny_face_ds)
    shifted = ann["landmarks"].clone()
    shifted[::2] += torch.tensor([12.0, -9.0])  # stickers across the top and right borders
    for landmarks in (ann["landmarks"], shifted):
        trig = FaceStickerTrigger(anchor=anchor, jitter_angle_deg=40.0, jitter_scale=0.3, seed=5)
        assert_boxes_hold_the_stickers(trig, img, {"landmarks": landmarks}, idx)


def test_boxes_keep_the_memory_layout_and_half_precision(tiny_face_ds: ArrayDataset) -> None:
    img, ann, idx = face_batch(tiny_face_ds)
    trig = FaceStickerTrigger()
    for x in (img.contiguous(), img.contiguous(memory_format=torch.channels_last), img[:, :, ::2, 1:], img.half()):
        out = trig(x, ann, idx)
        assert out.dtype == x.dtype
        assert torch.equal(out, trig._full_image(x, ann, idx))


def test_no_sticker_in_view_returns_a_copy() -> None:
    img = grey(2)
    lm = frontal_landmarks(2, mid=(500.0, -400.0))
    out = FaceStickerTrigger()(img, {"landmarks": lm}, np.arange(2))
    assert torch.equal(out, img) and out.data_ptr() != img.data_ptr()
    empty = torch.zeros(0, 3, 8, 8)
    assert FaceStickerTrigger()(empty, {"landmarks": torch.zeros(0, 5, 2)}, np.arange(0)).shape == empty.shape


coords = st.floats(-40.0, 80.0, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    params=STICKER_PARAMS,
    landmarks=arrays(np.float32, (4, 5, 2), elements=coords),
    near=st.floats(1e-4, 2.0),
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    use_corners=st.booleans(),
)
def test_boxes_hold_every_touched_pixel(
    params: dict[str, object], landmarks: np.ndarray, near: float, size: tuple[int, int], use_corners: bool
) -> None:
    """Random stickers (huge, tiny, sheared, off the image, cut by its borders) paint as on the whole image."""
    h, w = size
    lm = torch.from_numpy(landmarks)
    lm[0, 1] = lm[0, 0] + torch.tensor([near, near / 3])  # eyes close together: a tiny, sheared frame
    lm[1, 3:] = lm[1, 0] + (lm[1, 1] - lm[1, 0]) * 0.6 + torch.tensor([0.0, near])  # mouth near the eye line
    img = torch.rand(4, 3, h, w, generator=torch.Generator().manual_seed(2))
    ann = {"eye_corners": lm[:, :4]} if use_corners else {"landmarks": lm}
    trig = FaceStickerTrigger(**params)  # type: ignore[arg-type]
    assert_boxes_hold_the_stickers(trig, img, ann, np.array([3, 1, 4, 159]))
