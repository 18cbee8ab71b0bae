"""Run every bench script in turn (a few hours on 2 cores), then print the table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = [
    ["renderer_throughput.py"],
    ["train_loop_throughput.py"],
    ["clean_gaze.py", "--which", "gaze_cnn"],
    ["clean_gaze.py", "--which", "gaze_cnn_1000"],
    ["clean_gaze.py", "--which", "gaze_cnn_1000_long"],
    ["clean_gaze.py", "--which", "gaze_cnn_400"],
    ["clean_gaze.py", "--which", "masked"],
    ["clean_gaze.py", "--which", "resnet18"],
    ["trigger_throughput.py"],
    ["trigger_gallery.py"],
    ["attacks.py", "--all", "--jobs", "2"],
    ["report_screenshot.py"],
]

if __name__ == "__main__":
    for step in STEPS:
        print("==>", " ".join(step), flush=True)
        subprocess.run([sys.executable, str(HERE / step[0]), *step[1:]], check=True)
    subprocess.run([sys.executable, str(HERE / "table.py"), "--readme"], check=True)
