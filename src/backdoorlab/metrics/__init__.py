"""Metrics: angular gaze error, backdoor attack metrics and trigger image quality; ROC comes later."""

from backdoorlab.metrics.angular import angular_error_deg, summarize_errors
from backdoorlab.metrics.attack import attack_metrics, target_spread_deg
from backdoorlab.metrics.image_quality import PSNR_CAP_DB, mean_psnr_db, psnr_db, ssim

__all__ = [
    "PSNR_CAP_DB",
    "angular_error_deg",
    "attack_metrics",
    "mean_psnr_db",
    "psnr_db",
    "ssim",
    "summarize_errors",
    "target_spread_deg",
]
