"""Self-contained HTML evaluation report for gaze models.

Why one HTML file with everything inlined: reports are archived next to experiment
outputs and opened on machines without network access (or mailed around), so the file
must not reference anything outside itself. Images are PNG data URIs, CSS is inline,
there is no JavaScript. The layout lives in a jinja2 template shipped as package data;
later sections (attack success, mitigation) are appended through ``extra_sections``
so the template does not need to change for each new analysis.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from backdoorlab import __version__
from backdoorlab.errors import BackdoorLabError
from backdoorlab.geometry import angular_error_deg
from backdoorlab.report.draw import PRED_COLOUR, TRUE_COLOUR, draw_gaze_arrows, png_data_uri
from backdoorlab.report.figures import error_histogram, error_vs_head_pose
from backdoorlab.report.html import (
    format_value,
    load_report_template,
    prepare_extra_sections,
    write_html_atomically,
)

TEMPLATE_NAME = "gaze_report.html"
SAMPLE_TARGET_PX = 176  # displayed size of a sample face; small faces are upsampled to it
SAMPLE_ARROW_FRACTION = 0.7  # arrow length (in-plane gaze) as a fraction of the face size


def _rgb_css(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _error_stats(errors: np.ndarray) -> list[tuple[str, str]]:
    """Distribution summary shown under the histogram (computed, not caller-supplied)."""
    e = errors[np.isfinite(errors)]
    if e.size == 0:
        return [("samples", str(errors.size))]
    return [
        ("samples", str(errors.size)),
        ("mean", f"{e.mean():.2f}°"),
        ("median", f"{np.median(e):.2f}°"),
        ("p90", f"{np.percentile(e, 90):.2f}°"),
        ("max", f"{e.max():.2f}°"),
    ]


def _sample_cards(
    images: np.ndarray,
    true_py: np.ndarray,
    pred_py: np.ndarray,
    origins: np.ndarray | None,
) -> list[dict[str, str]]:
    """One card per sample: face with true/pred arrows, its error, and the angles.

    Arrows are drawn longer than the :func:`draw_gaze_arrows` default because typical
    gaze angles are small (|pitch|, |yaw| < 30°) and short arrows vanish on busy faces.
    """
    n = len(images)
    if n == 0:
        return []
    true_py = np.asarray(true_py, dtype=np.float64).reshape(-1, 2)
    pred_py = np.asarray(pred_py, dtype=np.float64).reshape(-1, 2)
    if len(true_py) != n or len(pred_py) != n:
        raise BackdoorLabError(f"{n} sample images but {len(true_py)} true and {len(pred_py)} predicted gazes")
    h, w = images.shape[1:3]
    scale = max(1, round(SAMPLE_TARGET_PX / max(h, w)))
    drawn = draw_gaze_arrows(
        images,
        [(true_py, TRUE_COLOUR), (pred_py, PRED_COLOUR)],
        origins=origins,
        scale=scale,
        length_fraction=SAMPLE_ARROW_FRACTION,
    )
    errs = angular_error_deg(pred_py, true_py)
    t_deg, p_deg = np.degrees(true_py), np.degrees(pred_py)
    return [
        {
            "uri": png_data_uri(drawn[i]),
            "error": f"{errs[i]:.1f}°",
            "true": f"{t_deg[i, 0]:+.1f}°, {t_deg[i, 1]:+.1f}°",
            "pred": f"{p_deg[i, 0]:+.1f}°, {p_deg[i, 1]:+.1f}°",
        }
        for i in range(n)
    ]


def render_gaze_report(
    *,
    title: str,
    summary: Mapping[str, float | int | str],
    errors_deg: np.ndarray,
    head_pose: np.ndarray | None,
    sample_images: np.ndarray,
    sample_true: np.ndarray,
    sample_pred: np.ndarray,
    sample_origins: np.ndarray | None = None,
    config_text: str = "",
    extra_sections: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The report as an HTML string (see :func:`write_gaze_report` for the arguments)."""
    errors = np.asarray(errors_deg, dtype=np.float64).reshape(-1)
    images = np.asarray(sample_images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise BackdoorLabError(f"sample_images must be uint8 (M, H, W, C); got {images.dtype} {tuple(images.shape)}")
    context = {
        "title": title,
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "summary": [(str(k), format_value(v)) for k, v in summary.items()],
        "error_stats": _error_stats(errors),
        "histogram": error_histogram(errors),
        "head_pose_figure": (error_vs_head_pose(errors, head_pose) if head_pose is not None else None),
        "samples": _sample_cards(images, sample_true, sample_pred, sample_origins),
        "true_colour": _rgb_css(TRUE_COLOUR),
        "pred_colour": _rgb_css(PRED_COLOUR),
        "config_text": config_text,
        "extra_sections": prepare_extra_sections(extra_sections),
    }
    return load_report_template(TEMPLATE_NAME).render(**context)


def write_gaze_report(path: str | os.PathLike[str], **report: Any) -> Path:
    """Write a single self-contained HTML gaze-evaluation report and return its path.

    Args:
        path: output ``.html`` file; parent folders are created.
        title: page title (escaped).
        summary: metric name -> value, shown as a table (escaped).
        errors_deg: (N,) per-sample angular errors in degrees (histogram).
        head_pose: (N, 2) head (pitch, yaw) radians, or ``None`` to skip that section.
        sample_images: uint8 (M, H, W, C) faces to show, C = 3 or 1.
        sample_true, sample_pred: (M, 2) gaze (pitch, yaw) radians, drawn green/red.
        sample_origins: (M, 2) arrow start (x, y) in image pixels; ``None`` = centre.
        config_text: run configuration, shown verbatim (escaped) in a ``<pre>``.
        extra_sections: list of ``{"title": str, "html": str, "images": [data URIs]}``;
            ``html`` is inserted unescaped, so it must come from trusted code.

    The file is written to a temporary sibling and moved into place with
    :func:`os.replace`, so a reader never sees a half-written report.
    """
    return write_html_atomically(path, render_gaze_report(**report))
