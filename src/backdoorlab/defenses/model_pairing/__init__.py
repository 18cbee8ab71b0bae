"""Model pairing (thesis ch. 5): a second recognizer and a translator between their embedding spaces."""

from backdoorlab.defenses.model_pairing.translator import EmbeddingTranslator, fit_affine, fit_procrustes

__all__ = ["EmbeddingTranslator", "fit_affine", "fit_procrustes"]
