"""HTML reports: self-contained evaluation pages with embedded figures and sample faces."""

from backdoorlab.report.animation import side_by_side, write_gaze_gif
from backdoorlab.report.attack_report import attack_sections
from backdoorlab.report.draw import (
    MITIGATED_COLOUR,
    PRED_COLOUR,
    TRUE_COLOUR,
    draw_gaze_arrows,
    encode_png,
    gaze_arrow_endpoints,
    image_grid,
    png_data_uri,
)
from backdoorlab.report.figures import error_histogram, error_vs_head_pose, fig_to_data_uri
from backdoorlab.report.gaze_report import render_gaze_report, write_gaze_report

__all__ = [
    "MITIGATED_COLOUR",
    "PRED_COLOUR",
    "TRUE_COLOUR",
    "attack_sections",
    "draw_gaze_arrows",
    "encode_png",
    "error_histogram",
    "error_vs_head_pose",
    "fig_to_data_uri",
    "gaze_arrow_endpoints",
    "image_grid",
    "png_data_uri",
    "render_gaze_report",
    "side_by_side",
    "write_gaze_gif",
    "write_gaze_report",
]
