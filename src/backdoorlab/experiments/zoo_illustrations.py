"""The images a zoo's detection page shows beside the numbers, rebuilt from the run folders.

The page (``backdoorlab.report.zoo_report``) is handed data and imports nothing from
here; this is the side that knows how to load a run's data and trigger. A run that
cannot be rebuilt (an old folder without its config, a trigger that no longer loads)
becomes a note on the page instead of failing it: the results JSON is the record, the
folders only illustrate it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from backdoorlab.report.zoo_report import FACES_PER_PANEL, TriggerExample


def real_trigger_example(run: Path, n_clean: int, faces: int = FACES_PER_PANEL) -> TriggerExample:
    """The run's real trigger on the first ``faces`` images of its defender clean set (the ones detectors saw)."""
    if not (run / "config.yaml").is_file():
        return TriggerExample(note="no config.yaml in the run folder: the real trigger cannot be rebuilt.")
    try:
        from backdoorlab.experiments.run_folder import Run
        from backdoorlab.triggers.base import triggered_images

        opened = Run(run)
        clean_set, _ = opened.defender_split(n_clean)
        idx = np.arange(min(faces, len(clean_set)))
        return TriggerExample(clean=clean_set.images[idx], triggered=triggered_images(clean_set, opened.trigger, idx))
    except Exception as exc:  # any broken run folder becomes a note saying what broke
        return TriggerExample(note=f"could not apply the real trigger ({type(exc).__name__}: {exc}).")


def real_trigger_examples(run_dirs: Iterable[str], n_clean: int, root: Path = Path(".")) -> dict[str, TriggerExample]:
    """:func:`real_trigger_example` of every run folder that still exists, by ``run_dir`` as given."""
    return {d: real_trigger_example(root / d, n_clean) for d in run_dirs if (root / d).is_dir()}
