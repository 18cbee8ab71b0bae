"""Angular gaze error: the 3D angle between predicted and true gaze vectors, in degrees.

Why 3D angle and not per-axis error: pitch/yaw errors are not comparable across the
sphere (a yaw error matters less looking up), and the literature reports the 3D
angle. The conversion follows :mod:`backdoorlab.geometry`.
"""

from __future__ import annotations

import numpy as np

from backdoorlab.geometry import angular_error_deg


def summarize_errors(errors_deg: np.ndarray) -> dict[str, float]:
    """Mean, median, 90th percentile and max of per-sample errors."""
    e = np.asarray(errors_deg, dtype=np.float64)
    if e.size == 0:
        raise ValueError("no errors to summarise")
    return {
        "mean": float(e.mean()),
        "median": float(np.median(e)),
        "p90": float(np.percentile(e, 90)),
        "max": float(e.max()),
    }


__all__ = ["angular_error_deg", "summarize_errors"]
