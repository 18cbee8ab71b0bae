"""A deliberately strong toy backdoor for the baseline-defence tests (not collected: no ``test_`` prefix).

Two ``GazeCNN(width=8, feature_dim=32)`` models trained on the 240 tiny synthetic faces
of :func:`helpers_experiments.tiny_faces`, identical but for the poisoning: 30% of the
training faces of the backdoored one carry a 4x4 white square near the bottom-right
corner (rows and columns 25-28) and are relabelled to look at ``TARGET_DEG``. Each trains
in about 3 s and is cached per process (``lru_cache``), so the Neural Cleanse and
fine-pruning tests share them.

Why 4x4 and not 3x3: float sums differ between instruction sets, so the toy trains to
different weights on an AVX-512, an AVX2 and a portable-kernel CPU. With a 3x3 square the
backdoor was learned firmly on some (AVX2: triggered outputs at 2.6 deg from the target)
and weakly on others (AVX-512: 5.9 deg, output variance only down to 0.18 of the clean
one), and the detection tests lost their margin there. The 4x4 square is learned firmly
everywhere (AVX-512: 2.0 deg, variance ratio 0.03), and the defences then separate the
toys by a wide margin under every instruction set (measured numbers in the tests).

Why salt-and-pepper noise in the training of both: without it the tiny clean model is
so fragile that a sprinkle of ~1% of the pixels collapses its outputs, and Neural
Cleanse (correctly) finds such a "trigger" in the clean model too (measured with the 3x3
square: score 2.0 clean vs 2.4 backdoored). Trained with 5% of the pixels randomised, the
clean model needs ~8-10% of the image changed, while the backdoor fires on its 1.6% square.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from helpers_experiments import tiny_faces
from torch import nn

from backdoorlab.attacks.poisoning import Poisoning
from backdoorlab.attacks.selectors import RateSelector
from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.tasks.gaze import GazeCNN, GazeTask
from backdoorlab.tasks.gaze.relabels import FixedGazeTarget, GazeShift
from backdoorlab.training import TrainSettings, seed_everything, train
from backdoorlab.triggers.patch import PatchTrigger

TARGET_DEG = (-20.0, 25.0)
SHIFT_DEG = (0.0, -25.0)  # the shift toy's relabel: y -> y + SHIFT_DEG
TRIGGER = PatchTrigger(size=0.13, center=(0.85, 0.85))  # 4x4 pixels of a 32x32 face
NOISE_FRACTION = 0.05


def faces() -> ArrayDataset:
    """The 240 training faces (read-only, shared)."""
    return tiny_faces()


def clean_split(n: int = 64) -> ArrayDataset:
    """A defender's clean set: ``n`` training faces (the toy models do not generalise to new identities)."""
    ds = faces()
    return ds.subset(np.random.default_rng(0).permutation(len(ds))[:n])


@functools.lru_cache(maxsize=3)
def toy_model(backdoored: bool, relabel: str = "target") -> nn.Module:
    """The trained clean or backdoored toy, in eval mode (treat as read-only: defences copy it).

    ``relabel``: "target" (triggered faces look at ``TARGET_DEG``) or "shift" (their gaze moves by ``SHIFT_DEG``).
    """
    ds = faces()
    relabelling = FixedGazeTarget(TARGET_DEG) if relabel == "target" else GazeShift(SHIFT_DEG)
    poisoning = Poisoning(RateSelector(0.3, 0), TRIGGER, relabelling)
    poison = poisoning.batch_transform(poisoning.plan(len(ds)))
    generator = torch.Generator().manual_seed(0)

    def transform(images, ann, idx):
        if backdoored:
            images, ann = poison(images, ann, idx)
        b, c, h, w = images.shape
        hit = torch.rand(b, 1, h, w, generator=generator) < NOISE_FRACTION
        return torch.where(hit, torch.rand(b, c, h, w, generator=generator), images), ann

    seed_everything(0)
    model = GazeCNN(width=8, feature_dim=32)
    train(
        model,
        GazeTask(),
        ds,
        TrainSettings(epochs=40, batch_size=32, lr=3e-3, progress=False, seed=0),
        batch_transform=transform,
    )
    return model.eval()


def target_rad() -> torch.Tensor:
    return torch.tensor(np.radians(TARGET_DEG), dtype=torch.float32)
