"""Shared helpers for bench scripts: JSON results with provenance, and the README table."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def provenance() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def write_result(name: str, payload: dict[str, Any], folder: Path = RESULTS) -> Path:
    """Write ``FOLDER/NAME.json`` atomically (``bench/results`` unless a caller, such as a test, names another)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**payload, "provenance": provenance()}, indent=2, sort_keys=True))
    tmp.replace(out)
    return out
