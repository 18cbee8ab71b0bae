"""Defences against backdoors in non-classification models (one file per method).

Importing this package registers the built-in methods in ``backdoorlab.registry.DEFENCES``
(the registry imports it at its first look-up).
"""

from backdoorlab.defenses.base import (
    Defence,
    Detector,
    Mitigator,
    Needs,
    PopulationDetector,
    RuntimeMonitor,
    Verdict,
)
from backdoorlab.defenses.face_monitors import (
    AuxLandmarkerMonitor,
    FlickerMonitor,
    GeometryMonitor,
    TransformMonitor,
)
from backdoorlab.defenses.fine_pruning import FinePruning
from backdoorlab.defenses.fine_tuning import FineTuning
from backdoorlab.defenses.landmark_shift_reversal import LandmarkShiftReversal
from backdoorlab.defenses.model_pairing import ModelPairingMonitor
from backdoorlab.defenses.neural_cleanse import NeuralCleanse
from backdoorlab.defenses.securegaze import SecureGaze, SecureGazeUnlearning
from backdoorlab.defenses.settings import DefenceConfig
from backdoorlab.defenses.weight_anomaly import WeightAnomalyDetector

__all__ = [
    "AuxLandmarkerMonitor",
    "Defence",
    "DefenceConfig",
    "Detector",
    "FinePruning",
    "FineTuning",
    "FlickerMonitor",
    "GeometryMonitor",
    "LandmarkShiftReversal",
    "Mitigator",
    "ModelPairingMonitor",
    "Needs",
    "NeuralCleanse",
    "PopulationDetector",
    "RuntimeMonitor",
    "SecureGaze",
    "SecureGazeUnlearning",
    "TransformMonitor",
    "Verdict",
    "WeightAnomalyDetector",
]
