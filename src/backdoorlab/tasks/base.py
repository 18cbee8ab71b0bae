"""The Task interface: what the training loop and evaluation need to know about a task.

A task turns a batch of annotations into a target tensor, defines the loss, and
evaluates predictions. The training loop never looks inside annotations itself, so
adding face detection or recognition is a new Task, not a new loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch import nn

from backdoorlab.data.arrays import ArrayDataset


class Task(ABC):
    name: str = "task"
    required_annotations: tuple[str, ...] = ()
    #: the metric of :meth:`evaluate` that sums a run up (the store's headline column, sweep lines)
    headline_metric: str = ""

    @abstractmethod
    def target(self, annotations: dict[str, torch.Tensor]) -> torch.Tensor:
        """The tensor the model's output is compared with."""

    @abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar training loss."""

    @abstractmethod
    def evaluate(self, predictions: np.ndarray, dataset: ArrayDataset) -> dict[str, Any]:
        """Metrics of ``predictions`` (one row per sample of ``dataset``)."""

    @abstractmethod
    def default_model(self, in_channels: int) -> tuple[str, dict[str, Any]]:
        """(architecture name, constructor kwargs) of the default model."""


@torch.no_grad()
def predict(
    model: nn.Module, dataset: ArrayDataset, batch_size: int = 256, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Model outputs for every sample, in order, in eval mode."""
    was_training = model.training
    model.eval()
    outs = []
    for images, _ in dataset.iter_batches(batch_size):
        outs.append(model(images.to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(outs).numpy()
