"""Model pairing (thesis ch. 5): a second recognizer and a translator between their embedding spaces."""

from backdoorlab.defenses.model_pairing.monitor import EmbeddingPairs, ModelPairingMonitor
from backdoorlab.defenses.model_pairing.translator import EmbeddingTranslator, fit_affine, fit_procrustes

__all__ = ["EmbeddingPairs", "EmbeddingTranslator", "ModelPairingMonitor", "fit_affine", "fit_procrustes"]
