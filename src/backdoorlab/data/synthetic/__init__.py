"""The embedded synthetic face renderer (the default data of backdoorlab)."""

from backdoorlab.data.synthetic.dataset import SyntheticGazeSpec, load_or_synthesize, synthesize

__all__ = ["SyntheticGazeSpec", "load_or_synthesize", "synthesize"]
