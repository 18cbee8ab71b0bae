"""Helpers the bench-table modules share: reading a result JSON, wording a target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def load_result(name: str) -> dict[str, Any] | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def target(text: str, met: bool) -> str:
    return f"{text} ({'met' if met else 'missed'})"
