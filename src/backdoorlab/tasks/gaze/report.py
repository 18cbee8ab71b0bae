"""The gaze run report: error distribution, arrows on sample faces, and the backdoor's sections."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.geometry import angular_error_deg
from backdoorlab.report.attack_report import attack_sections
from backdoorlab.report.gallery import gaze_arrow_origins
from backdoorlab.report.gaze_report import write_gaze_report
from backdoorlab.tasks.base import AttackScore, RunReport
from backdoorlab.tasks.gaze.errors import gaze_errors
from backdoorlab.triggers.base import Trigger, triggered_images


def write_gaze_run_report(path: Path, report: RunReport) -> Path:
    test_ds, preds = report.test_data, report.predictions
    n = min(report.n_samples, len(test_ds))
    idx = np.linspace(0, len(test_ds) - 1, n).astype(int) if n else np.zeros(0, int)
    head = test_ds.annotations.get("head_pose")
    sections = []
    if report.attack is not None and report.trigger is not None and report.attack_settings is not None:
        tolerance = float(report.attack_settings.asr_tolerance_deg)  # type: ignore[attr-defined]
        sections = attack_report_sections(test_ds, idx, preds, report.attack, report.trigger, tolerance)
    return write_gaze_report(
        path,
        title=report.title,
        summary=report.summary,
        errors_deg=gaze_errors(preds, test_ds),
        head_pose=None if head is None else np.asarray(head),
        sample_images=np.asarray(test_ds.images[idx]),
        sample_true=np.asarray(test_ds.annotations["gaze"][idx]),
        sample_pred=preds[idx],
        sample_origins=gaze_arrow_origins(test_ds, idx),
        config_text=report.config_text,
        extra_sections=sections,
    )


def attack_report_sections(
    test_ds: ArrayDataset,
    idx: np.ndarray,
    preds: np.ndarray,
    score: AttackScore,
    trigger: Trigger,
    tolerance_deg: float,
) -> list[dict]:  # type: ignore[type-arg]
    """The backdoor part of a run report: examples, residuals, arrows, angles to the target."""
    n = min(len(idx), 8)
    sel = idx[np.linspace(0, len(idx) - 1, n).astype(int)] if n else idx[:0]
    triggered, targets = score.details["predictions"], score.details["targets"]
    return attack_sections(
        metrics={**score.metrics, "trigger": repr(trigger)},
        clean_images=np.asarray(test_ds.images[sel]),
        triggered_images=triggered_images(test_ds, trigger, sel),
        true_gaze=np.asarray(test_ds.annotations["gaze"][sel]),
        pred_clean=preds[sel],
        pred_triggered=triggered[sel],
        target_gaze=targets[sel],
        origins=gaze_arrow_origins(test_ds, sel),
        angle_to_target_triggered=np.asarray(angular_error_deg(triggered, targets)),
        angle_to_target_clean=np.asarray(angular_error_deg(preds, targets)),
        tolerance_deg=tolerance_deg,
    )
