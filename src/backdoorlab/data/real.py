"""Registry of the real-dataset loaders, so configs and the CLI can name them.

Each loader reads a published release in its own layout and returns an
:class:`~backdoorlab.data.arrays.ArrayDataset` in the project's conventions: for gaze,
(pitch, yaw) radians in the normalised camera, RGB uint8 images, ``identity`` = subject
number; for face detection (WIDER FACE, RetinaFace's WIDER landmarks, CelebA),
letterboxed RGB images with a per-image instance table of boxes and five landmarks
(:mod:`backdoorlab.data.instances`); for face recognition (CASIA-WebFace, LFW, FFHQ and
our aligned-crop folders, :mod:`backdoorlab.data.face_recognition_sets`), RGB images
resized to ``size`` x ``size`` with ``label`` = identity index (-1 for unlabelled FFHQ)
and ``meta["identities"]``; ``lfw`` loads the images its ``pairs.txt`` names and puts
the pairs, with their image rows, in ``meta["pairs"]``. No loader unpickles a file:
pickles (insightface's verification ``.bin``) are refused. See the loader modules for
the layouts and where each convention comes from.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.celeba import load_celeba
from backdoorlab.data.ethxgaze import load_ethxgaze
from backdoorlab.data.face_recognition_sets import (
    load_aligned_crops,
    load_casia_webface,
    load_ffhq,
    load_lfw_dataset,
)
from backdoorlab.data.mpiifacegaze import load_mpiifacegaze_normalized, load_mpiifacegaze_raw
from backdoorlab.data.mpiigaze import load_mpiigaze_normalized
from backdoorlab.data.wider_face import load_widerface, load_widerface_retinaface
from backdoorlab.errors import ConfigError, DatasetError

REAL_LOADERS: dict[str, Callable[..., ArrayDataset]] = {
    "mpiifacegaze": load_mpiifacegaze_raw,
    "mpiifacegaze-normalized": load_mpiifacegaze_normalized,
    "mpiigaze": load_mpiigaze_normalized,
    "ethxgaze": load_ethxgaze,
    "widerface": load_widerface,
    "widerface-retinaface": load_widerface_retinaface,
    "celeba": load_celeba,
    "casia-webface": load_casia_webface,
    "lfw": load_lfw_dataset,
    "ffhq": load_ffhq,
    "aligned-crops": load_aligned_crops,
}


def load_real_dataset(kind: str, path: str, **kwargs: Any) -> ArrayDataset:
    """Load a real release by registry name; options go to the loader unchanged.

    An unknown ``kind`` is a :class:`DatasetError` listing the valid names; an option
    the loader does not take is a :class:`ConfigError` listing those it does.
    """
    try:
        loader = REAL_LOADERS[kind]
    except KeyError:
        raise DatasetError(
            f"unknown real dataset kind {kind!r}; valid kinds: {', '.join(sorted(REAL_LOADERS))}"
        ) from None
    sig = inspect.signature(loader)
    try:
        sig.bind(path, **kwargs)
    except TypeError as exc:
        options = [p for p in list(sig.parameters)[1:]]
        raise ConfigError(f"{kind}: {exc}; accepted options: {', '.join(options)}") from None
    return loader(path, **kwargs)


__all__ = ["REAL_LOADERS", "load_real_dataset"]
