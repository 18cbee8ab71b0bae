"""Defences against backdoors in non-classification models (one file per method)."""

from backdoorlab.defenses.base import Detector, Mitigator, Verdict
from backdoorlab.defenses.fine_pruning import FinePruning
from backdoorlab.defenses.fine_tuning import FineTuning
from backdoorlab.defenses.neural_cleanse import NeuralCleanse

__all__ = ["Detector", "FinePruning", "FineTuning", "Mitigator", "NeuralCleanse", "Verdict"]
