"""Faults a long sweep meets, injected for real (issue 13): what the results store says is complete must be.

Each test fails on the code before the fault was handled: data altered on disk, configs
that would silently mean something else, a loss that blows up without a NaN.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers_experiments import invoke, seed_synthetic_cache, tiny_config, write_yaml
from typer.testing import CliRunner

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import DatasetError
from backdoorlab.experiments.config import validate_config
from backdoorlab.experiments.run import execute
from backdoorlab.experiments.store import ResultsStore


def _alter_first_image(folder: Path) -> None:
    arr = np.load(folder / "images.npy", mmap_mode="r+")
    arr[0] = 255 - arr[0]  # same shape and dtype: only the content changed
    arr.flush()


def test_a_run_on_an_altered_dataset_folder_fails_and_is_not_recorded_complete(tmp_path: Path) -> None:
    tiny = ArrayDataset.load(seed_synthetic_cache(tmp_path / "cache"))
    folder = ArrayDataset(np.asarray(tiny.images), dict(tiny.annotations), {"name": "copy"}).save(tmp_path / "data")
    _alter_first_image(folder)
    cfg = tiny_config(tmp_path / "cache", data={"source": "folder", "path": str(folder), "test_identities": 2})
    out = invoke(CliRunner(), "train", write_yaml(tmp_path / "run.yaml", cfg), "--runs-dir", tmp_path / "runs")
    assert out.exit_code == 2 and "images.npy: its contents changed" in " ".join(out.output.split())
    (row,) = ResultsStore(tmp_path / "runs" / "results.sqlite").list()
    assert row["status"] == "failed" and "images.npy" in row["error"]


def test_an_altered_synthetic_cache_is_rebuilt_not_trained_on(tmp_path: Path) -> None:
    intact = execute(validate_config(tiny_config(tmp_path / "cache-a")), tmp_path / "runs-a", progress=False)
    folder = seed_synthetic_cache(tmp_path / "cache-b")
    _alter_first_image(folder)
    with pytest.raises(DatasetError, match=r"images\.npy"):
        ArrayDataset.load(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = execute(validate_config(tiny_config(tmp_path / "cache-b")), tmp_path / "runs-b", progress=False)
    assert any("rebuilding the synthetic cache entry" in str(w.message) for w in caught)
    # it trained on the data the spec describes, not on the altered bytes
    assert rebuilt.metrics["data_fingerprint"] == intact.metrics["data_fingerprint"]
    assert rebuilt.metrics["clean_error_deg"] == intact.metrics["clean_error_deg"]
