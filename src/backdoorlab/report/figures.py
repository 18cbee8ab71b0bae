"""Matplotlib figure builders that return PNG data URIs for the HTML reports.

Why data URIs: a report must be a single file that opens anywhere (mailed, archived,
viewed offline), so every figure is embedded. The Agg backend is forced so figure
building works on headless machines and never opens a window.
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from backdoorlab.errors import BackdoorLabError

_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
_BAR = "#4c72b0"
_MEAN = "#c44e52"
_MEDIAN = "#dd8452"


def fig_to_data_uri(fig: Figure, dpi: int = 110) -> str:
    """Render ``fig`` to a PNG data URI and close it (pyplot keeps figures alive)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _finite(errors_deg: np.ndarray) -> np.ndarray:
    """Flatten to float64 and drop NaN/inf, which would break binning."""
    e = np.asarray(errors_deg, dtype=np.float64).reshape(-1)
    return e[np.isfinite(e)]


def error_histogram(errors_deg: np.ndarray, title: str = "Angular error") -> str:
    """Histogram of per-sample angular errors with mean and median marked.

    Mean and median are both shown because backdoored or failing models often have a
    heavy tail: a mean far above the median is the first visual hint of it.
    """
    e = _finite(errors_deg)
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.0, 3.2))
        if e.size:
            bins = int(np.clip(np.sqrt(e.size), 10, 60))
            ax.hist(e, bins=bins, color=_BAR, alpha=0.85, edgecolor="white", linewidth=0.5)
            mean, median = float(e.mean()), float(np.median(e))
            ax.axvline(mean, color=_MEAN, linewidth=1.6, label=f"mean {mean:.2f}°")
            ax.axvline(
                median,
                color=_MEDIAN,
                linewidth=1.6,
                linestyle="--",
                label=f"median {median:.2f}°",
            )
            ax.legend(frameon=False)
        else:
            ax.text(0.5, 0.5, "no finite errors", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("angular error (degrees)")
        ax.set_ylabel("samples")
        ax.set_title(title)
        fig.tight_layout()
    return fig_to_data_uri(fig)


def _binned_means(x: np.ndarray, y: np.ndarray, nbins: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres and mean y of equal-width x bins; empty bins are dropped."""
    if x.size == 0:
        return np.empty(0), np.empty(0)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.array([lo]), np.array([float(y.mean())])
    edges = np.linspace(lo, hi, nbins + 1)
    idx = np.clip(np.digitize(x, edges) - 1, 0, nbins - 1)
    counts = np.bincount(idx, minlength=nbins)
    sums = np.bincount(idx, weights=y, minlength=nbins)
    keep = counts > 0
    centres = 0.5 * (edges[:-1] + edges[1:])
    return centres[keep], sums[keep] / counts[keep]


def error_vs_head_pose(errors_deg: np.ndarray, head_pose: np.ndarray, nbins: int = 12) -> str:
    """Two panels: error vs head pitch and vs head yaw (degrees), binned means on a scatter.

    Gaze estimators usually degrade at extreme head poses; showing this per model lets a
    reader tell a pose-dependent weakness from an attack-induced one.

    Args:
        errors_deg: (N,) angular errors in degrees.
        head_pose: (N, 2) head (pitch, yaw) in radians.
        nbins: number of equal-width bins for the mean curve.
    """
    e = np.asarray(errors_deg, dtype=np.float64).reshape(-1)
    hp = np.asarray(head_pose, dtype=np.float64)
    if hp.ndim != 2 or hp.shape[1] != 2 or len(hp) != len(e):
        raise BackdoorLabError(f"head_pose must be (N, 2) with N = {len(e)}; got {tuple(hp.shape)}")
    ok = np.isfinite(e) & np.isfinite(hp).all(axis=1)
    e, hp_deg = e[ok], np.degrees(hp[ok])
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.2), sharey=True)
        for ax, col, name in zip(axes, (0, 1), ("pitch", "yaw"), strict=True):
            x = hp_deg[:, col]
            ax.scatter(x, e, s=6, color=_BAR, alpha=0.25, linewidths=0)
            cx, my = _binned_means(x, e, nbins)
            ax.plot(cx, my, color=_MEAN, marker="o", markersize=3.5, linewidth=1.6, label="binned mean")
            ax.set_xlabel(f"head {name} (degrees)")
            ax.set_title(f"Error vs head {name}")
        axes[0].set_ylabel("angular error (degrees)")
        axes[0].legend(frameon=False)
        fig.tight_layout()
    return fig_to_data_uri(fig)
