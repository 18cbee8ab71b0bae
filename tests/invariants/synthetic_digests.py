"""Print the sha256 of a few synthetic datasets, as JSON: the renderer's pixels, pinned (not collected).

:mod:`tests.test_synthetic_pixels` runs it in a subprocess with the portable CPU kernels
of :mod:`tests.invariants.test_gaze_pinned` (ATen's default kernels, oneDNN at SSE4.1,
MKL's reproducible mode, one thread): the bytes then depend neither on the machine's
vector units nor on the library paths MKL picks, on any Intel x86-64. Usage::

    python tests/invariants/synthetic_digests.py > digests.json
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from backdoorlab.data.synthetic.dataset import SyntheticGazeSpec, synthesize
from backdoorlab.data.synthetic.identities import SyntheticIdentitySpec, synthesize_identities

SPECS = {
    "face": SyntheticGazeSpec(identities=3, images_per_identity=100, size=64, seed=123),
    "face_odd_size": SyntheticGazeSpec(identities=2, images_per_identity=30, size=50, seed=4),
    "eye": SyntheticGazeSpec(kind="eye", identities=2, images_per_identity=40, seed=9),
}


def digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def digests() -> dict[str, str]:
    """``NAME/WORKERS`` -> digest of that dataset rendered with that many workers, and the identity set's."""
    out = {
        f"{name}/{workers}": digest(synthesize(spec, compile=False, workers=workers).images)
        for name, spec in SPECS.items()
        for workers in (1, 2)
    }
    spec = SyntheticIdentitySpec.tiny(identities=8, mean_images=6, glasses_wearers=0.5, hat_wearers=0.5)
    out["identities_with_accessories"] = digest(synthesize_identities(spec).images)
    return out


if __name__ == "__main__":
    print(json.dumps(digests(), indent=2, sort_keys=True))
