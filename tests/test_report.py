"""The gaze report is one self-contained, escaped HTML file with the expected content."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backdoorlab.errors import BackdoorLabError
from backdoorlab.report.draw import png_data_uri
from backdoorlab.report.figures import error_histogram, error_vs_head_pose
from backdoorlab.report.gaze_report import format_value, write_gaze_report


def _inputs(n: int = 200, m: int = 6, channels: int = 3, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "errors_deg": np.abs(rng.normal(5.0, 2.0, size=n)),
        "head_pose": rng.uniform(-0.5, 0.5, size=(n, 2)),
        "sample_images": rng.integers(0, 256, size=(m, 32, 32, channels), dtype=np.uint8),
        "sample_true": rng.uniform(-0.4, 0.4, size=(m, 2)),
        "sample_pred": rng.uniform(-0.4, 0.4, size=(m, 2)),
    }


def _img_srcs(html: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)


def test_report_written_and_self_contained(tmp_path: Path) -> None:
    out = write_gaze_report(
        tmp_path / "sub" / "report.html",
        title="Clean model",
        summary={"mean_error_deg": 5.4321, "n_test": 200, "model": "resnet-tiny"},
        config_text="seed: 0\nepochs: 3",
        **_inputs(m=6),
    )
    assert out == tmp_path / "sub" / "report.html"
    assert out.is_file()
    html = out.read_text(encoding="utf-8")
    assert html.lstrip().startswith("<!DOCTYPE html>")
    assert "--accent: #2f5d9b" in html  # the shared style sheet is included
    # Self-contained: no external references of any kind.
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", html)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    srcs = _img_srcs(html)
    assert len(srcs) == html.count("<img")
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    # histogram + head-pose figure + 6 sample faces
    assert len(srcs) == 2 + 6
    for text in ("mean_error_deg", "5.432", "n_test", "200", "resnet-tiny", "epochs: 3"):
        assert text in html
    assert "Clean model" in html
    # No temp file left behind.
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]


def test_report_without_head_pose_and_grey_faces(tmp_path: Path) -> None:
    inputs = _inputs(m=4, channels=1)
    inputs["head_pose"] = None
    out = write_gaze_report(tmp_path / "r.html", title="t", summary={}, **inputs)
    html = out.read_text(encoding="utf-8")
    assert len(_img_srcs(html)) == 1 + 4
    assert "Error vs head pose" not in html
    assert 'id="config"' not in html  # empty config section skipped


def test_report_escapes_title_summary_and_config(tmp_path: Path) -> None:
    out = write_gaze_report(
        tmp_path / "r.html",
        title="<script>alert(1)</script> & co",
        summary={"<b>key</b>": "<i>v</i>"},
        config_text="a: '<img src=x>'",
        **_inputs(m=1),
    )
    html = out.read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html
    assert "<b>key</b>" not in html and "&lt;b&gt;key&lt;/b&gt;" in html
    assert "<img src=x>" not in html and "&lt;img src=x&gt;" in html
    assert len(_img_srcs(html)) == 2 + 1


def test_extra_sections(tmp_path: Path) -> None:
    fig = png_data_uri(np.zeros((8, 8, 3), dtype=np.uint8))
    out = write_gaze_report(
        tmp_path / "r.html",
        title="t",
        summary={"a": 1},
        extra_sections=[
            {"title": "Attack <success>", "html": "<p class='asr'>ASR 0.97</p>"},
            {"title": "Triggered samples", "images": [fig, fig]},
        ],
        **_inputs(m=2),
    )
    html = out.read_text(encoding="utf-8")
    assert "Attack &lt;success&gt;" in html
    assert "<p class='asr'>ASR 0.97</p>" in html  # trusted markup is not escaped
    assert "Triggered samples" in html
    assert len(_img_srcs(html)) == 2 + 2 + 2


def test_extra_section_rejects_external_image(tmp_path: Path) -> None:
    with pytest.raises(BackdoorLabError):
        write_gaze_report(
            tmp_path / "r.html",
            title="t",
            summary={},
            extra_sections=[{"title": "x", "images": ["https://example.com/a.png"]}],
            **_inputs(m=1),
        )
    assert not (tmp_path / "r.html").exists()


def test_report_overwrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "r.html"
    path.write_text("old", encoding="utf-8")
    write_gaze_report(path, title="new report", summary={}, **_inputs(m=1))
    assert "new report" in path.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_mismatched_samples_raise(tmp_path: Path) -> None:
    inputs = _inputs(m=3)
    inputs["sample_pred"] = inputs["sample_pred"][:2]
    with pytest.raises(BackdoorLabError):
        write_gaze_report(tmp_path / "r.html", title="t", summary={}, **inputs)


def test_figures_are_png_data_uris() -> None:
    rng = np.random.default_rng(0)
    e = np.abs(rng.normal(5, 2, size=100))
    assert error_histogram(e).startswith("data:image/png;base64,")
    assert error_histogram(np.array([np.nan])).startswith("data:image/png;base64,")
    hp = rng.uniform(-0.5, 0.5, size=(100, 2))
    assert error_vs_head_pose(e, hp).startswith("data:image/png;base64,")
    with pytest.raises(BackdoorLabError):
        error_vs_head_pose(e, hp[:10])


def test_figures_close_themselves() -> None:
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    error_histogram(np.arange(10.0))
    error_vs_head_pose(np.arange(10.0), np.zeros((10, 2)))
    assert len(plt.get_fignums()) == before


def test_format_value() -> None:
    assert format_value(3) == "3"
    assert format_value(np.int64(7)) == "7"
    assert format_value(1.23456) == "1.235"
    assert format_value(0.0) == "0.000"
    assert format_value(1e-6) == "1.000e-06"
    assert format_value("abc") == "abc"
    assert format_value(True) == "True"
