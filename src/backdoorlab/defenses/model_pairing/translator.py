"""Translating one recognizer's embeddings into another's space (model pairing, thesis ch. 5, app. C).

Two recognizers trained apart embed the same face in different spaces. Model pairing
compares them on one input after mapping the probe model's embedding into the reference
model's space: score = cos(W e_probe + c, e_ref). A backdoor fires in one model only, so
on a triggered input the pair disagrees and the score drops.

Convention, everywhere here: embeddings are **rows**. A translator maps a batch
``E (N, d_probe)`` to ``E @ W.T + c`` (N, d_ref), i.e. ``W`` is (d_ref, d_probe) and acts
on column vectors ``W e``, as in the thesis's formula. For the closed form ``W`` is
orthogonal, so ``W.T`` is its inverse.

Two ways to fit ``W, c`` on unlabeled faces seen by both models:

* :func:`fit_procrustes`: the closed form of appendix C for equal embedding sizes. The
  rotation that best aligns the two sets of unit embeddings (least squares) is
  ``W = V diag(1, ..., 1, s) U^T`` from the SVD ``E_ref^T E_probe = U S V^T`` (Kabsch);
  ``s = sign(det(U V^T))`` keeps ``W`` a proper rotation (``proper=True``, det +1)
  rather than a reflection. No bias: both sets are unit vectors on spheres centred at 0.
* :func:`fit_affine`: an affine map trained with the negative cosine loss (the thesis's
  learned translator), mini-batches of 128, Adam; works for any two embedding sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike

from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics.one_to_one import unit_rows


@dataclass
class EmbeddingTranslator:
    """``e -> e @ weight.T + bias``: the probe model's embedding in the reference model's space."""

    weight: np.ndarray  # (d_ref, d_probe)
    bias: np.ndarray  # (d_ref,)
    method: str = "affine"
    history: list[float] = field(default_factory=list)  # mean loss per logged step (learned translators)

    @property
    def dims(self) -> tuple[int, int]:
        """(d_probe, d_ref)."""
        return self.weight.shape[1], self.weight.shape[0]

    def __call__(self, embeddings: ArrayLike) -> np.ndarray:
        emb = _matrix(embeddings, "probe embeddings")
        if emb.shape[1] != self.weight.shape[1]:
            raise BackdoorLabError(
                f"the translator takes {self.weight.shape[1]}-d probe embeddings, got {emb.shape[1]}-d"
            )
        return emb @ self.weight.T + self.bias

    def scores(self, probe: ArrayLike, reference: ArrayLike) -> np.ndarray:
        """(N,) cos(W e_probe + c, e_ref): the pairing score of each input (low = the models disagree)."""
        moved = self(probe)
        ref = _matrix(reference, "reference embeddings")
        if ref.shape != moved.shape:
            raise BackdoorLabError(f"{len(ref)} reference embeddings of shape {ref.shape} for translated {moved.shape}")
        return np.einsum("nd,nd->n", unit_rows(moved), unit_rows(ref))

    def state(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias}


def _matrix(x: ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(x, np.float64)
    if arr.ndim != 2 or not len(arr):
        raise BackdoorLabError(f"{what} must be a non-empty (N, D) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise BackdoorLabError(f"{what} hold NaN or infinite values")
    return arr


def _paired(probe: ArrayLike, reference: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, r = _matrix(probe, "probe embeddings"), _matrix(reference, "reference embeddings")
    if len(p) != len(r):
        raise BackdoorLabError(f"{len(p)} probe embeddings but {len(r)} reference embeddings: one pair per face")
    return p, r


def fit_procrustes(probe: ArrayLike, reference: ArrayLike, proper: bool = True) -> EmbeddingTranslator:
    """The rotation taking the probe's unit embeddings closest to the reference's (see the module docstring)."""
    p, r = _paired(probe, reference)
    if p.shape[1] != r.shape[1]:
        raise BackdoorLabError(
            f"the closed form needs equal embedding sizes (probe {p.shape[1]}-d, reference {r.shape[1]}-d): "
            "use the learned affine translator"
        )
    u, _, vt = np.linalg.svd(unit_rows(r).T @ unit_rows(p))
    if proper and np.linalg.det(u @ vt) < 0:
        u[:, -1] = -u[:, -1]
    return EmbeddingTranslator(u @ vt, np.zeros(r.shape[1]), "procrustes")


def fit_affine(
    probe: ArrayLike,
    reference: ArrayLike,
    steps: int = 300,
    batch_size: int = 128,
    lr: float = 0.01,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> EmbeddingTranslator:
    """``W, c`` minimising the mean negative cosine between ``W e_probe + c`` and ``e_ref`` (Adam, mini-batches).

    Starts from the least-squares affine map (a good start, not the answer: least squares
    weighs the embeddings' norms, the cosine does not), so a few hundred batches suffice;
    the thesis's converged in about 100 batches of 128.
    """
    p, r = _paired(probe, reference)
    gen = torch.Generator().manual_seed(seed)
    # float32: recognizers emit float32 embeddings, and it trains ~5x faster than float64 on a CPU
    x, y = (torch.as_tensor(unit_rows(e), dtype=torch.float32) for e in (p, r))
    init, *_ = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1), y)
    weight = torch.nn.Parameter(init[:-1].T.contiguous())
    bias = torch.nn.Parameter(init[-1].clone())
    opt = torch.optim.Adam([weight, bias], lr=lr)
    history: list[float] = []
    for step in range(steps):
        rows = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
        loss = -F.cosine_similarity(x[rows] @ weight.T + bias, y[rows], dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        value = float(loss.detach())
        if not np.isfinite(value):
            raise BackdoorLabError(f"the affine translator diverged at step {step} (loss {value}): lower lr")
        history.append(value)
        if on_step is not None:
            on_step(step, value)
    weight_, bias_ = (t.detach().double().numpy() for t in (weight, bias))
    return EmbeddingTranslator(weight_, bias_, "affine", history)
