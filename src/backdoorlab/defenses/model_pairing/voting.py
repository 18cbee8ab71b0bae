"""Three or more paired models: which one is the culprit (thesis section 5.8, future work).

With two models a disagreement says *that* a backdoor fired, not in which model: the
thesis's pairing cannot name the culprit. With ``M >= 3`` models monitored pairwise, a
backdoor in one model makes exactly the pairs that contain it disagree, while the pairs of
the other models still agree; so the culprit of an input is the model that belongs to
every flagged pair and to no agreeing one. Anything else (no pair flagged, or a pattern
that no single model explains, e.g. two models firing at once) names no culprit, and the
caller can still treat "some pair flagged" as an alarm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from backdoorlab.errors import BackdoorLabError

NO_CULPRIT = ""


def name_culprits(models: Sequence[str], flags: Mapping[tuple[str, str], np.ndarray]) -> np.ndarray:
    """(N,) the name of the one model that explains each input's flags, or ``NO_CULPRIT``.

    ``flags[(a, b)]`` is the (N,) bool of the monitor of the pair of models ``a`` and ``b``
    (either order; one entry per unordered pair, every pair present): True where the pair
    disagreed. Model ``m`` is named for input ``i`` when the flagged pairs of ``i`` are
    exactly the pairs that contain ``m``.
    """
    names = list(models)
    if len(names) < 3 or len(set(names)) != len(names):
        raise BackdoorLabError(f"naming a culprit needs three or more distinct models, got {names}")
    unordered = {frozenset(pair): np.asarray(f, bool) for pair, f in flags.items()}
    needed = {frozenset((a, b)) for i, a in enumerate(names) for b in names[i + 1 :]}
    if missing := sorted(tuple(sorted(p)) for p in needed - set(unordered)):
        raise BackdoorLabError(f"no flags for the pairs {missing}: every pair of models must be monitored")
    lengths = {len(f) for f in unordered.values()}
    if len(lengths) != 1:
        raise BackdoorLabError(f"the pairs' flags cover different numbers of inputs: {sorted(lengths)}")
    n = lengths.pop()
    out = np.full(n, NO_CULPRIT, dtype=object)
    for m in names:
        explains = np.ones(n, bool)
        for pair in needed:
            explains &= unordered[pair] == (m in pair)  # flagged exactly where m takes part
        out[explains] = m
    return out
