"""Comparison pairs from labelled embeddings: genuine (same identity) and impostor (different) cosine scores.

Why sampled: a held-out set of 10,000 faces has 50 million impostor pairs. The
verification metrics need enough impostor scores to resolve the smallest target FMR
(1e-4 needs at least 10,000, and a TAR there is only steady with a hundred or more
impostors above the threshold), so when there are more than ``max_impostor`` impostor
pairs they are drawn uniformly at random (seeded, with replacement: duplicates are
negligible at these sizes), and otherwise every one is taken once; genuine pairs are
all of them, or a uniform sample of ``max_genuine`` when there are more.

The Doddington zoo (:func:`zoo_summary`): with one threshold, count each identity's
false matches; in a zoo some identities ("lambs" and "wolves") take part in far more of
them than their share, so the share of false matches that involve the top 10 % of
identities is well above the 20 % a uniform spread gives (each pair names two).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics.one_to_one import unit_rows

PAIR_CHUNK = 16_384


@dataclass(frozen=True)
class PairScores:
    """Cosine scores of genuine and impostor pairs, with the rows (into the embeddings) of each pair."""

    genuine: np.ndarray  # (G,)
    impostor: np.ndarray  # (I,)
    genuine_pairs: np.ndarray  # (G, 2)
    impostor_pairs: np.ndarray  # (I, 2)


def _unit(embeddings: ArrayLike) -> np.ndarray:
    emb = np.asarray(embeddings, np.float64)
    if emb.ndim != 2 or len(emb) < 2:
        raise BackdoorLabError(f"embeddings must be an (N >= 2, D) array, got shape {emb.shape}")
    return unit_rows(emb)


def genuine_pairs(identities: np.ndarray) -> np.ndarray:
    """(G, 2) every pair i < j of rows with the same identity."""
    order = np.argsort(identities, kind="stable")
    _, starts, counts = np.unique(identities[order], return_index=True, return_counts=True)
    out = []
    for s, c in zip(starts, counts, strict=True):
        if c > 1:
            i, j = np.triu_indices(int(c), 1)
            out.append(np.stack([order[s + i], order[s + j]], 1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def pair_scores(
    embeddings: ArrayLike,
    identities: ArrayLike,
    max_genuine: int = 200_000,
    max_impostor: int = 1_000_000,
    seed: int = 0,
) -> PairScores:
    """Genuine and impostor cosine scores of labelled embeddings (see the module docstring)."""
    emb = _unit(embeddings)
    ids = np.asarray(identities)
    if ids.shape != (len(emb),):
        raise BackdoorLabError(f"{len(ids)} identities for {len(emb)} embeddings")
    if len(np.unique(ids)) < 2:
        raise BackdoorLabError("pair scores need at least two identities")
    rng = np.random.default_rng([seed, 0x9A1])
    gen = genuine_pairs(ids)
    n_impostor = len(emb) * (len(emb) - 1) // 2 - len(gen)
    if len(gen) > max_genuine:
        gen = gen[np.sort(rng.choice(len(gen), max_genuine, replace=False))]
    imp = np.zeros((0, 2), np.int64)
    if n_impostor <= max_impostor:  # few enough: every impostor pair, exactly once
        i, j = np.triu_indices(len(emb), 1)
        keep = ids[i] != ids[j]
        imp = np.stack([i[keep], j[keep]], 1).astype(np.int64)
        max_impostor = len(imp)
    while len(imp) < max_impostor:
        draw = rng.integers(0, len(emb), (int((max_impostor - len(imp)) * 1.2) + 16, 2))
        imp = np.concatenate([imp, draw[ids[draw[:, 0]] != ids[draw[:, 1]]]])
    imp = imp[:max_impostor]

    return PairScores(pair_cosines(emb, gen), pair_cosines(emb, imp), gen, imp)


def pair_cosines(unit: np.ndarray, pairs: np.ndarray, chunk: int = PAIR_CHUNK) -> np.ndarray:
    """Dot products of the rows named by each pair, ``chunk`` pairs at a time.

    Why chunked: gathering both sides of a million pairs of 512-d float64 embeddings at
    once holds 8 GB of temporaries (this was most of a recognition fine-tune's peak
    memory); chunks of 16,384 hold 134 MB and give the same numbers.
    """
    out = np.empty(len(pairs), np.float64)
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        out[start : start + len(part)] = np.einsum("nd,nd->n", unit[part[:, 0]], unit[part[:, 1]])
    return out


def zoo_summary(scores: PairScores, identities: ArrayLike, threshold: float, top: float = 0.1) -> dict[str, float]:
    """How unevenly false matches at ``threshold`` fall on identities (Doddington's zoo).

    ``zoo_top_share``: the share of false matches involving one of the ``top`` most
    involved identities (``2 * top`` when false matches are spread evenly);
    ``zoo_lamb_max``: the largest per-identity false-match rate (false matches / impostor
    comparisons of that identity); ``goat_share``: identities whose mean genuine score
    lies under the threshold (hard to match at all).
    """
    ids = np.asarray(identities)
    uniq, inverse = np.unique(ids, return_inverse=True)
    fm = scores.impostor >= threshold
    involved = np.bincount(inverse[scores.impostor_pairs[fm].ravel()], minlength=len(uniq))
    compared = np.bincount(inverse[scores.impostor_pairs.ravel()], minlength=len(uniq))
    k = max(1, round(top * len(uniq)))
    n_fm = int(fm.sum())
    top_ids = np.argsort(-involved)[:k]
    top_share = float(fm[np.isin(inverse[scores.impostor_pairs], top_ids).any(1)].sum() / n_fm) if n_fm else 0.0
    gen_mean = np.full(len(uniq), np.nan)
    if len(scores.genuine):
        owner = inverse[scores.genuine_pairs[:, 0]]
        sums = np.bincount(owner, scores.genuine, minlength=len(uniq))
        gen_mean = sums / np.maximum(np.bincount(owner, minlength=len(uniq)), 1)
    return {
        "zoo_top_share": top_share,
        "zoo_top": float(top),
        "zoo_lamb_max": float((involved / np.maximum(compared, 1)).max()),
        "zoo_false_matches": float(n_fm),
        "goat_share": float(np.mean(gen_mean[np.isfinite(gen_mean)] < threshold)) if len(scores.genuine) else 0.0,
    }
