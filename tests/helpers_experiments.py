"""Shared helpers for the model/training/experiment tests (not collected: no ``test_`` prefix).

Rendering synthetic faces is the slow part of these tests, so one tiny dataset is
rendered once per process (eagerly, no ``torch.compile``) and, where a test goes
through the config/CLI path, copied into that test's synthetic cache folder exactly
where :func:`load_or_synthesize` looks for it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.synthetic import SyntheticGazeSpec, synthesize

# The same spec as ``demo --quick`` (face, seed 0), so the demo test reuses the cache entry.
TINY_SPEC: dict[str, Any] = {"identities": 6, "images_per_identity": 40, "size": 32}


def tiny_spec(**changes: Any) -> SyntheticGazeSpec:
    return SyntheticGazeSpec(**{**TINY_SPEC, **changes})


@functools.lru_cache(maxsize=4)
def _render(spec_json: str) -> ArrayDataset:
    return synthesize(SyntheticGazeSpec.model_validate_json(spec_json), compile=False)


def tiny_faces(**changes: Any) -> ArrayDataset:
    """240 32x32 synthetic faces of 6 identities (rendered once per process; do not mutate)."""
    return _render(tiny_spec(**changes).model_dump_json())


def seed_synthetic_cache(cache_dir: str | os.PathLike[str], **changes: Any) -> Path:
    """Put the tiny dataset where ``load_or_synthesize(spec, cache_dir)`` will find it."""
    spec = tiny_spec(**changes)
    folder = Path(cache_dir) / "synthetic" / spec.cache_key()
    if not (folder / "meta.json").is_file():
        ds = tiny_faces(**changes)
        ArrayDataset(np.asarray(ds.images), dict(ds.annotations), dict(ds.meta)).save(folder)
    return folder


def tiny_config(cache_dir: str | os.PathLike[str], **top: Any) -> dict[str, Any]:
    """A run config (as a dict) that trains GazeCNN(width=8) for one epoch on the tiny set."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "device": "cpu",
        "data": {
            "source": "synthetic",
            "synthetic": dict(TINY_SPEC),
            "test_identities": 2,
            "cache_dir": str(cache_dir),
        },
        "model": {"name": "gaze_cnn", "kwargs": {"width": 8}},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.003},
        "report_samples": 4,
    }
    cfg.update(top)
    return cfg


def write_yaml(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def invoke(runner: Any, *args: str | Path) -> Any:
    """``backdoorlab ARGS`` through typer's test runner (arguments stringified)."""
    from backdoorlab.cli import app

    return runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Whitespace-normalised text, so wrapped console output can be searched."""
    return " ".join(text.split())


def load_bench_script(name: str) -> Any:
    """``bench/NAME.py`` imported as a module (the bench folder is not a package), for tests of its bookkeeping."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
