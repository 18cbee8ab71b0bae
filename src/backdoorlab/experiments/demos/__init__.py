"""The demos, one module per task (``backdoorlab demo [NAME]``, dispatched by :mod:`backdoorlab.experiments.demo`).

Each module here declares ``NAME`` (what ``backdoorlab demo NAME`` calls it), ``DEFAULT``
(run when no name is given; exactly one module says True), ``DEFAULT_OUT`` (its output
folder), ``SUMMARY`` (one line for ``--help`` and for pointing at the other demos) and
``run_demo(out, quick=False, console=None)``. A demo belongs to one task, so these
modules may name and import it; the dispatcher does neither.
"""

from __future__ import annotations

from typing import Any


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in key by key (nested mappings merged, other values replaced)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out
