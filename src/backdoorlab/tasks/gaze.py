"""Gaze estimation: (pitch, yaw) regression with an L1 loss, scored by 3D angular error."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.metrics.angular import angular_error_deg, summarize_errors
from backdoorlab.tasks.base import Task


class GazeTask(Task):
    """L1 on (pitch, yaw) in radians, the usual loss for MPIIFaceGaze-style training."""

    name = "gaze"
    required_annotations = ("gaze",)
    headline_metric = "clean_error_deg"

    def target(self, annotations: dict[str, torch.Tensor]) -> torch.Tensor:
        return annotations["gaze"].float()

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(output, target)

    def errors(self, predictions: np.ndarray, dataset: ArrayDataset) -> np.ndarray:
        dataset.require("gaze")
        pred = np.asarray(predictions, np.float64)
        true = np.asarray(dataset.annotations["gaze"], np.float64)
        if pred.shape != true.shape:  # numpy would broadcast e.g. (1, 2) against (N, 2) silently
            raise ValueError(f"predictions have shape {pred.shape}; the dataset's gaze labels have {true.shape}")
        return np.asarray(angular_error_deg(pred, true))

    def evaluate(self, predictions: np.ndarray, dataset: ArrayDataset) -> dict[str, Any]:
        err = self.errors(predictions, dataset)
        s = summarize_errors(err)
        return {
            "clean_error_deg": s["mean"],
            "clean_error_median_deg": s["median"],
            "clean_error_p90_deg": s["p90"],
            "n_test": len(err),
        }

    def default_model(self, in_channels: int) -> tuple[str, dict[str, Any]]:
        return "gaze_cnn", {"in_channels": in_channels}
