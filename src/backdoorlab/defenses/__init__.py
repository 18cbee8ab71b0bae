"""Defences against backdoors in non-classification models (one file per method)."""

from backdoorlab.defenses.base import Detector, Mitigator, Verdict

__all__ = ["Detector", "Mitigator", "Verdict"]
