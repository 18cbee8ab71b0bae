"""Train/test splits that keep a person on one side only.

Why by identity: a model tested on new images of people it trained on measures
memorisation of faces, not the task; every split here holds out whole identities
(cross-subject), as the published gaze and face benchmarks do.
"""

from __future__ import annotations

import numpy as np

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.errors import DatasetError


def split_by_identity(ds: ArrayDataset, test_identities: int, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """Cross-subject split: ``test_identities`` whole identities go to the test side."""
    ds.require("identity")
    ids = np.unique(ds.annotations["identity"])
    if not 0 < test_identities < len(ids):
        raise DatasetError(
            f"test_identities must be between 1 and {len(ids) - 1} (the dataset has {len(ids)} identities); "
            f"got {test_identities}"
        )
    test_ids = np.random.default_rng(seed).permutation(ids)[:test_identities]
    is_test = np.isin(ds.annotations["identity"], test_ids)
    return ds.subset(np.flatnonzero(~is_test)), ds.subset(np.flatnonzero(is_test))
