"""Metrics: angular gaze error now; attack metrics, image quality and ROC come later."""

from backdoorlab.metrics.angular import angular_error_deg, summarize_errors

__all__ = ["angular_error_deg", "summarize_errors"]
