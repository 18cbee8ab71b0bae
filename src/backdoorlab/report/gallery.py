"""A PNG grid of dataset images with their true gaze drawn as arrows (README gallery)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.report.draw import TRUE_COLOUR, draw_gaze_arrows, image_grid


def gaze_arrow_origins(ds: ArrayDataset, idx: np.ndarray) -> np.ndarray | None:
    """Where gaze arrows start: between the eyes on face crops, the centre otherwise.

    Eye crops (``eye_side`` present) carry landmarks of the whole face in the eye
    camera's pixels, whose eye midpoint lies outside the crop, so they use the centre.
    """
    if "landmarks" in ds.annotations and "eye_side" not in ds.annotations:
        return np.asarray(ds.annotations["landmarks"][idx, :2].mean(1), np.float32)
    return None


def gallery_image(ds: ArrayDataset, n: int = 24, ncols: int = 8, scale: int = 3, seed: int = 0) -> np.ndarray:
    """Pick ``n`` images spread over identities; arrows start between the eyes."""
    ds.require("gaze")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(ds), size=min(n, len(ds)), replace=False))
    origins = gaze_arrow_origins(ds, idx)
    drawn = draw_gaze_arrows(
        np.asarray(ds.images[idx]),
        [(np.asarray(ds.annotations["gaze"][idx]), TRUE_COLOUR)],
        origins=origins,
        scale=scale,
    )
    return image_grid(drawn, ncols=ncols)


def write_gallery(ds: ArrayDataset, path: str | os.PathLike[str], **kwargs: int) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid = gallery_image(ds, **kwargs)
    if not cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {out}")
    return out
