"""Report sections that show what a backdoor does to a gaze model.

A table of numbers (attack error, success rate) says *how much* a trigger moves the
output but not *what it looks like*, and both matter when judging an attack: a backdoor
that reaches its target with a trigger nobody can see is a different threat from one
with a bright patch. :func:`attack_sections` therefore returns four sections for
:func:`backdoorlab.report.gaze_report.write_gaze_report` (``extra_sections``):

1. the attack metrics, each with a one-line definition, because the regression
   versions of AE/ASR are not standard and an unexplained number invites misreading;
2. clean, triggered and amplified-residual faces, so an invisible trigger (high PSNR)
   can still be seen;
3. predicted gaze arrows on the triggered face next to the clean face, so the reader
   sees the arrow lock onto the target only when the trigger is present;
4. the distribution of angles to the target over the whole triggered test split, with
   the same model on clean inputs as the baseline an ASR should be compared with.

All images are PNG data URIs (the report must stay a single self-contained file) and
every caller-supplied string is escaped, because a section's ``html`` is inserted into
the page unescaped.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

import cv2
import matplotlib.pyplot as plt
import numpy as np
from markupsafe import escape

from backdoorlab.errors import BackdoorLabError
from backdoorlab.geometry import angular_error_deg
from backdoorlab.report.draw import PRED_COLOUR, TRUE_COLOUR, draw_gaze_arrows, image_grid
from backdoorlab.report.figures import _BAR, _MEAN, _STYLE, _finite, fig_to_data_uri
from backdoorlab.report.gaze_report import SAMPLE_ARROW_FRACTION, SAMPLE_TARGET_PX, format_value

#: Colour of the attacker's target arrow: white with a dark halo stays visible on light
#: and dark faces and cannot be confused with the green truth or the red prediction.
TARGET_COLOUR: tuple[int, int, int] = (255, 255, 255)
TARGET_OUTLINE: tuple[int, int, int] = (40, 40, 40)
#: The target arrow is drawn *under* the others and longer than them: when the
#: prediction locks onto the target, the red arrow lies on the target line and the
#: line's thin tail still shows beyond the red tip.
TARGET_ARROW_FRACTION = 1.0

RESIDUAL_TARGET_PX = 128  # displayed size of one face in the residual grid
RESIDUAL_TRIPLES_PER_ROW = 2  # (clean, triggered, residual) triples side by side
RESIDUAL_PERCENTILE = 99.0  # automatic gain maps this percentile of the residual to white
RESIDUAL_MAX_GAIN = 50.0  # beyond this the picture mostly shows 8-bit rounding noise
RESIDUAL_MIN_GAIN = 1.0  # never shrink a residual: a large one is already visible
PNG_COMPRESSION = 6  # zlib level; see _png_uri

# Rows of the metrics table, in display order: key -> (label, unit, definition). The
# definitions follow backdoorlab.metrics.attack; "{tol}" is the tolerance in degrees.
_METRIC_ROWS: dict[str, tuple[str, str, str]] = {
    "trigger": ("Trigger", "", "The trigger applied to every test face."),
    "attack_error_deg": (
        "AE (mean)",
        "°",
        "Attack error: mean angle between the prediction on a triggered input and the attacker's target "
        "(0° = the trigger fully controls the output).",
    ),
    "attack_error_median_deg": (
        "AE (median)",
        "°",
        "Median of the same angles; unlike the mean it is not pulled up by a few samples the trigger misses.",
    ),
    "triggered_true_error_deg": (
        "DAE",
        "°",
        "Mean angle between the prediction on a triggered input and the true gaze: large when the trigger "
        "drags the output away from the truth.",
    ),
    "attack_success_rate": (
        "ASR",
        "",
        "Attack success rate: fraction of triggered predictions within {tol}° of the target.",
    ),
    "asr_tolerance_deg": (
        "ASR tolerance",
        "°",
        "Radius for success and for the exclusion below; ASRs are only comparable at the same tolerance.",
    ),
    "n_triggered": ("Scored samples", "", "Triggered test samples that enter AE, DAE and ASR."),
    "n_excluded_near_target": (
        "Excluded near target",
        "",
        "Samples whose true gaze is already within {tol}° of the target: counted but left out of AE, DAE "
        "and ASR, since a model that ignores the trigger would 'succeed' on them.",
    ),
    "triggered_output_spread_deg": (
        "Output spread",
        "°",
        "Mean angle of the triggered predictions to their mean direction: near 0° when the trigger "
        "collapses all outputs onto one direction.",
    ),
    "psnr_db": (
        "PSNR",
        " dB",
        "Peak signal-to-noise ratio between clean and triggered test images (higher = less visible trigger).",
    ),
    "ssim": (
        "SSIM",
        "",
        "Structural similarity between clean and triggered test images (1 = identical).",
    ),
}


# --------------------------------------------------------------------------- validation


def _images(value: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 4 or arr.dtype != np.uint8 or arr.shape[-1] not in (1, 3):
        raise BackdoorLabError(f"{name} must be uint8 (M, H, W, 1|3); got {arr.dtype} {tuple(arr.shape)}")
    return arr


def _pairs(value: np.ndarray, name: str, m: int) -> np.ndarray:
    """A finite (m, 2) float64 array: gaze (pitch, yaw) or pixel origins (x, y)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BackdoorLabError(f"{name} must be a numeric (M, 2) array: {exc}") from None
    if arr.shape != (m, 2):
        raise BackdoorLabError(f"{name} must have shape ({m}, 2) like the {m} sample images; got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise BackdoorLabError(f"{name} contains NaN or infinite values")
    return arr


def _angles(value: np.ndarray, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BackdoorLabError(f"{name} must be a numeric (N,) array of degrees: {exc}") from None
    if arr.ndim != 1:
        raise BackdoorLabError(f"{name} must have shape (N,); got {arr.shape}")
    return arr


def _positive(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BackdoorLabError(f"{name} must be a number; got {value!r}") from None
    if not math.isfinite(v) or v <= 0.0:
        raise BackdoorLabError(f"{name} must be a finite number > 0; got {value!r}")
    return v


def _numeric(value: Any) -> float | None:
    """``value`` as a float when it is a real number (not a bool or string), else None."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    return float(value)


def _png_uri(image: np.ndarray) -> str:
    """RGB uint8 (H, W, 3) -> PNG data URI, compressed harder than :func:`~backdoorlab.report.draw.png_data_uri`.

    OpenCV's default PNG settings (level 1, run-length strategy) are tuned for speed;
    for noisy faces (blend or noise triggers) and their residuals an explicit zlib level
    makes the PNGs about half as large for a few tens of milliseconds, which matters
    here because these sections hold most of the report's bytes.
    """
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise BackdoorLabError("cv2.imencode failed to encode PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


# --------------------------------------------------------------------------- residual


def amplified_residual(clean: np.ndarray, triggered: np.ndarray, gain: float | None = None) -> tuple[np.ndarray, float]:
    """Grey picture of where the trigger changed a face, and the gain used.

    The residual is ``max over channels |triggered - clean|`` (so a change in any colour
    shows), multiplied by ``gain`` and clipped to 255. Blended or noise triggers change
    pixels by a few grey levels, which is black to the eye; amplifying makes them visible.

    Why the automatic gain looks at the 99th percentile: the maximum is set by a handful of
    pixels (and by patch triggers, which need no amplification), while the percentile
    follows the bulk of the change. One gain is used for all samples, so residuals stay
    comparable across the grid. The gain is clamped to [1, 50]: below 1 would hide a
    residual that is already visible, above 50 mostly amplifies rounding noise. When
    fewer than 1 % of the pixels change (a small patch) the percentile is 0 and the
    maximum is used instead; identical images give gain 1 and an all-black residual.

    Args:
        clean, triggered: uint8 (M, H, W, C) of the same shape.
        gain: fixed multiplier (> 0), or ``None`` for the automatic gain.

    Returns:
        uint8 (M, H, W) residual and the gain applied.
    """
    a = _images(clean, "clean_images")
    b = _images(triggered, "triggered_images")
    if a.shape != b.shape:
        raise BackdoorLabError(
            f"triggered_images must have the same shape as clean_images; got {b.shape} and {a.shape}"
        )
    diff = np.abs(b.astype(np.int16) - a.astype(np.int16)).max(axis=-1).astype(np.float32)
    if gain is None:
        ref = float(np.percentile(diff, RESIDUAL_PERCENTILE)) if diff.size else 0.0
        if ref <= 0.0:
            ref = float(diff.max()) if diff.size else 0.0
        used = RESIDUAL_MIN_GAIN if ref <= 0.0 else float(np.clip(255.0 / ref, RESIDUAL_MIN_GAIN, RESIDUAL_MAX_GAIN))
    else:
        used = _positive(gain, "residual_gain")
    residual = np.clip(np.rint(diff * used), 0, 255).astype(np.uint8)
    return residual, used


def _upscale(images: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement of (M, H, W[, C]) images: keeps single pixels honest."""
    return np.repeat(np.repeat(images, scale, axis=1), scale, axis=2)


def _to_rgb(images: np.ndarray) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _residual_grid(clean: np.ndarray, triggered: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """One RGB picture: (clean | triggered | residual) triples, a few triples per row.

    The faces of a triple sit close together and triples are separated by a wider gap,
    so the eye pairs them without labels drawn into the pixels.
    """
    h, w = clean.shape[1:3]
    scale = max(1, round(RESIDUAL_TARGET_PX / max(h, w)))
    faces = [_upscale(_to_rgb(x), scale) for x in (clean, triggered, residual)]
    triples = np.stack([image_grid(np.stack([f[i] for f in faces]), ncols=3, pad=2) for i in range(len(clean))])
    return image_grid(triples, ncols=RESIDUAL_TRIPLES_PER_ROW, pad=12)


# --------------------------------------------------------------------------- sections


def _metrics_section(metrics: Mapping[str, Any], tol: float) -> dict[str, Any]:
    """Table: label (with the metrics.json key), value, definition; unknown keys last."""
    rows: list[str] = []
    keys = [k for k in _METRIC_ROWS if k in metrics] + [k for k in metrics if k not in _METRIC_ROWS]
    for key in keys:
        value = metrics[key]
        label, unit, definition = _METRIC_ROWS.get(str(key), (str(key), "", ""))
        text = format_value(value)
        number = _numeric(value)
        if number is not None and unit:
            text += unit
        if key == "attack_success_rate" and number is not None and math.isfinite(number):
            text += f" ({number:.1%})"
        rows.append(
            f'<tr><th scope="row">{escape(label)} <code>{escape(str(key))}</code></th>'
            f'<td>{escape(text)}</td><td class="note">{escape(definition.format(tol=f"{tol:g}"))}</td></tr>'
        )
    if rows:
        html = (
            '<table class="metrics">\n<thead><tr><th>metric</th><th>value</th><th>definition</th></tr></thead>\n'
            "<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>\n"
            '<p class="note">Angles are 3D angles between gaze directions, in degrees; AE, DAE and ASR cover the '
            "scored samples of the triggered test split.</p>"
        )
    else:
        html = '<p class="note">No attack metrics were provided.</p>'
    return {"title": "Backdoor attack", "html": html, "images": []}


def _residual_section(clean: np.ndarray, triggered: np.ndarray, gain: float | None) -> dict[str, Any]:
    residual, used = amplified_residual(clean, triggered, gain)
    how = (
        "fixed gain"
        if gain is not None
        else f"automatic gain: the {RESIDUAL_PERCENTILE:g}th percentile of the residual maps to white, "
        f"clamped to {RESIDUAL_MIN_GAIN:g}×–{RESIDUAL_MAX_GAIN:g}×"
    )
    html = (
        f'<p class="note">Each triple: clean face | triggered face | residual '
        f"max<sub>channels</sub>|triggered − clean| × {escape(f'{used:.3g}')} ({escape(how)}), clipped to white. "
        f"Samples run left to right, top to bottom; black = unchanged pixel.</p>"
    )
    return {
        "title": "Clean, triggered and residual",
        "html": html,
        "images": [_png_uri(_residual_grid(clean, triggered, residual))],
    }


def _draw_predictions(
    images: np.ndarray,
    true_gaze: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    origins: np.ndarray | None,
    scale: int,
) -> np.ndarray:
    """Faces upscaled by ``scale`` with the target under truth and prediction.

    Two passes because :func:`draw_gaze_arrows` draws every arrow of a call with the
    same thickness: the target goes first, thin and long; the second pass draws on the
    already enlarged image at scale 1, with origins and thickness converted to match
    the sample cards of the main report.
    """
    out = draw_gaze_arrows(
        images,
        [(target, TARGET_COLOUR)],
        origins=origins,
        scale=scale,
        length_fraction=TARGET_ARROW_FRACTION,
        thickness=max(1, scale // 3),
        outline=TARGET_OUTLINE,
    )
    return draw_gaze_arrows(
        out,
        [(true_gaze, TRUE_COLOUR), (pred, PRED_COLOUR)],
        origins=None if origins is None else origins * scale,
        scale=1,
        length_fraction=SAMPLE_ARROW_FRACTION,
        thickness=max(1, round(scale / 2)),
    )


def _css(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _prediction_section(
    clean: np.ndarray,
    triggered: np.ndarray,
    true_gaze: np.ndarray,
    pred_clean: np.ndarray,
    pred_triggered: np.ndarray,
    target: np.ndarray,
    origins: np.ndarray | None,
    tol: float,
) -> dict[str, Any]:
    m = len(clean)
    h, w = clean.shape[1:3]
    scale = max(1, round(SAMPLE_TARGET_PX / max(h, w)))
    both = np.concatenate([triggered, clean])
    drawn = _draw_predictions(
        both,
        np.concatenate([true_gaze, true_gaze]),
        np.concatenate([pred_triggered, pred_clean]),
        np.concatenate([target, target]),
        None if origins is None else np.concatenate([origins, origins]),
        scale,
    )
    to_target_trig = angular_error_deg(pred_triggered, target)
    to_target_clean = angular_error_deg(pred_clean, target)
    true_to_target = angular_error_deg(true_gaze, target)
    tgt_deg = np.degrees(target)
    pred_c = _css(PRED_COLOUR)
    figures: list[str] = []
    for i in range(m):
        pair = image_grid(np.stack([drawn[i], drawn[m + i]]), ncols=2, pad=3)
        hit = " ✓" if to_target_trig[i] <= tol else ""
        near = " (within tolerance: excluded from the metrics)" if true_to_target[i] <= tol else ""
        figures.append(
            "<figure>\n"
            f'<img src="{escape(_png_uri(pair))}" alt="sample {i + 1}: triggered and clean face">\n'
            "<figcaption>"
            f'<span class="err">{to_target_trig[i]:.1f}°{hit}</span> to target with trigger, '
            f"{to_target_clean[i]:.1f}° without"
            f'<span class="detail">true gaze → target {true_to_target[i]:.1f}°{escape(near)}</span>'
            f'<span class="detail"><span class="tag">target</span> '
            f"{tgt_deg[i, 0]:+.1f}°, {tgt_deg[i, 1]:+.1f}°</span>"
            "</figcaption>\n</figure>"
        )
    html = (
        '<div class="legend">\n'
        f'<span><span class="swatch" style="background: {_css(TRUE_COLOUR)}"></span>ground truth</span>\n'
        f'<span><span class="swatch" style="background: {pred_c}"></span>prediction</span>\n'
        f'<span><span class="swatch" style="background: {_css(TARGET_COLOUR)}; '
        f"outline: 1px solid {_css(TARGET_OUTLINE)}\"></span>attacker's target (thin, longer, underneath)</span>\n"
        "</div>\n"
        '<p class="note">Left of each pair: the triggered face and the prediction on it; right: the same face '
        "without the trigger and the prediction on it. A working backdoor puts the red arrow on the target line "
        f"only on the left. Captions: angle between prediction and target (✓ = within {escape(f'{tol:g}')}°); "
        "(pitch, yaw) in degrees, positive = up / image-left.</p>\n"
        '<div class="samples wide">\n' + "\n".join(figures) + "\n</div>"
    )
    return {"title": "Predictions on triggered inputs", "html": html, "images": []}


def _angle_histogram(triggered: np.ndarray, clean: np.ndarray | None, tol: float, asr: float | None) -> str:
    """Histogram of angles to the target, clean baseline overlaid, tolerance marked.

    Both histograms share bin edges so their bars line up; the clean one is drawn
    transparent on top. The share within tolerance in each label counts every sample in
    the histogram, while the reported ASR leaves out near-target samples, so the two may
    differ slightly; the tolerance line carries the reported ASR.
    """
    t = _finite(triggered)
    c = _finite(clean) if clean is not None else None
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 3.3))
        pooled = t if c is None else np.concatenate([t, c])
        if pooled.size:
            hi = max(float(pooled.max()), 2.0 * tol)
            bins = np.linspace(0.0, hi, int(np.clip(np.sqrt(pooled.size), 10, 60)) + 1)
            if t.size:
                ax.hist(
                    t,
                    bins=bins,
                    color=_BAR,
                    alpha=0.85,
                    edgecolor="white",
                    linewidth=0.5,
                    label=f"triggered inputs (n = {t.size}, {np.mean(t <= tol):.1%} ≤ {tol:g}°)",
                )
            if c is not None and c.size:
                ax.hist(
                    c,
                    bins=bins,
                    color="#7f7f7f",
                    alpha=0.45,
                    edgecolor="white",
                    linewidth=0.5,
                    label=f"clean inputs, baseline (n = {c.size}, {np.mean(c <= tol):.1%} ≤ {tol:g}°)",
                )
            tol_label = f"tolerance {tol:g}°" + (f", reported ASR {asr:.1%}" if asr is not None else "")
            ax.axvline(tol, color=_MEAN, linewidth=1.6, linestyle="--", label=tol_label)
            ax.set_xlim(0.0, hi)
            ax.legend(frameon=False)
        else:
            ax.text(0.5, 0.5, "no finite angles", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("angle between prediction and target (degrees)")
        ax.set_ylabel("samples")
        ax.set_title("Angle to the attacker's target")
        fig.tight_layout()
    return fig_to_data_uri(fig)


def _histogram_section(
    triggered: np.ndarray, clean: np.ndarray | None, tol: float, metrics: Mapping[str, Any]
) -> dict[str, Any]:
    asr = _numeric(metrics.get("attack_success_rate"))
    baseline = (
        " The grey histogram is the same model on the clean faces: how close to the target it comes without "
        "the trigger."
        if clean is not None
        else ""
    )
    html = (
        '<p class="note">Angle between the prediction on each triggered test face and its target, over the '
        f"whole test split.{baseline} The shares in the legend count every sample shown; the reported ASR "
        "leaves out samples whose true gaze is already within tolerance of the target.</p>"
    )
    return {
        "title": "Distribution of angles to the target",
        "html": html,
        "images": [_angle_histogram(triggered, clean, tol, asr)],
    }


def attack_sections(
    *,
    metrics: Mapping[str, float | int | str],
    clean_images: np.ndarray,
    triggered_images: np.ndarray,
    true_gaze: np.ndarray,
    pred_clean: np.ndarray,
    pred_triggered: np.ndarray,
    target_gaze: np.ndarray,
    origins: np.ndarray | None,
    angle_to_target_triggered: np.ndarray,
    angle_to_target_clean: np.ndarray | None = None,
    tolerance_deg: float = 5.0,
    residual_gain: float | None = None,
) -> list[dict[str, Any]]:
    """Report sections that show a backdoor's numbers, its trigger and its effect.

    The result is ready for ``write_gaze_report(..., extra_sections=...)``: four
    ``{"title", "html", "images"}`` dicts, titled "Backdoor attack", "Clean, triggered
    and residual", "Predictions on triggered inputs" and "Distribution of angles to the
    target" (see the module docstring for why each is there).

    Args:
        metrics: attack metrics as returned by
            :func:`backdoorlab.experiments.attack.evaluate_attack` (``attack_error_deg``,
            ``attack_success_rate``, ``psnr_db``, ...) plus optionally ``trigger``, a
            short description. Known keys are shown first with a definition, others after
            them; every value is escaped.
        clean_images: uint8 (M, H, W, C) sample test faces, C = 1 or 3.
        triggered_images: the same faces with the trigger, same shape.
        true_gaze: (M, 2) true (pitch, yaw) radians of the samples.
        pred_clean: (M, 2) model output on the clean faces.
        pred_triggered: (M, 2) model output on the triggered faces.
        target_gaze: (M, 2) the attacker's target for each sample.
        origins: (M, 2) arrow start (x, y) in image pixels, or ``None`` for the centre.
        angle_to_target_triggered: (N,) degrees between prediction and target over the
            whole triggered test split (NaNs are dropped from the histogram).
        angle_to_target_clean: (N,) the same for the model on clean inputs, drawn as the
            baseline; ``None`` leaves it out.
        tolerance_deg: success radius in degrees; must match ``metrics["asr_tolerance_deg"]``
            when that is given, so the histogram line and the ASR agree.
        residual_gain: multiplier for the residual picture; ``None`` picks it from the
            data (99th percentile to white, clamped to 1×–50×, see :func:`amplified_residual`).

    Raises:
        BackdoorLabError: naming the argument at fault, for images that are not uint8
            (M, H, W, 1|3) or differ in shape, gaze/origin arrays that are not finite
            (M, 2), angle arrays that are not 1-D or differ in length, or a tolerance or
            gain that is not a finite number > 0.
    """
    if not isinstance(metrics, Mapping):
        raise BackdoorLabError(f"metrics must be a mapping of name -> value; got {type(metrics).__name__}")
    tol = _positive(tolerance_deg, "tolerance_deg")
    reported_tol = _numeric(metrics.get("asr_tolerance_deg"))
    if reported_tol is not None and not math.isclose(reported_tol, tol, rel_tol=1e-6, abs_tol=1e-9):
        raise BackdoorLabError(
            f"tolerance_deg={tol:g} differs from metrics['asr_tolerance_deg']={reported_tol:g}: "
            "the histogram and the ASR would use different tolerances"
        )
    if residual_gain is not None:
        _positive(residual_gain, "residual_gain")
    clean = _images(clean_images, "clean_images")
    trig = _images(triggered_images, "triggered_images")
    if trig.shape != clean.shape:
        raise BackdoorLabError(
            f"triggered_images must have the same shape as clean_images; got {trig.shape} and {clean.shape}"
        )
    m = len(clean)
    true = _pairs(true_gaze, "true_gaze", m)
    p_clean = _pairs(pred_clean, "pred_clean", m)
    p_trig = _pairs(pred_triggered, "pred_triggered", m)
    target = _pairs(target_gaze, "target_gaze", m)
    orig = None if origins is None else _pairs(origins, "origins", m)
    a_trig = _angles(angle_to_target_triggered, "angle_to_target_triggered")
    a_clean = None
    if angle_to_target_clean is not None:
        a_clean = _angles(angle_to_target_clean, "angle_to_target_clean")
        if len(a_clean) != len(a_trig):
            raise BackdoorLabError(
                f"angle_to_target_clean has {len(a_clean)} values but angle_to_target_triggered has "
                f"{len(a_trig)}: both must cover the same test split"
            )

    sections = [_metrics_section(metrics, tol)]
    if m:
        sections.append(_residual_section(clean, trig, residual_gain))
        sections.append(_prediction_section(clean, trig, true, p_clean, p_trig, target, orig, tol))
    else:
        empty = '<p class="note">No sample faces were provided.</p>'
        sections.append({"title": "Clean, triggered and residual", "html": empty, "images": []})
        sections.append({"title": "Predictions on triggered inputs", "html": empty, "images": []})
    sections.append(_histogram_section(a_trig, a_clean, tol, metrics))
    return sections


__all__ = ["TARGET_COLOUR", "amplified_residual", "attack_sections"]
