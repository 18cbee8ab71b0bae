"""The face-detection run report: precision/recall per difficulty, the NME histogram, sample
scenes with true (green) and predicted (red) faces, and the backdoor's triggered examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from backdoorlab.metrics.average_precision import DIFFICULTY_NAMES, precision_recall
from backdoorlab.metrics.landmarks import landmark_errors
from backdoorlab.report.draw import PRED_COLOUR, TARGET_COLOUR, draw_faces, image_grid, png_data_uri
from backdoorlab.report.figures import fig_to_data_uri
from backdoorlab.report.run_report import write_run_report
from backdoorlab.tasks.base import RunReport
from backdoorlab.tasks.face_detection.task import FaceDetectionAttackSettings, ground_truth
from backdoorlab.triggers.base import triggered_images

SHOWN_SCORE = 0.5  # predictions drawn on the sample scenes: score at least this
SAMPLE_SCALE = 2  # the sample scenes are drawn twice their size, so 10-px faces stay visible


def pr_curves(preds: list[dict[str, np.ndarray]], gts: list[dict[str, np.ndarray]]) -> str:
    """Precision/recall at IoU 0.5 for each WIDER-style level (harder faces ignored at easier levels)."""
    fig = Figure(figsize=(4.6, 3.4))
    ax = fig.add_subplot()
    for level, name in enumerate(DIFFICULTY_NAMES):
        level_gts = [
            {**g, "ignore": g.get("ignore", np.zeros(len(g["boxes"]), bool)) | (g["difficulty"] > level)} for g in gts
        ]
        precision, recall, _ = precision_recall(preds, level_gts, iou=0.5)
        if len(recall):
            ax.plot(recall, precision, label=name)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision/recall at IoU 0.5")
    ax.legend(loc="lower left")
    return fig_to_data_uri(fig)


def nme_histogram(nme: np.ndarray) -> str:
    fig = Figure(figsize=(4.6, 3.2))
    ax = fig.add_subplot()
    ok = nme[np.isfinite(nme)]
    ax.hist(np.clip(ok, 0, 0.5), bins=40, color="#4a7ab5")
    ax.set(xlabel="NME (inter-ocular), clipped at 0.5", ylabel="matched faces", title=f"Landmark NME ({len(ok)} faces)")
    return fig_to_data_uri(fig)


def draw_scene(
    image: np.ndarray,
    gt: dict[str, Any],
    pred: dict[str, Any],
    extra: tuple[np.ndarray, np.ndarray | None] | None = None,
    threshold: float = SHOWN_SCORE,
) -> np.ndarray:
    """One scene, ``SAMPLE_SCALE`` times its size: the truth in green, the attacker's target (``extra``:
    boxes and landmarks or None) in yellow, and the predictions with score >= ``threshold`` in red."""
    out = draw_faces(image, gt["boxes"], gt["landmarks"], gt["visible"], scale=SAMPLE_SCALE)
    if extra is not None:
        boxes, lms = extra
        out = draw_faces(out, boxes * SAMPLE_SCALE, None if lms is None else lms * SAMPLE_SCALE, colour=TARGET_COLOUR)
    keep = pred["scores"] >= threshold
    return draw_faces(
        out, pred["boxes"][keep] * SAMPLE_SCALE, pred["landmarks"][keep] * SAMPLE_SCALE, colour=PRED_COLOUR
    )


def scene_panel(images: np.ndarray, gts: list[dict[str, Any]], preds: list[dict[str, Any]], extra=None) -> str:  # type: ignore[no-untyped-def]
    """Scenes with the truth in green, confident predictions in red, and (``extra``) the attacker's target in yellow."""
    drawn = [draw_scene(image, gts[k], preds[k], None if extra is None else extra[k]) for k, image in enumerate(images)]
    return png_data_uri(image_grid(np.stack(drawn), ncols=4))


def write_detection_run_report(path: Path, report: RunReport) -> Path:
    data, preds = report.test_data, report.predictions
    gts = ground_truth(data)
    n = min(report.n_samples, len(data), 8)
    idx = np.linspace(0, len(data) - 1, n).astype(int) if n else np.zeros(0, int)
    errors = landmark_errors(preds, gts, iou=0.5)
    sections: list[dict[str, Any]] = [
        {"title": "Precision and recall", "images": [pr_curves(preds, gts), nme_histogram(errors.nme)]},
        {
            "title": "Sample test scenes (green: truth, red: predicted faces with score >= 0.5)",
            "images": [scene_panel(np.asarray(data.images[idx]), [gts[i] for i in idx], [preds[i] for i in idx])],
        },
    ]
    if report.attack is not None and report.trigger is not None:
        sections.append(_attack_section(report, gts, idx))
    return write_run_report(path, report.title, report.summary, sections, report.config_text)


def _attack_section(report: RunReport, gts: list[dict[str, Any]], idx: np.ndarray) -> dict[str, Any]:
    """Triggered test scenes with the model's faces and the attacker's target (yellow)."""
    assert report.attack is not None and report.trigger is not None
    details = report.attack.details
    triggered = details["predictions"]
    extra: list[Any] = [None] * len(idx)
    if "target_boxes" in details:  # FGA: the fake face's box
        extra = [(details["target_boxes"][i : i + 1], None) for i in idx]
    settings = report.attack_settings
    threshold = settings.score_threshold if isinstance(settings, FaceDetectionAttackSettings) else SHOWN_SCORE
    metrics = {**report.attack.metrics, "trigger": repr(report.trigger), "score_threshold": threshold}
    images = triggered_images(report.test_data, report.trigger, idx)
    return {
        "title": "Backdoor: triggered test scenes (red: the model's faces; yellow: the attacker's target)",
        "metrics": metrics,
        "images": [scene_panel(images, [gts[i] for i in idx], [triggered[i] for i in idx], extra)],
    }
