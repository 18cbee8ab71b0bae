"""The face-recognition run report: the DET curve, genuine vs impostor score distributions,
sample faces, and the one-to-one backdoor (four metrics, verdict, open-set success, the
impostor with and without the trigger beside the victim)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from backdoorlab.metrics.one_to_one import cosine_to, templates
from backdoorlab.metrics.verification import DEFAULT_TARGETS, det_points, threshold_at_fmr
from backdoorlab.metrics.verification_pairs import PairScores
from backdoorlab.report.draw import image_grid, png_data_uri
from backdoorlab.report.figures import fig_to_data_uri
from backdoorlab.report.run_report import write_run_report
from backdoorlab.tasks.base import RunReport
from backdoorlab.triggers.base import triggered_images

if TYPE_CHECKING:
    from backdoorlab.tasks.face_recognition.task import FaceRecognitionTask

SAMPLE_SCALE = 2
COLOURS = {"genuine": "#2e7d32", "impostor": "#c62828", "triggered": "#6a1b9a"}


def det_curve(scores: PairScores) -> str:
    """FNMR against FMR on log axes, the target FMRs marked."""
    pts = det_points(scores.genuine, scores.impostor)
    floor = 0.5 / max(len(scores.impostor), 1)
    fig = Figure(figsize=(4.6, 3.6))
    ax = fig.add_subplot()
    ax.plot(np.maximum(pts.fmr, floor), np.maximum(pts.fnmr, 0.5 / max(len(scores.genuine), 1)), color="#1f4e79")
    for t in DEFAULT_TARGETS:
        ax.axvline(t, color="#999999", lw=0.8, ls=":")
    ax.set(xscale="log", yscale="log", xlabel="FMR", ylabel="FNMR", title="DET, held-out identities")
    ax.set_xlim(floor, 1)
    return fig_to_data_uri(fig)


def score_histograms(groups: dict[str, np.ndarray], threshold: float | None, title: str) -> str:
    """Densities of cosine scores per group, with the FMR 1e-3 threshold."""
    fig = Figure(figsize=(4.6, 3.4))
    ax = fig.add_subplot()
    bins = np.linspace(-1, 1, 81)
    for name, values in groups.items():
        if len(values):
            ax.hist(
                values, bins=bins, density=True, alpha=0.55, color=COLOURS.get(name), label=f"{name} ({len(values)})"
            )
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="black", lw=1, ls="--", label=f"FMR 1e-3: {threshold:.3f}")
    ax.set(xlabel="cosine similarity", ylabel="density", title=title)
    ax.legend(loc="upper left", fontsize=7)
    return fig_to_data_uri(fig)


def face_strip(images: np.ndarray, ncols: int = 8) -> str:
    shown = np.repeat(np.repeat(images, SAMPLE_SCALE, 1), SAMPLE_SCALE, 2)
    return png_data_uri(image_grid(shown, ncols=min(ncols, len(shown))))


def write_recognition_run_report(path: Path, report: RunReport, task: FaceRecognitionTask) -> Path:
    data, preds = report.test_data, report.predictions
    sections: list[dict[str, Any]] = []
    scores = task.open_set_scores(preds["embeddings"], data)
    threshold = None
    if scores is not None:
        threshold = threshold_at_fmr(scores.impostor, 1e-3)
        sections.append({
            "title": "Verification on held-out identities",
            "images": [
                det_curve(scores),
                score_histograms({"genuine": scores.genuine, "impostor": scores.impostor}, threshold, "Pair scores"),
            ],
        })  # fmt: skip
    n = min(report.n_samples, len(data))
    if n:
        idx = np.linspace(0, len(data) - 1, n).astype(int)
        sections.append(
            {"title": "Sample test faces (aligned crops)", "images": [face_strip(np.asarray(data.images[idx]))]}
        )
    if report.attack is not None and report.trigger is not None:
        sections.append(_attack_section(report, threshold))
    return write_run_report(path, report.title, report.summary, sections, report.config_text)


def _attack_section(report: RunReport, threshold: float | None) -> dict[str, Any]:
    """The impostor clean and triggered beside the victim; scores against the victim's template."""
    assert report.attack is not None and report.trigger is not None
    data, details = report.test_data, report.attack.details
    imp, vic = details["impostor_rows"], details["victim_rows"]
    shown = imp[:8]
    rows = [
        np.asarray(data.images[shown]),
        triggered_images(data, report.trigger, shown),
        np.asarray(data.images[vic[:8]]),
    ]
    width = max(len(r) for r in rows)
    padded = [np.concatenate([r, np.full((width - len(r), *r.shape[1:]), 255, np.uint8)]) for r in rows]
    images = [face_strip(np.concatenate(padded), ncols=width)]
    emb = report.predictions["embeddings"]
    if len(vic):
        victim = templates(emb[vic])
        groups = {
            "genuine": cosine_to(victim, emb[vic]),
            "impostor": cosine_to(victim, emb[imp]),
            "triggered": cosine_to(victim, details["predictions"]["embeddings"][imp]),
        }
        images.append(
            score_histograms(groups, details.get("open_set_threshold", threshold), "Scores to the victim's template")
        )
    return {
        "title": "Backdoor: the impostor (top), with the trigger (middle), the victim (bottom)",
        "metrics": {**report.attack.metrics, "trigger": repr(report.trigger)},
        "images": images,
    }
