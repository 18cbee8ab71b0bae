"""The demos, one module per task (``backdoorlab demo [NAME]``, dispatched by :mod:`backdoorlab.experiments.demo`).

Each module here declares ``NAME`` (what ``backdoorlab demo NAME`` calls it), ``DEFAULT``
(run when no name is given; exactly one module says True), ``DEFAULT_OUT`` (its output
folder), ``SUMMARY`` (one line for ``--help`` and for pointing at the other demos) and
``run_demo(out, quick=False, console=None)``. A demo belongs to one task, so these
modules may name and import it; the dispatcher does neither.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in key by key (nested mappings merged, other values replaced)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def packaged_config(file_name: str) -> dict[str, Any]:
    """A demo config shipped inside the package (``backdoorlab/configs/FILE_NAME``), as a mapping."""
    from importlib import resources

    import yaml

    return yaml.safe_load((resources.files("backdoorlab") / "configs" / file_name).read_text())


def with_threads(threads: int, work: Callable[[], T]) -> T:
    """``work()`` with ``threads`` torch threads (the demo config's), the previous count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return work()
    finally:
        torch.set_num_threads(before)


def write_summary(out: Path, payload: dict[str, Any]) -> Path:
    """``out/summary.json``, written atomically."""
    summary = out / "summary.json"
    tmp = summary.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    tmp.replace(summary)
    return summary
