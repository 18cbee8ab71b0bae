"""Datasets: the synthetic renderer and loaders for real gaze datasets."""

from backdoorlab.data.arrays import ArrayDataset, load_dataset

__all__ = ["ArrayDataset", "load_dataset"]
