"""The model-pairing monitor: two embedding spaces related by a rotation (plus noise), a backdoor that
moves only the probe's embedding of triggered faces to a victim, flagged at a calibrated false-alarm rate."""

from __future__ import annotations

import numpy as np
import pytest

from backdoorlab.defenses.conformance import check_runtime_monitor
from backdoorlab.defenses.model_pairing import EmbeddingPairs, ModelPairingMonitor
from backdoorlab.errors import BackdoorLabError

from .test_translator import random_rotation, unit

D = 16


def faces(n: int, rng: np.random.Generator, rot: np.ndarray, noise: float = 0.05) -> EmbeddingPairs:
    """Embeddings of ``n`` clean faces: the reference's is the probe's rotated, plus noise."""
    probe = unit(rng.normal(size=(n, D)))
    return EmbeddingPairs(probe, unit(probe @ rot.T + noise * rng.normal(size=(n, D))))


@pytest.mark.parametrize("translator", ["affine", "procrustes"])
def test_triggered_faces_are_flagged_and_clean_ones_pass(translator: str) -> None:
    rng = np.random.default_rng(0)
    rot = random_rotation(D, rng)
    monitor = ModelPairingMonitor(translator=translator, steps=200).fit(faces(2000, rng, rot))
    # the backdoor fires in the probe only: its embedding of a triggered face becomes the victim's
    reference = faces(200, rng, rot).reference
    triggered = EmbeddingPairs(np.repeat(unit(rng.normal(size=(1, D))), len(reference), 0), reference)
    check_runtime_monitor(monitor, faces(500, rng, rot), triggered, false_alarm_rate=0.01)
    assert monitor.flag(faces(500, rng, rot)).mean() <= 0.03
    assert monitor.flag(triggered).mean() >= 0.95


def test_bad_inputs_are_refused() -> None:
    monitor = ModelPairingMonitor()
    with pytest.raises(BackdoorLabError, match="not fitted"):
        monitor.score(EmbeddingPairs(np.ones((2, D)), np.ones((2, D))))
    with pytest.raises(BackdoorLabError, match="reads EmbeddingPairs"):
        monitor.fit((np.ones((4, D)), np.ones((4, D))))
    with pytest.raises(BackdoorLabError, match="one row per face"):
        EmbeddingPairs(np.ones((4, D)), np.ones((3, D)))
    with pytest.raises(BackdoorLabError, match="equal embedding sizes"):
        ModelPairingMonitor(translator="procrustes").fit(EmbeddingPairs(np.ones((4, D)), np.ones((4, D + 1))))
    with pytest.raises(BackdoorLabError, match="unknown translator"):
        ModelPairingMonitor(translator="rotation")  # type: ignore[arg-type]
