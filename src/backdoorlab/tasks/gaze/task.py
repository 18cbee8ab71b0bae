"""Gaze estimation: (pitch, yaw) regression with an L1 loss, scored by 3D angular error.

An attack succeeds on a triggered face when the predicted gaze is within
``asr_tolerance_deg`` of the relabel's target (:func:`backdoorlab.metrics.attack.attack_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.synthetic.dataset import SyntheticGazeSpec, load_or_synthesize
from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics.angular import summarize_errors
from backdoorlab.metrics.attack import attack_metrics, target_spread_deg
from backdoorlab.tasks.base import AttackScore, RunReport, StepOutput, Task
from backdoorlab.tasks.gaze.errors import gaze_errors
from backdoorlab.tasks.gaze.relabels import GazeRelabel
from backdoorlab.tasks.gaze.report import write_gaze_run_report
from backdoorlab.triggers.base import Placement


class GazeAttackSettings(BaseModel):
    """How a gaze attack is scored (part of a run config's ``attack`` section)."""

    model_config = ConfigDict(extra="forbid")
    asr_tolerance_deg: float = Field(5.0, gt=0, le=90, description="attack success = within this of the target")


class GazeTask(Task):
    """L1 on (pitch, yaw) in radians, the usual loss for MPIIFaceGaze-style training."""

    name = "gaze"
    required_annotations = ("gaze",)
    headline_metric = "clean_error_deg"
    attack_settings = GazeAttackSettings
    default_relabel: ClassVar[dict[str, Any]] = {"name": "target", "target_deg": [0.0, 0.0]}
    attack_summary_metrics = ("attack_error_deg", "triggered_true_error_deg", "attack_success_rate")
    default_defence = "securegaze"
    synthetic_spec = SyntheticGazeSpec

    def synthesize(self, spec: BaseModel, cache_dir: str | None = None) -> ArrayDataset:
        assert isinstance(spec, SyntheticGazeSpec)
        return load_or_synthesize(spec, cache_dir=cache_dir)

    # -------------------------------------------------------------- training
    def collate(self, annotations: Mapping[str, Any]) -> torch.Tensor:
        return annotations["gaze"].float()

    def training_step(
        self, model: nn.Module, modules: Mapping[str, nn.Module], images: torch.Tensor, targets: torch.Tensor
    ) -> StepOutput:
        return StepOutput(F.l1_loss(model(images), targets))

    # --------------------------------------------------------------- scoring
    def errors(self, predictions: np.ndarray, dataset: ArrayDataset) -> np.ndarray:
        return gaze_errors(predictions, dataset)

    def evaluate(self, predictions: np.ndarray, dataset: ArrayDataset) -> dict[str, Any]:
        err = self.errors(predictions, dataset)
        s = summarize_errors(err)
        return {
            "clean_error_deg": s["mean"],
            "clean_error_median_deg": s["median"],
            "clean_error_p90_deg": s["p90"],
            "n_test": len(err),
        }

    def score_attack(
        self,
        predictions: np.ndarray,
        data: ArrayDataset,
        relabel: Any,
        settings: BaseModel,
        placements: Sequence[Placement | None] = (),
        clean_predictions: Any = None,
    ) -> AttackScore:
        """Angles of the triggered predictions to the relabel's targets; success within the tolerance."""
        assert isinstance(settings, GazeAttackSettings) and isinstance(relabel, GazeRelabel)
        data.require("gaze")
        pred = np.asarray(predictions, np.float64)
        true = np.asarray(data.annotations["gaze"], np.float64)
        targets = relabel.targets(true).numpy().astype(np.float64)
        try:
            metrics: dict[str, Any] = dict(attack_metrics(pred, true, targets, settings.asr_tolerance_deg))
        except ValueError as exc:  # e.g. every test sample already within the tolerance of its target
            raise BackdoorLabError(f"cannot score the attack on this data: {exc}") from None
        metrics["triggered_output_spread_deg"] = target_spread_deg(pred)
        return AttackScore(metrics, {"targets": targets})

    def check_attack(self, relabel: Any, settings: BaseModel) -> None:
        """A shift no larger than the tolerance would count every sample as a success."""
        assert isinstance(settings, GazeAttackSettings)
        shift = relabel.params().get("shift_deg")
        tol = settings.asr_tolerance_deg
        if shift is not None and math.hypot(*shift) <= tol:
            raise BackdoorLabError(
                f"attack.relabel.shift_deg {list(shift)} moves the gaze by no more than asr_tolerance_deg={tol}: "
                "every sample would already count as a success"
            )

    def default_model(self, in_channels: int) -> tuple[str, dict[str, Any]]:
        return "gaze_cnn", {"in_channels": in_channels}

    # ---------------------------------------------------------------- report
    def write_report(self, path: Path, report: RunReport) -> Path:
        return write_gaze_run_report(path, report)
