"""How visible a trigger is: PSNR and SSIM between clean and triggered images, batched in torch.

Images are float tensors (B, C, H, W) with values in [0, 1] (``data_range`` = 1). Every
function returns one value per image so that callers can report a mean, a spread or a
worst case; the computation stays on the input's device.

Why our own SSIM instead of calling scikit-image: triggered batches live as tensors,
often on a GPU, and scikit-image works one numpy image and channel at a time. Here the
five local statistics of a batch go through depthwise convolutions on the tensors'
device. The numbers are those of ``skimage.metrics.structural_similarity`` (the tests
compare them), so they are comparable with papers that used it.

Arithmetic is float64 (cheap next to the rest of an evaluation, and the variance terms
``E[x^2] - E[x]^2`` cancel badly in float32), except on Apple's MPS, which has no float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Ceiling applied by :func:`mean_psnr_db`, in dB (see there).
PSNR_CAP_DB = 100.0

# Stabilising constants of Wang et al. (2004), for data_range = 1.
_K1 = 0.01
_K2 = 0.03
# skimage's Gaussian window: truncated at 3.5 sigma, which gives 11 taps for sigma = 1.5
# as in Wang et al.
_GAUSSIAN_TRUNCATE = 3.5
# Bytes of statistic maps that :func:`ssim` processes at once (see there).
_CPU_CHUNK_BYTES = 4 * 2**20
_DEVICE_CHUNK_BYTES = 2**30


def _compute_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _check_pair(clean: torch.Tensor, triggered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two (B, C, H, W) batches of the same shape; return them in the compute dtype."""
    clean = torch.as_tensor(clean)
    triggered = torch.as_tensor(triggered)
    if clean.ndim != 4 or triggered.ndim != 4 or clean.shape != triggered.shape:
        raise ValueError(
            "clean and triggered must both be (B, C, H, W) batches of the same shape; "
            f"got {tuple(clean.shape)} and {tuple(triggered.shape)}"
        )
    dtype = _compute_dtype(clean.device)
    return clean.to(dtype), triggered.to(device=clean.device, dtype=dtype)


def psnr_db(clean: torch.Tensor, triggered: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, ``10 log10(1 / MSE)`` with the MSE over all channels and pixels.

    Returns a (B,) tensor. An image the trigger left unchanged has MSE 0 and PSNR
    ``inf``: that is the true value, and this function does not hide it; use
    :func:`mean_psnr_db` for a finite batch summary.
    """
    x, y = _check_pair(clean, triggered)
    mse = (x - y).square().mean(dim=(1, 2, 3))
    # 1 / 0 = inf and log10(inf) = inf, so identical images give inf without a warning.
    return 10.0 * torch.log10(1.0 / mse)


def mean_psnr_db(clean: torch.Tensor, triggered: torch.Tensor) -> float:
    """Batch mean of :func:`psnr_db`, each image's PSNR capped at :data:`PSNR_CAP_DB` (100 dB).

    Why a cap: a trigger can leave some images unchanged (e.g. a landmark-placed patch
    when the landmarks are missing); their PSNR is infinite and would make the mean
    infinite, hiding the other images. 100 dB is an RMS difference of 1e-5, far below
    8-bit quantisation (about 59 dB), so no visible trigger is capped. Every value
    above the cap is clipped, not only ``inf``, so the mean is continuous: a
    difference of 1e-12 must not count for more than no difference at all.

    Raises:
        ValueError: for an empty batch, mismatched shapes, or inputs that are not 4D.
    """
    values = psnr_db(clean, triggered)
    if values.numel() == 0:
        raise ValueError("cannot average PSNR over an empty batch")
    return float(values.clamp(max=PSNR_CAP_DB).mean())


def _window_1d(window: int, gaussian: bool, sigma: float) -> torch.Tensor:
    """The 1D factor of skimage's separable SSIM window, normalised to sum 1 (float64)."""
    if gaussian:
        if not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
        # radius rounded as scipy.ndimage.gaussian_filter does
        radius = int(_GAUSSIAN_TRUNCATE * sigma + 0.5)
        taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
        weights = torch.exp(-0.5 * (taps / sigma) ** 2)
        return weights / weights.sum()
    if window < 3 or window % 2 == 0:
        # window 1 has a single pixel: no variance, and sample covariance divides by 0
        raise ValueError(f"window must be an odd integer >= 3, got {window!r}")
    return torch.full((window,), 1.0 / window, dtype=torch.float64)


def ssim(
    clean: torch.Tensor,
    triggered: torch.Tensor,
    window: int = 7,
    gaussian: bool = False,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Per-image mean SSIM (Wang et al. 2004), matching ``skimage.metrics.structural_similarity``.

    Returns a (B,) tensor: for each image, the SSIM map of each channel averaged over the
    valid region and then over channels, with ``K1 = 0.01``, ``K2 = 0.03``, data range 1.
    The conventions are skimage's for float images with ``data_range=1.0`` and
    ``channel_axis`` set:

    * ``gaussian=False`` (skimage's default): a uniform ``window x window`` mean and the
      sample covariance, i.e. variances scaled by ``N / (N - 1)`` with ``N = window**2``
      (skimage's ``use_sample_covariance=True``).
    * ``gaussian=True``: a Gaussian window of standard deviation ``sigma`` truncated at
      3.5 sigma (11 x 11 for sigma 1.5), and the population covariance: skimage's
      ``gaussian_weights=True, use_sample_covariance=False``, the setting that
      reproduces Wang et al. ``window`` is ignored; the window size follows ``sigma``.

    Either way the map is averaged only where the window fits inside the image, i.e.
    after cropping ``(size - 1) // 2`` pixels from every side as skimage does. That is
    why no padding is needed: the convolution is computed on the valid region only,
    where skimage's border mode has no effect.

    Images must be at least as large as the window. The result is float64 (float32 on
    MPS) on the input's device.

    Raises:
        ValueError: for inputs that are not 4D, mismatched shapes, a bad window or sigma,
            or images smaller than the window.
    """
    x, y = _check_pair(clean, triggered)
    kernel = _window_1d(window, gaussian, sigma).to(device=x.device, dtype=x.dtype)
    size = kernel.numel()
    batch, channels, height, width = x.shape
    if height < size or width < size:
        raise ValueError(f"images of {height}x{width} pixels are smaller than the {size}x{size} SSIM window")
    cov_norm = 1.0 if gaussian else size * size / (size * size - 1.0)

    # Chunking keeps a chunk's five statistic maps in cache on a CPU, where the depthwise
    # convolution is memory-bound: measured on 512 RGB 64x64 images at one thread, about
    # 0.3 s in chunks of 8 images (skimage: 0.3 s) against 2.7 s in one piece. On an
    # accelerator the budget only bounds peak memory.
    budget = _CPU_CHUNK_BYTES if x.device.type == "cpu" else _DEVICE_CHUNK_BYTES
    per_image = 5 * channels * height * width * x.element_size()
    chunk = max(1, budget // per_image)
    if batch <= chunk:
        return _ssim_chunk(x, y, kernel, cov_norm)
    parts = [_ssim_chunk(x[i : i + chunk], y[i : i + chunk], kernel, cov_norm) for i in range(0, batch, chunk)]
    return torch.cat(parts)


def _ssim_chunk(x: torch.Tensor, y: torch.Tensor, kernel: torch.Tensor, cov_norm: float) -> torch.Tensor:
    """Per-image mean SSIM of one chunk; ``kernel`` is the 1D window, ``cov_norm`` 1 or N/(N-1)."""
    channels = x.shape[1]
    size = kernel.numel()
    # The five local statistics of every channel in one depthwise, separable
    # convolution over the valid region.
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    groups = stats.shape[1]
    stats = F.conv2d(stats, kernel.view(1, 1, 1, size).expand(groups, 1, 1, size).contiguous(), groups=groups)
    stats = F.conv2d(stats, kernel.view(1, 1, size, 1).expand(groups, 1, size, 1).contiguous(), groups=groups)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(channels, dim=1)

    mu_xy = mu_x * mu_y
    mu_sq = mu_x * mu_x + mu_y * mu_y
    var_sum = cov_norm * (e_xx + e_yy - mu_sq)  # var_x + var_y
    cov_xy = cov_norm * (e_xy - mu_xy)
    c1, c2 = _K1**2, _K2**2
    ssim_map = (2.0 * mu_xy + c1) * (2.0 * cov_xy + c2) / ((mu_sq + c1) * (var_sum + c2))
    # every channel has the same valid region, so the mean over (C, H, W) is the mean
    # over channels of the per-channel means, as skimage computes it
    return ssim_map.mean(dim=(1, 2, 3))


__all__ = ["PSNR_CAP_DB", "mean_psnr_db", "psnr_db", "ssim"]
