"""PSNR and SSIM of triggered images: known values, and agreement with scikit-image's SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from backdoorlab.metrics import PSNR_CAP_DB, image_quality, mean_psnr_db, psnr_db, ssim

FAST = settings(max_examples=40, deadline=None)


def random_images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((b, c, h, w)))


def smooth_images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Blurred noise rescaled to [0, 1]: large flat-ish regions, where variance terms are tiny."""
    noise = np.random.default_rng(seed).random((b, c, h, w))
    blurred = gaussian_filter(noise, sigma=(0, 0, 4, 4))
    lo = blurred.min(axis=(2, 3), keepdims=True)
    hi = blurred.max(axis=(2, 3), keepdims=True)
    return torch.from_numpy((blurred - lo) / (hi - lo))


def noisy(x: torch.Tensor, scale: float, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (x + scale * torch.randn(x.shape, generator=gen, dtype=x.dtype)).clamp(0.0, 1.0)


def skimage_ssim(a: torch.Tensor, b: torch.Tensor, **kwargs: object) -> np.ndarray:
    """Reference: skimage, one (H, W, C) or (H, W) image at a time."""
    out = []
    for x, y in zip(a.numpy(), b.numpy(), strict=True):
        if x.shape[0] == 1:
            out.append(structural_similarity(x[0], y[0], data_range=1.0, **kwargs))
        else:
            out.append(
                structural_similarity(
                    x.transpose(1, 2, 0), y.transpose(1, 2, 0), data_range=1.0, channel_axis=-1, **kwargs
                )
            )
    return np.array(out)


# ----------------------------------------------------------------- PSNR
def test_psnr_of_known_mse() -> None:
    clean = random_images(3, 3, 8, 8) * 0.8
    offsets = torch.tensor([0.1, 0.01, 0.001], dtype=torch.float64).view(3, 1, 1, 1)
    # MSE = offset^2, PSNR = -20 log10(offset)
    np.testing.assert_allclose(psnr_db(clean, clean + offsets).numpy(), [20.0, 40.0, 60.0], rtol=1e-9)
    assert mean_psnr_db(clean, clean + offsets) == pytest.approx(40.0)


def test_psnr_accepts_float32_and_grey() -> None:
    clean = torch.full((2, 1, 5, 7), 0.5)
    assert psnr_db(clean, clean + 0.1).numpy() == pytest.approx([20.0, 20.0], abs=1e-4)


def test_identical_images_have_infinite_psnr_and_a_capped_mean() -> None:
    clean = random_images(2, 3, 8, 8)
    triggered = clean.clone()
    triggered[1] += 0.1  # the first image is left unchanged, the second is 20 dB off
    values = psnr_db(clean, triggered)
    assert math.isinf(values[0]) and values[0] > 0
    assert values[1].item() == pytest.approx(20.0)
    assert mean_psnr_db(clean, triggered) == pytest.approx((PSNR_CAP_DB + 20.0) / 2)
    assert mean_psnr_db(clean, clean) == PSNR_CAP_DB
    # a difference far below visibility counts as no difference, not more
    assert mean_psnr_db(clean, clean + 1e-9) == PSNR_CAP_DB


def test_mean_psnr_of_empty_batch_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        mean_psnr_db(torch.zeros(0, 3, 4, 4), torch.zeros(0, 3, 4, 4))


# ----------------------------------------------------------------- SSIM: known values
def test_ssim_of_an_image_with_itself_is_one() -> None:
    for x in (random_images(2, 3, 16, 16), smooth_images(2, 1, 16, 16), torch.full((1, 3, 9, 9), 0.3)):
        np.testing.assert_allclose(ssim(x, x).numpy(), 1.0, atol=1e-12)
        np.testing.assert_allclose(ssim(x.float(), x.float(), gaussian=False).numpy(), 1.0, atol=1e-12)
    x = random_images(2, 3, 16, 16)
    np.testing.assert_allclose(ssim(x, x, gaussian=True).numpy(), 1.0, atol=1e-12)


def test_ssim_decreases_as_noise_increases() -> None:
    clean = smooth_images(2, 3, 32, 32)
    scores = torch.stack([ssim(clean, noisy(clean, s)) for s in (0.0, 0.01, 0.03, 0.1, 0.3)], 1)
    assert torch.all(scores[:, :-1] > scores[:, 1:])
    torch.testing.assert_close(scores[:, 0], torch.ones(2, dtype=scores.dtype))


def test_ssim_returns_one_value_per_image_on_the_input_device() -> None:
    x = random_images(5, 3, 12, 12)
    out = ssim(x, noisy(x, 0.1))
    assert out.shape == (5,) and out.device == x.device and out.dtype == torch.float64


# ----------------------------------------------------------------- SSIM: agreement with skimage
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("make", [random_images, smooth_images])
@pytest.mark.parametrize("noise", [0.02, 0.2])
def test_ssim_matches_skimage_uniform_window(channels: int, make: object, noise: float) -> None:
    clean = make(3, channels, 24, 20)  # type: ignore[operator]
    triggered = noisy(clean, noise)
    np.testing.assert_allclose(ssim(clean, triggered).numpy(), skimage_ssim(clean, triggered), atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("make", [random_images, smooth_images])
def test_ssim_matches_skimage_gaussian_window(channels: int, make: object) -> None:
    clean = make(3, channels, 24, 20)  # type: ignore[operator]
    triggered = noisy(clean, 0.05)
    expected = skimage_ssim(clean, triggered, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    np.testing.assert_allclose(ssim(clean, triggered, gaussian=True).numpy(), expected, atol=1e-5)


def test_ssim_matches_skimage_other_window_and_sigma() -> None:
    clean = random_images(2, 3, 16, 16)
    triggered = noisy(clean, 0.1)
    np.testing.assert_allclose(
        ssim(clean, triggered, window=5).numpy(), skimage_ssim(clean, triggered, win_size=5), atol=1e-5
    )
    # sigma 1 -> radius int(3.5 + 0.5) = 4, a 9x9 window in both
    expected = skimage_ssim(clean, triggered, gaussian_weights=True, sigma=1.0, use_sample_covariance=False)
    np.testing.assert_allclose(ssim(clean, triggered, gaussian=True, sigma=1.0).numpy(), expected, atol=1e-5)


def test_ssim_matches_skimage_on_unrelated_and_float32_images() -> None:
    a, b = random_images(2, 3, 16, 16, seed=3), random_images(2, 3, 16, 16, seed=4)
    np.testing.assert_allclose(ssim(a, b).numpy(), skimage_ssim(a, b), atol=1e-5)
    np.testing.assert_allclose(
        ssim(a.float(), b.float()).numpy(), skimage_ssim(a.float().double(), b.float().double()), atol=1e-5
    )


def test_chunked_batches_give_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    clean = random_images(7, 3, 12, 12)
    triggered = noisy(clean, 0.1)
    whole = ssim(clean, triggered)
    monkeypatch.setattr(image_quality, "_CPU_CHUNK_BYTES", 3 * 5 * 3 * 12 * 12 * 8)  # chunks of 3 images
    torch.testing.assert_close(ssim(clean, triggered), whole, rtol=0, atol=1e-14)


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize("fn", [psnr_db, mean_psnr_db, ssim])
def test_bad_shapes_are_named(fn: object) -> None:
    with pytest.raises(ValueError, match=r"\(3, 16, 16\).*\(3, 16, 16\)"):
        fn(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16))  # type: ignore[operator]
    with pytest.raises(ValueError, match=r"\(1, 3, 16, 16\).*\(1, 1, 16, 16\)"):
        fn(torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 16, 16))  # type: ignore[operator]


def test_bad_window_sigma_and_small_images() -> None:
    x = random_images(1, 1, 16, 16)
    for window in (1, 4):
        with pytest.raises(ValueError, match="odd"):
            ssim(x, x, window=window)
    for sigma in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="sigma"):
            ssim(x, x, gaussian=True, sigma=sigma)
    with pytest.raises(ValueError, match="smaller than the 7x7"):
        ssim(x[..., :6], x[..., :6])
    with pytest.raises(ValueError, match="smaller than the 11x11"):
        ssim(x[..., :10, :], x[..., :10, :], gaussian=True)


# ----------------------------------------------------------------- properties
@FAST
@given(
    st.integers(1, 3),
    st.sampled_from([1, 3]),
    st.integers(7, 14),
    st.integers(7, 14),
    st.sampled_from(["noise", "unrelated", "constant", "scaled"]),
    st.floats(0.0, 1.0),
    st.integers(0, 2**16),
)
def test_ssim_is_symmetric_and_at_most_one(
    b: int, c: int, h: int, w: int, kind: str, strength: float, seed: int
) -> None:
    x = random_images(b, c, h, w, seed)
    if kind == "noise":
        y = noisy(x, strength, seed + 1)
    elif kind == "unrelated":
        y = random_images(b, c, h, w, seed + 1)
    elif kind == "constant":
        y = torch.full_like(x, strength)
    else:
        y = x * strength
    gaussian_options = [False, True] if min(h, w) >= 11 else [False]
    for gaussian in gaussian_options:
        xy, yx = ssim(x, y, gaussian=gaussian), ssim(y, x, gaussian=gaussian)
        torch.testing.assert_close(xy, yx, rtol=0, atol=1e-12)
        assert torch.all(xy <= 1.0 + 1e-12) and torch.all(xy >= -1.0 - 1e-12)
