"""Model pairing as a run-time monitor: flag the faces on which two recognizers disagree (thesis ch. 5).

A deployed recognizer that may be backdoored (the *probe*) is paired with a second one
trained apart (the *reference*). Both embed every face; the probe's embedding is translated
into the reference's space (:mod:`.translator`) and the monitor's score is the disagreement
``1 - cos(W e_probe + c, e_ref)`` (higher = more likely triggered, the convention of every
run-time monitor). A trigger learned by one model moves its embedding towards the victim
while the other model still sees the impostor, so the pair disagrees on exactly the inputs
that matter; on clean faces both agree up to the translation error, and the threshold is
set on clean faces at a false-alarm rate (:meth:`RuntimeMonitor.calibrate`).

The monitor reads embeddings, not images or models: the caller embeds each face with both
models (a pipeline already does), so one monitor serves any pair of architectures and
input sizes. Inputs are :class:`EmbeddingPairs` (the probe's (N, d_probe) and the
reference's (N, d_ref) embeddings of the same N faces); ``fit`` takes those of unlabeled
faces that neither model was trained on (the thesis used FFHQ; :func:`backdoorlab.data.face_recognition_sets.load_ffhq`
reads such a folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Self

import numpy as np
from pydantic import Field

from backdoorlab.defenses.base import Needs, RuntimeMonitor
from backdoorlab.defenses.model_pairing.translator import EmbeddingTranslator, fit_affine, fit_procrustes
from backdoorlab.defenses.registration import register_defence
from backdoorlab.defenses.settings import DefenceConfig
from backdoorlab.errors import BackdoorLabError

Translator = Literal["affine", "procrustes"]


@dataclass(frozen=True)
class EmbeddingPairs:
    """The two models' embeddings of the same faces, row i of each from face i (the monitor's input)."""

    probe: np.ndarray  # (N, d_probe): the model being guarded
    reference: np.ndarray  # (N, d_ref): the second model

    def __post_init__(self) -> None:
        probe, reference = np.asarray(self.probe), np.asarray(self.reference)
        if probe.ndim != 2 or reference.ndim != 2 or len(probe) != len(reference):
            raise BackdoorLabError(
                f"embedding pairs need (N, D) arrays with one row per face each, got {probe.shape} and "
                f"{reference.shape}"
            )
        object.__setattr__(self, "probe", probe)
        object.__setattr__(self, "reference", reference)

    def __len__(self) -> int:
        return len(self.probe)


class ModelPairingConfig(DefenceConfig):
    """The settings of :class:`ModelPairingMonitor`."""

    translator: Translator = "affine"
    steps: int = Field(300, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.01, gt=0)
    seed: int = 0


@register_defence(ModelPairingConfig)
class ModelPairingMonitor(RuntimeMonitor):
    """Score a face by how far two recognizers disagree on it once one is translated into the other's space.

    Args:
        translator: ``affine`` (learned with the negative cosine loss, any two embedding
            sizes) or ``procrustes`` (the closed-form rotation, equal sizes only).
        steps, batch_size, lr, seed: the affine translator's training (unused by ``procrustes``).
        device: unused (the translator is small and fitted on the CPU); kept for the common settings.
    """

    name = "model_pairing"
    needs = Needs(clean_data=True)

    def __init__(
        self,
        translator: Translator = "affine",
        steps: int = 300,
        batch_size: int = 128,
        lr: float = 0.01,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        if translator not in ("affine", "procrustes"):
            raise BackdoorLabError(f"unknown translator {translator!r}: expected 'affine' or 'procrustes'")
        self.translator_kind, self.steps, self.batch_size, self.lr, self.seed, self.device = (
            translator, steps, batch_size, lr, seed, device,
        )  # fmt: skip
        self.translator: EmbeddingTranslator | None = None

    def params(self) -> dict[str, Any]:
        return {"translator": self.translator_kind, "steps": self.steps, "batch_size": self.batch_size,
                "lr": self.lr, "seed": self.seed}  # fmt: skip

    @staticmethod
    def _pairs(inputs: Any) -> EmbeddingPairs:
        if not isinstance(inputs, EmbeddingPairs):
            raise BackdoorLabError(
                f"model pairing reads EmbeddingPairs(probe, reference), got {type(inputs).__name__}"
            )
        return inputs

    def fit(self, *clean_inputs: Any) -> Self:
        """Fit the translator on the :class:`EmbeddingPairs` of unlabeled clean faces."""
        if len(clean_inputs) != 1:
            raise BackdoorLabError("fit takes one EmbeddingPairs of unlabeled clean faces")
        pairs = self._pairs(clean_inputs[0])
        if self.translator_kind == "procrustes":
            self.translator = fit_procrustes(pairs.probe, pairs.reference)
        else:
            self.translator = fit_affine(pairs.probe, pairs.reference, self.steps, self.batch_size, self.lr, self.seed)
        return self

    def score(self, inputs: Any) -> np.ndarray:
        """(N,) ``1 - cos(W e_probe + c, e_ref)`` (after :meth:`fit`)."""
        if self.translator is None:
            raise BackdoorLabError("the model-pairing monitor is not fitted: call fit(EmbeddingPairs) first")
        pairs = self._pairs(inputs)
        return 1.0 - self.translator.scores(pairs.probe, pairs.reference)
