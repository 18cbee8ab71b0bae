"""The generic run report: a summary table, the task's sections and the configuration.

Tasks with richer pictures (the gaze report's arrows and error histograms) write their
own page; any other task gets this one from :meth:`backdoorlab.tasks.base.Task.write_report`,
so every run folder has a ``report.html``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from markupsafe import escape

from backdoorlab import __version__
from backdoorlab.report.html import format_value, load_report_template, prepare_extra_sections, write_html_atomically


def _rows(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(str(k), format_value(v)) for k, v in metrics.items() if isinstance(v, int | float | str)]


def render_run_report(
    title: str, summary: Mapping[str, Any], sections: Sequence[Mapping[str, Any]] = (), config_text: str = ""
) -> str:
    """The page as HTML. A section is ``{"title", "metrics"?, "html"?, "images"?}`` (``html`` is trusted markup)."""
    prepared = prepare_extra_sections(sections)
    for sec, raw in zip(prepared, sections, strict=True):
        sec["metrics"] = _rows(raw.get("metrics") or {})
    return load_report_template("run_report.html").render(
        title=title,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        version=__version__,
        summary=_rows(summary),
        extra_sections=prepared,
        config_text=config_text,
    )


def write_run_report(
    path: str | os.PathLike[str],
    title: str,
    summary: Mapping[str, Any],
    sections: Sequence[Mapping[str, Any]] = (),
    config_text: str = "",
) -> Path:
    """Write the page atomically (a reader never sees half of it); return its path."""
    return write_html_atomically(path, render_run_report(title, summary, sections, config_text))


def table_section(
    table: Mapping[str, Mapping[str, Any]], columns: Sequence[tuple[str, str]], note: str
) -> dict[str, Any]:
    """The results table as an HTML section (``columns``: (metric key, header); a missing value is a dash)."""

    def cell(v: Any) -> str:
        return "&ndash;" if v is None else str(escape(format_value(v)))

    head = "".join(f"<th>{escape(label)}</th>" for _, label in columns)
    body = "".join(
        f"<tr><td>{escape(name)}</td>" + "".join(f"<td>{cell(row.get(key))}</td>" for key, _ in columns) + "</tr>"
        for name, row in table.items()
    )
    table_html = f"<table><tr><th>model</th>{head}</tr>{body}</table>"
    return {"title": "Results", "html": f"{table_html}<p>{escape(note)}</p>"}
