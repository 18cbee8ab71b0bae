"""The layers of the package and the imports between them, read from the source with ``ast``.

The architecture (docs/architecture.md) is a stack of layers, each importing only the
ones below it; tasks enter through the registry, never through an import from a
generic layer. This module states the stack once, and reads the imports that hold it
up, for the test that enforces it (tests/test_layering.py) and the picture that shows
it (``python bench/architecture_diagram.py`` -> docs/architecture.png). Nothing here is
imported by the toolkit at run time.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

SRC = Path(__file__).resolve().parent

# lowest first; a module belongs to the first prefix that matches its dotted name
LAYERS: list[tuple[str, ...]] = [
    ("errors", "geometry", "registry", "batches", "layout", "__init__"),
    ("data", "metrics"),
    ("triggers", "models", "report"),
    ("attacks",),
    ("tasks",),
    ("training", "frozen_trunk"),
    ("defenses",),
    ("experiments",),
    ("cli",),
]
#: the task packages under tasks/ (each registers itself; generic code looks them up by name)
TASK_PACKAGES = ("gaze", "face_detection", "face_recognition")


def sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def module_name(path: Path) -> str:
    """``src/backdoorlab/tasks/gaze/task.py`` -> ``tasks.gaze.task`` (a package is its folder's name)."""
    rel = path.relative_to(SRC).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts) or "__init__"


def layer_of(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise ValueError(f"module {module} is in no layer: add it to backdoorlab.layout.LAYERS")


def group_of(module: str) -> str:
    """The box a module is drawn in: its top-level package, or a task package apart."""
    parts = module.split(".")
    if parts[0] == "tasks" and len(parts) > 1 and parts[1] in TASK_PACKAGES:
        return f"tasks.{parts[1]}"
    return parts[0]


def imports(path: Path) -> list[str]:
    """backdoorlab modules imported by ``path`` (module-level and inside functions), without the prefix."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        out += [n.removeprefix("backdoorlab.") for n in names if n.startswith("backdoorlab.")]
    return out


def group_arrows() -> Counter[tuple[str, str]]:
    """(importing group, imported group) -> number of import statements between them."""
    arrows: Counter[tuple[str, str]] = Counter()
    for path in sources():
        a = group_of(module_name(path))
        for m in imports(path):
            b = group_of(m)
            if a != b:
                arrows[(a, b)] += 1
    return arrows
