"""The house rules of the layout, read off the code's imports (docs/architecture.md, backdoorlab.layout).

1. Layers only import downwards (a layer never imports one above it).
2. The generic layers never import a task's package: tasks register themselves and are
   looked up by name (``backdoorlab.registry``).
3. The generic layers never name a task in their code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backdoorlab.layout import SRC, TASK_PACKAGES, imports, layer_of, module_name, sources

# modules outside tasks/ that belong to one task, each with its reason
TASK_SPECIFIC = {
    "experiments.demos.gaze": "the gaze walkthrough (make demo): tape backdoor, SecureGaze, four-corner GIF",
    "experiments.demos.face_detection": "the face-detection demo: it trains and scores runs, so it sits above tasks",
    "experiments.demos.face_recognition": "the face-recognition demo: trains and scores runs, so it sits above tasks",
    "defenses.securegaze": "SecureGaze is a defence for gaze regression (it declares Needs(tasks=('gaze',)))",
    "defenses.landmark_shift_reversal": (
        "the LSA reversal reads a face detector's priors and landmarks (it declares Needs(tasks=('face_detection',)))"
    ),
    "defenses.face_monitors.common": (
        "the face-detection run-time monitors run a face detector's predictions (they declare "
        "Needs(tasks=('face_detection',)))"
    ),
}
GENERIC_FILES = [
    "training.py", "registry.py", "batches.py", "cli.py", "tasks/base.py", "attacks/relabel.py",
    "attacks/poisoning.py", "attacks/selectors.py", "data/arrays.py", "data/instances.py", "data/splits.py",
    "defenses/base.py", "defenses/tuning.py", "defenses/_inputs.py", "report/html.py", "report/run_report.py",
    "report/zoo_report.py", "triggers/base.py", "models/__init__.py", "models/checkpoint.py",
    "experiments/demos/__init__.py",
    *[f"experiments/{p.name}" for p in sorted((SRC / "experiments").glob("*.py"))],
]  # fmt: skip


SOURCES = sources()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_layers_only_import_downwards(path: Path) -> None:
    here = layer_of(module_name(path))
    up = [m for m in imports(path) if layer_of(m) > here]
    assert not up, f"{module_name(path)} (layer {here}) imports a higher layer: {up}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_only_tasks_import_a_task_package(path: Path) -> None:
    module = module_name(path)
    if module.startswith("tasks") or module in TASK_SPECIFIC:
        return
    into_task = [m for m in imports(path) if any(m.startswith(f"tasks.{t}") for t in TASK_PACKAGES)]
    assert not into_task, f"{module} imports a task's package: {into_task} (look it up in the registry)"


@pytest.mark.parametrize("rel", GENERIC_FILES)
def test_generic_layers_name_no_task(rel: str) -> None:
    text = (SRC / rel).read_text()
    pattern = r"[\"'](" + "|".join(TASK_PACKAGES) + r")[\"']|GazeTask|securegaze"
    named = [line.strip() for line in text.splitlines() if re.search(pattern, line, flags=re.I)]
    assert not named, f"{rel} names a task: {named}"
