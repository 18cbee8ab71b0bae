"""Render a gaze report in headless Chromium and check the page is not blank.

Why: unit tests check the HTML's content, not that a browser actually lays it out and
shows the embedded images. This script builds a report from fake arrays (or takes an
existing one with ``--report``), screenshots it, and records whether the screenshot has
real content (not a single colour).

Outputs ``bench/results/report_screenshot.json`` and ``bench/results/report_screenshot.png``.
Exit status: 0 when the page rendered with content, 1 otherwise (or if Chromium is
missing; install it with ``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from backdoorlab.report.gaze_report import write_gaze_report

RESULTS = Path(__file__).resolve().parent / "results"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """First Chromium-like executable found, or None."""
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def build_fake_report(path: Path, seed: int = 0) -> Path:
    """A report from random arrays: 500 errors, head poses, 16 noise faces."""
    rng = np.random.default_rng(seed)
    n, m = 500, 16
    errors = np.abs(rng.gamma(2.0, 2.5, size=n))
    head_pose = rng.uniform(-0.6, 0.6, size=(n, 2))
    images = rng.integers(0, 256, size=(m, 64, 64, 3), dtype=np.uint8)
    true = rng.uniform(-0.5, 0.5, size=(m, 2))
    pred = true + rng.normal(0.0, 0.12, size=(m, 2))
    summary: dict[str, float | int | str] = {
        "model": "fake-resnet",
        "test samples": n,
        "mean angular error (deg)": float(errors.mean()),
        "median angular error (deg)": float(np.median(errors)),
        "attack success rate": 0.0,
    }
    config = "task: gaze\nmodel:\n  name: fake-resnet\ntrain:\n  epochs: 3\n  lr: 0.001\nseed: 0\n"
    return write_gaze_report(
        path,
        title="Gaze report (fake data) <screenshot check>",
        summary=summary,
        errors_deg=errors,
        head_pose=head_pose,
        sample_images=images,
        sample_true=true,
        sample_pred=pred,
        config_text=config,
    )


def screenshot(chromium: str, report: Path, png: Path, width: int, height: int) -> None:
    """Headless Chromium screenshot of ``report`` into ``png`` (isolated, offline profile)."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={width},{height}",
            report.resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0 or not png.is_file():
            raise RuntimeError(f"chromium failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def non_background_fraction(png: Path) -> float:
    """Fraction of pixels that differ from the most common colour (the page background)."""
    img = cv2.imread(str(png), cv2.IMREAD_COLOR)
    if img is None:
        raise RuntimeError(f"cannot read screenshot {png}")
    flat = img.reshape(-1, 3)
    packed = flat[:, 0].astype(np.int64) << 16 | flat[:, 1].astype(np.int64) << 8 | flat[:, 2]
    values, counts = np.unique(packed, return_counts=True)
    background = values[np.argmax(counts)]
    return float(np.mean(packed != background))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, help="screenshot this existing report")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=2400)
    parser.add_argument(
        "--min-fraction",
        type=float,
        default=0.05,
        help="minimum non-background pixel fraction to call it rendered",
    )
    args = parser.parse_args(argv)

    chromium = find_chromium()
    if chromium is None:
        print(
            "error: Chromium not found (looked for "
            + ", ".join(CHROMIUM_CANDIDATES)
            + "). Install it with: apt-get update && apt-get install -y chromium",
            file=sys.stderr,
        )
        return 1

    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / "report_screenshot.png"
    with tempfile.TemporaryDirectory(prefix="report-screenshot-") as tmp:
        if args.report is not None:
            report = args.report
            if not report.is_file():
                print(f"error: report {report} does not exist", file=sys.stderr)
                return 1
        else:
            # Temporary: 16 noise faces make a ~1 MB page not worth keeping in results/.
            report = build_fake_report(Path(tmp) / "report.html")
        png.unlink(missing_ok=True)  # never let an old screenshot pass for this run
        try:
            screenshot(chromium, report, png, args.width, args.height)
            fraction = non_background_fraction(png)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"error: {exc}", file=sys.stderr)
            fraction = 0.0
    ok = png.is_file() and fraction >= args.min_fraction
    result = {"ok": bool(ok), "png": str(png), "non_background_fraction": round(fraction, 4)}
    (RESULTS / "report_screenshot.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
