"""Model pairing (thesis ch. 5): a second recognizer and a translator between their embedding spaces."""

from backdoorlab.defenses.model_pairing.monitor import EmbeddingPairs, ModelPairingMonitor
from backdoorlab.defenses.model_pairing.translator import EmbeddingTranslator, fit_affine, fit_procrustes
from backdoorlab.defenses.model_pairing.voting import NO_CULPRIT, name_culprits

__all__ = [
    "NO_CULPRIT",
    "EmbeddingPairs",
    "EmbeddingTranslator",
    "ModelPairingMonitor",
    "fit_affine",
    "fit_procrustes",
    "name_culprits",
]
