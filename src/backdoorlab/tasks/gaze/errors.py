"""Per-sample 3D angular errors of gaze predictions against a dataset's labels."""

from __future__ import annotations

import numpy as np

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.geometry import angular_error_deg


def gaze_errors(predictions: np.ndarray, dataset: ArrayDataset) -> np.ndarray:
    """(N,) degrees between predicted and labelled (pitch, yaw); shapes must match exactly."""
    dataset.require("gaze")
    pred = np.asarray(predictions, np.float64)
    true = np.asarray(dataset.annotations["gaze"], np.float64)
    if pred.shape != true.shape:  # numpy would broadcast e.g. (1, 2) against (N, 2) silently
        raise ValueError(f"predictions have shape {pred.shape}; the dataset's gaze labels have {true.shape}")
    return np.asarray(angular_error_deg(pred, true))
