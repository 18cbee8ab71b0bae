"""Counter-based per-sample randomness: the same sample index always draws the same numbers.

Why not a stateful generator: a trigger with random elements (a patch at a random
position, a sticker with jitter) must put the same trigger on sample 17 whether it is
drawn in a batch of 8 or 512, in epoch 1 or 9, at training or at evaluation time, so
that runs are reproducible and a run's poisoned set can be rebuilt exactly. A hash of
``(seed, sample index, draw number)`` gives that, vectorised over a batch, at no cost
compared with the image operations.
"""

from __future__ import annotations

import numpy as np
import torch

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser (Steele et al. 2014), elementwise on uint64 (wraps mod 2**64)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


def per_sample_uniform(seed: int, indices: np.ndarray | torch.Tensor, draws: int) -> torch.Tensor:
    """(B, draws) float32 uniforms in [0, 1), a pure function of (seed, index, draw number)."""
    idx = indices.cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
    idx = idx.astype(np.int64).reshape(-1).astype(np.uint64)
    s = _splitmix64(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], np.uint64))
    with np.errstate(over="ignore"):
        key = _splitmix64(s ^ _splitmix64(idx))  # (B,)
        counters = np.arange(draws, dtype=np.uint64)
        bits = _splitmix64(key[:, None] * np.uint64(0x100000001B3) + counters[None, :])
    # top 24 bits -> exact float32 in [0, 1)
    return torch.from_numpy((bits >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24))


def per_sample_normal(seed: int, indices: np.ndarray | torch.Tensor, draws: int) -> torch.Tensor:
    """(B, draws) standard normals (Box-Muller on :func:`per_sample_uniform`)."""
    u = per_sample_uniform(seed, indices, 2 * draws).double()
    u1, u2 = u[:, :draws].clamp_min(1e-12), u[:, draws:]
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)).float()


def per_epoch_coin(seed: int, stream: int, epoch: int, indices: np.ndarray | torch.Tensor, p: float) -> torch.Tensor:
    """(B,) bool: each sample's coin with probability ``p``, fresh every epoch, the same in any batch.

    ``stream`` keeps one augmentation's coins apart from another's under the same seed
    (a flip and a colour jitter must not always fire together).
    """
    return per_sample_uniform(seed ^ (stream + 7919 * epoch), indices, 1)[:, 0] < p
