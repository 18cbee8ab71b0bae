"""Attack report sections: render into the gaze report, stay self-contained, escape, validate."""

from __future__ import annotations

import base64
import re
from typing import Any

import cv2
import numpy as np
import pytest

from backdoorlab.errors import BackdoorLabError
from backdoorlab.report import attack_sections
from backdoorlab.report.attack_report import RESIDUAL_MAX_GAIN, RESIDUAL_TARGET_PX, amplified_residual
from backdoorlab.report.gaze_report import render_gaze_report

TITLES = (
    "Backdoor attack",
    "Clean, triggered and residual",
    "Predictions on triggered inputs",
    "Distribution of angles to the target",
)


def _metrics(trigger: str = "patch 15% white, bottom right") -> dict[str, Any]:
    return {
        "trigger": trigger,
        "attack_error_deg": 3.25,
        "attack_error_median_deg": 2.5,
        "triggered_true_error_deg": 31.0,
        "attack_success_rate": 0.875,
        "asr_tolerance_deg": 5.0,
        "n_triggered": 98,
        "n_excluded_near_target": 2,
        "psnr_db": 24.5,
        "ssim": 0.91,
        "triggered_output_spread_deg": 2.1,
    }


def _inputs(m: int = 4, size: int = 32, n: int = 100, seed: int = 0, **changes: Any) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    # Faces avoid pure black, so black pixels in the residual grid can only be residual.
    clean = rng.integers(10, 256, size=(m, size, size, 3), dtype=np.uint8)
    triggered = clean.copy()
    triggered[:, -8:, -8:] = 255  # a white patch bottom right
    target = np.tile([[0.3, -0.4]], (m, 1))
    kwargs: dict[str, Any] = {
        "metrics": _metrics(),
        "clean_images": clean,
        "triggered_images": triggered,
        "true_gaze": rng.uniform(-0.3, 0.3, size=(m, 2)),
        "pred_clean": rng.uniform(-0.3, 0.3, size=(m, 2)),
        "pred_triggered": target + rng.normal(0.0, 0.02, size=(m, 2)),
        "target_gaze": target,
        "origins": rng.uniform(8, size - 8, size=(m, 2)),
        "angle_to_target_triggered": np.abs(rng.normal(2.0, 2.0, size=n)),
        "angle_to_target_clean": np.abs(rng.normal(30.0, 8.0, size=n)),
    }
    kwargs.update(changes)
    return kwargs


def _render(sections: list[dict[str, Any]], m: int = 4) -> str:
    rng = np.random.default_rng(1)
    return render_gaze_report(
        title="Backdoored model",
        summary={"mean_error_deg": 4.2},
        errors_deg=np.abs(rng.normal(4.0, 1.0, size=50)),
        head_pose=None,
        sample_images=rng.integers(0, 256, size=(m, 32, 32, 3), dtype=np.uint8),
        sample_true=rng.uniform(-0.3, 0.3, size=(m, 2)),
        sample_pred=rng.uniform(-0.3, 0.3, size=(m, 2)),
        extra_sections=sections,
    )


def _img_srcs(html: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)


def _decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    raw = np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), dtype=np.uint8)
    return cv2.cvtColor(cv2.imdecode(raw, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_sections_render_into_a_self_contained_report() -> None:
    sections = attack_sections(**_inputs(m=4))
    assert [s["title"] for s in sections] == list(TITLES)
    html = _render(sections)
    for title in TITLES:
        assert f"<h2>{title}</h2>" in html
    srcs = _img_srcs(html)
    assert len(srcs) == html.count("<img")
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    # Main report: histogram + 4 sample cards; attack: residual grid + 4 pairs + histogram.
    assert len(srcs) == (1 + 4) + (1 + 4 + 1)
    assert 'src="http' not in html and "file:" not in html and "<link" not in html
    # Metric rows carry their definitions and units.
    assert "attack_error_deg" in html and "3.250°" in html
    assert "87.5%" in html and "within 5° of the target" in html
    assert "24.500 dB" in html


def test_metric_values_and_unknown_keys_are_escaped() -> None:
    metrics = {**_metrics(trigger="<script>alert('x')</script>"), "<b>extra</b>": "<img src=x>"}
    html = _render(attack_sections(**_inputs(metrics=metrics)))
    assert "<script" not in html
    assert "&lt;script&gt;" in html
    assert "<b>extra</b>" not in html and "&lt;b&gt;extra&lt;/b&gt;" in html
    assert "<img src=x>" not in html


def test_identical_images_give_a_black_residual_without_dividing_by_zero() -> None:
    faces = np.random.default_rng(3).integers(10, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    with np.errstate(all="raise"):
        residual, gain = amplified_residual(faces, faces.copy())
        sections = attack_sections(**_inputs(clean_images=faces, triggered_images=faces.copy()))
    assert residual.shape == (4, 32, 32) and residual.dtype == np.uint8
    assert not residual.any()
    assert gain == 1.0
    grid = _decode(sections[1]["images"][0])
    # Every pure black pixel of the grid lies in a residual cell, and all residual cells are black.
    side = max(1, round(RESIDUAL_TARGET_PX / 32)) * 32
    assert int(np.all(grid == 0, axis=-1).sum()) == 4 * side * side
    assert "× 1 (" in sections[1]["html"]


def test_automatic_gain_is_clamped_and_an_explicit_gain_is_used() -> None:
    clean = np.full((2, 16, 16, 3), 100, np.uint8)
    faint = clean + np.uint8(3)  # a 3-level change everywhere: 255 / 3 > the cap
    residual, gain = amplified_residual(clean, faint)
    assert gain == RESIDUAL_MAX_GAIN
    assert np.all(residual == round(3 * RESIDUAL_MAX_GAIN))

    strong = clean.copy()
    strong[..., 0] = 250  # a 150-level change: already visible, never shrunk below 1x
    residual, gain = amplified_residual(clean, strong)
    assert gain == pytest.approx(255 / 150)

    sparse = clean.copy()
    sparse[0, 0, 0, 1] = 151  # one changed pixel (< 1 %): the percentile is 0, the maximum is used
    residual, gain = amplified_residual(clean, sparse)
    assert gain == pytest.approx(5.0)
    assert residual[0, 0, 0] == 255 and residual.sum() == 255

    residual, gain = amplified_residual(clean, faint, gain=2.0)
    assert gain == 2.0 and np.all(residual == 6)
    sections = attack_sections(**_inputs(residual_gain=2.0))
    assert "× 2 (fixed gain)" in sections[1]["html"]


@pytest.mark.parametrize("name", ["true_gaze", "pred_clean", "pred_triggered", "target_gaze", "origins"])
def test_mismatched_lengths_raise_naming_the_argument(name: str) -> None:
    kwargs = _inputs(m=4)
    kwargs[name] = kwargs[name][:3]
    with pytest.raises(BackdoorLabError, match=name):
        attack_sections(**kwargs)


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"triggered_images": np.zeros((4, 32, 30, 3), np.uint8)}, "triggered_images"),
        ({"clean_images": np.zeros((4, 32, 32, 3), np.float32)}, "clean_images"),
        ({"clean_images": np.zeros((32, 32, 3), np.uint8)}, "clean_images"),
        ({"angle_to_target_clean": np.zeros(99)}, "angle_to_target_clean"),
        ({"angle_to_target_triggered": np.zeros((10, 10))}, "angle_to_target_triggered"),
        ({"target_gaze": np.full((4, 2), np.nan)}, "target_gaze"),
        ({"tolerance_deg": 3.0}, "asr_tolerance_deg"),
        ({"tolerance_deg": 0.0}, "tolerance_deg"),
        ({"residual_gain": -1.0}, "residual_gain"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(changes: dict[str, Any], name: str) -> None:
    with pytest.raises(BackdoorLabError, match=name):
        attack_sections(**_inputs(m=4, **changes))


def test_without_clean_baseline_origins_or_samples() -> None:
    sections = attack_sections(**_inputs(angle_to_target_clean=None, origins=None))
    assert len(sections) == 4
    assert "grey histogram" not in sections[3]["html"]
    assert "grey histogram" in attack_sections(**_inputs())[3]["html"]
    html = _render(sections)
    assert all(s.startswith("data:image/png;base64,") for s in _img_srcs(html))

    # Grey faces, NaN angles and no sample faces at all still give a report.
    grey = np.random.default_rng(5).integers(0, 256, size=(2, 24, 24, 1), dtype=np.uint8)
    angles = np.array([1.0, np.nan, 40.0])
    sections = attack_sections(
        **_inputs(
            m=2,
            clean_images=grey,
            triggered_images=255 - grey,
            angle_to_target_triggered=angles,
            angle_to_target_clean=None,
        )
    )
    assert len(_img_srcs(_render(sections))) == (1 + 4) + (1 + 2 + 1)
    empty = np.zeros((0, 32, 32, 3), np.uint8)
    none = np.zeros((0, 2))
    sections = attack_sections(
        metrics={},
        clean_images=empty,
        triggered_images=empty,
        true_gaze=none,
        pred_clean=none,
        pred_triggered=none,
        target_gaze=none,
        origins=None,
        angle_to_target_triggered=np.zeros(0),
    )
    html = _render(sections)
    assert "No sample faces were provided." in html and "No attack metrics were provided." in html
