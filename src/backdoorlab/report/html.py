"""Pieces every self-contained HTML report shares: value formatting, templates, atomic writes, sections.

Why one HTML file with everything inlined: reports are archived next to experiment
outputs and opened on machines without network access (or mailed around), so the file
must not reference anything outside itself. Images are PNG data URIs, CSS is inline,
there is no JavaScript. Layouts live in jinja2 templates shipped as package data.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup

from backdoorlab.errors import BackdoorLabError


def format_value(value: float | int | str) -> str:
    """Human-readable metric value: ints as is, floats with 3 decimals (or scientific)."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if v == 0.0 or 1e-3 <= abs(v) < 1e6:
            return f"{v:.3f}"
        return f"{v:.3e}"
    return str(value)


def load_report_template(name: str) -> jinja2.Template:
    """A report template from package data (works from a wheel or a source checkout).

    Templates may ``{% include %}`` one another: every report page includes
    ``_base_style.css``, so the pages share one style sheet instead of copies of it.
    """
    folder = resources.files("backdoorlab.report") / "templates"
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda n: (folder / n).read_text(encoding="utf-8")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(name)


def write_html_atomically(path: str | os.PathLike[str], html: str) -> Path:
    """Write ``html`` to a temporary sibling and move it into place: a reader never sees half a page."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(html)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _check_data_uri(uri: str, where: str) -> str:
    """Refuse anything but an inline image, so extra sections cannot break self-containment."""
    if not isinstance(uri, str) or not uri.startswith("data:image/"):
        raise BackdoorLabError(f"{where}: images must be 'data:image/...' URIs; got {uri!r:.60}")
    return uri


def prepare_extra_sections(sections: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Validate extra sections; their ``html`` is trusted markup supplied by our own code."""
    out: list[dict[str, Any]] = []
    for i, sec in enumerate(sections or []):
        if "title" not in sec:
            raise BackdoorLabError(f"extra_sections[{i}] needs a 'title'")
        images = [
            _check_data_uri(u, f"extra_sections[{i}]['images'][{j}]") for j, u in enumerate(sec.get("images", []) or [])
        ]
        html = sec.get("html")
        out.append(
            {
                "title": str(sec["title"]),
                "html": Markup(html) if html else None,
                "images": images,
                "metrics": [],  # (name, formatted value) rows; a page may fill them in
            }
        )
    return out
