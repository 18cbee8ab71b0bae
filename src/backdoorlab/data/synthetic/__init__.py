"""The embedded synthetic face renderer (the default data of backdoorlab)."""

from backdoorlab.data.synthetic.dataset import SyntheticGazeSpec, load_or_synthesize, synthesize
from backdoorlab.data.synthetic.identities import (
    SyntheticIdentitySpec,
    load_or_synthesize_identities,
    synthesize_identities,
)
from backdoorlab.data.synthetic.scenes import SyntheticSceneSpec, load_or_synthesize_scenes, synthesize_scenes

__all__ = [
    "SyntheticGazeSpec",
    "SyntheticIdentitySpec",
    "SyntheticSceneSpec",
    "load_or_synthesize",
    "load_or_synthesize_identities",
    "load_or_synthesize_scenes",
    "synthesize",
    "synthesize_identities",
    "synthesize_scenes",
]
