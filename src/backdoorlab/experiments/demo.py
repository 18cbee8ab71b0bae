"""``backdoorlab demo [NAME]``: find a demo by name among the modules of :mod:`backdoorlab.experiments.demos`.

The dispatcher names no task: it lists the modules of the demos package, runs the one
asked for (or the one that declares ``DEFAULT = True``), and afterwards says how to run
the others, so ``make demo`` also points at the demos it does not run.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console

from backdoorlab.errors import ConfigError

DEMOS_PACKAGE = "backdoorlab.experiments.demos"


def demo_modules() -> dict[str, ModuleType]:
    """Every demo module by its ``NAME``."""
    package = importlib.import_module(DEMOS_PACKAGE)
    modules = [importlib.import_module(f"{DEMOS_PACKAGE}.{m.name}") for m in pkgutil.iter_modules(package.__path__)]
    return {m.NAME: m for m in modules}


def demo_module(name: str | None = None) -> ModuleType:
    """The demo called ``name`` (its ``NAME`` or one of its ``ALIASES``), or the default one (``DEFAULT = True``)."""
    modules = demo_modules()
    if name is None:
        defaults = [m for m in modules.values() if getattr(m, "DEFAULT", False)]
        if len(defaults) != 1:
            raise ConfigError(f"{len(defaults)} demos declare DEFAULT = True; exactly one must")
        return defaults[0]
    aliases = {alias: m for m in modules.values() for alias in getattr(m, "ALIASES", ())}
    if name not in modules and name not in aliases:
        raise ConfigError(f"unknown demo {name!r} (known: {', '.join(sorted(modules))})")
    return modules.get(name) or aliases[name]


def run_demo(name: str | None, out: Path | None = None, quick: bool = False, console: Console | None = None) -> Any:
    """Run a demo into ``out`` (default: the demo's ``DEFAULT_OUT``), then say how to run the other demos."""
    con = console or Console()
    module = demo_module(name)
    outcome = module.run_demo(Path(out) if out is not None else module.DEFAULT_OUT, quick=quick, console=con)
    for other_name, other in sorted(demo_modules().items()):
        if other is not module:
            con.print(f"another demo: backdoorlab demo {other_name}  ({other.SUMMARY}; --quick for a smoke run)")
    return outcome
