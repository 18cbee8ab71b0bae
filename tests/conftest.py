"""Shared fixtures: tiny synthetic datasets rendered once per session, and a torch thread cap.

The datasets are session-scoped and shared between test files, so tests must treat
them as read-only: take ``ds.subset(...)`` or copy an array before changing anything.
They render eagerly (``compile=False``) in one process, in about a second.

Why one torch thread for the whole session: the suite runs in two pytest-xdist workers
on two cores, and the renderer and tiny models are chains of small kernels. With two
intra-op threads per worker the cores are oversubscribed, OpenMP threads spin-wait on
each other at every kernel, and tests become up to ~100x slower (measured: 5 s instead
of 0.05 s for a two-face scene).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from typer.testing import CliRunner

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.synthetic import SyntheticGazeSpec, synthesize

# CI runs once per submission: derandomised examples make a failure there reproducible
# (and not a coin toss); local runs keep exploring new examples.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_face_spec() -> SyntheticGazeSpec:
    """3 identities x 4 face crops of 32x32 pixels, default sampling ranges."""
    return SyntheticGazeSpec(kind="face", identities=3, images_per_identity=4, size=32, seed=11)


@pytest.fixture(scope="session")
def tiny_face_ds(tiny_face_spec: SyntheticGazeSpec) -> ArrayDataset:
    return synthesize(tiny_face_spec, compile=False, workers=1)


@pytest.fixture(scope="session")
def tiny_eye_spec() -> SyntheticGazeSpec:
    """2 identities x 3 MPIIGaze-like 36x60 eye crops (both eyes occur)."""
    return SyntheticGazeSpec(kind="eye", identities=2, images_per_identity=3, seed=11)


@pytest.fixture(scope="session")
def tiny_eye_ds(tiny_eye_spec: SyntheticGazeSpec) -> ArrayDataset:
    return synthesize(tiny_eye_spec, compile=False, workers=1)


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "250"})  # rich reads COLUMNS: no folded paths or run ids


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic cache folder that already holds the tiny CLI dataset (see helpers_experiments)."""
    from helpers_experiments import seed_synthetic_cache

    root = tmp_path_factory.mktemp("synth-cache")
    seed_synthetic_cache(root)
    return root
