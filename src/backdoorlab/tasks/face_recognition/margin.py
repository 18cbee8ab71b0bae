"""Angular-margin heads for open-set face recognition training: ArcFace and CosFace.

A margin head is a trainable module the *task* owns: it holds one (or ``sub_centers``)
weight vector per training identity, turns an embedding batch into margin-penalised,
scaled cosine logits, and is saved beside the embedding network but never exported with
it (at test time identities are compared by the cosine of their embeddings; the head's
classes are the training identities only).

Both heads compute ``cos(theta_j)`` between the L2-normalised embedding and the
L2-normalised row ``W_j`` (``n_classes x embedding_dim``); the logits are ``s * cos(theta_j)``
for every class but the true one, whose logit is penalised:

ArcFace (Deng et al., CVPR 2019), the additive *angular* margin
    ``s * cos(theta_y + m)``, computed in the full-gradient form
    ``cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m)`` with
    ``sin(theta) = sqrt(clamp(1 - cos^2, 0) + eps)`` (``eps`` = the machine epsilon of the
    dtype), so autograd differentiates the loss actually computed. Where
    ``theta + m > pi`` (``cos(theta) <= cos(pi - m)``) the target logit falls back to
    ``s * (cos(theta) - m sin(m))`` (the widely used rule of the ArcFace code,
    ``mm = sin(pi - m) * m``). Why each piece:

    * *the fallback*: ``cos(theta + m)`` decreases only while ``theta + m <= pi``; past
      that it rises again, so a sample pushed further from its class would get a
      *larger* target logit. The fallback, a CosFace-style penalty of ``m sin(m)`` (the
      first-order size of the angular margin at ``theta = pi - m``), keeps the target
      logit monotone non-increasing in ``theta`` over ``[0, pi]`` and below ``cos(theta)``.
      It is not continuous: at ``theta = pi - m`` it steps *down* by
      ``cos(m) + m sin(m) - 1`` (0.117 at ``m = 0.5``; never up, for ``0 <= m < pi/2``).
    * *clamp before the square root*: rounding can make ``cos^2`` exceed 1 by an ulp; a
      negative argument would give NaN.
    * *the epsilon*: ``d sin / d cos = -cos / sin`` is infinite at ``theta = 0`` and
      ``theta = pi``; ``torch.where`` multiplies the unused branch's gradient by 0, and
      ``0 * inf`` is NaN, so without it a sample lying exactly on its class vector (or
      opposite to it) poisons the whole batch with NaN. ``eps`` is the dtype's machine
      epsilon, about the resolution of ``1 - cos^2`` near ``cos = 1``: there the computed
      ``sin`` is never smaller than rounding can vouch for, so the gradient with respect
      to the embedding stays of the size of the true one (about ``s sin(m) / |e|``) instead
      of being divided by a ``sin`` that rounding drove to zero. It shifts ``sin`` by at
      most ``sqrt(eps)`` (3e-4 in float32, only at ``theta = 0``; 1e-7 at 30 degrees).

    insightface's ``arcface_torch`` (``CombinedMarginLoss``) instead applies the margin to
    the angle itself: ``arccos`` of the target cosine, ``+ m``, ``cos`` -- in place under
    ``torch.no_grad``. Two things differ: (1) the values beyond ``theta = pi - m`` are the
    raw ``cos(theta + m)``, with no fallback, so the target logit rises again there; (2)
    the backward pass never sees the margin: the target logit is differentiated as if it
    were ``s cos(theta)`` (a straight-through gradient, ``d/dcos = s`` instead of
    ``s sin(theta + m) / sin(theta)``), which cannot blow up but is not the gradient of the
    loss being reported. Forward values agree with ours wherever ``theta <= pi - m``.

    ``easy_margin=True`` applies the margin only where ``cos(theta) > 0`` and uses the
    plain ``cos(theta)`` elsewhere (the other option of the original code); it is not
    monotone at 90 degrees (a step *up* of ``sin(m)``) and is off by default.

CosFace (Wang et al., CVPR 2018), the additive *cosine* margin
    ``s * (cos(theta_y) - m)``: monotone and smooth everywhere, nothing to guard.

Class weights (the thesis, Ch. 3): the identities are unbalanced (CASIA-WebFace has about
50 images per identity, some several hundred) and the poisoned copies add to the
impostor-turned-victim class; the loss weights each sample by ``w_i = 1 / N_i`` of its class,
normalised to mean 1 over the classes (:func:`class_weights_from_counts`). :meth:`loss` is
PyTorch's weighted cross-entropy: ``sum_b w_{y_b} l_b / sum_b w_{y_b}`` (a weighted mean over
the batch, as ``nn.CrossEntropyLoss(weight=...)`` computes it).

Sub-centre ArcFace (the form the thesis's Fig. 3.1 draws): ``sub_centers=K > 1`` keeps K
vectors per class (rows ``c*K ... c*K + K-1`` of ``weight``) and takes the largest cosine
over a class's sub-centres before the margin. ``K = 1`` (default) is plain ArcFace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backdoorlab.errors import ConfigError


def _check_number(name: str, value: object, low: float, high: float | None, *, closed_low: bool = True) -> float:
    """``value`` as a float in ``[low, high)`` (or ``(low, high)``), else a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    ok_low = value >= low if closed_low else value > low
    if not ok_low or (high is not None and value >= high):
        bounds = f"{'[' if closed_low else '('}{low:g}, {'inf' if high is None else f'{high:.6g}'})"
        raise ConfigError(f"{name} must be in {bounds}, got {value!r}")
    return float(value)


def _check_count(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def class_weights_from_counts(counts: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Per-class loss weights ``w_i = 1 / N_i``, normalised to mean 1 (float32, one per class).

    ``counts[i]`` is the number of training samples of class ``i`` (poisoned copies
    included, as the thesis counts them). A class with no sample has no defined weight:
    a ConfigError names it (drop the class or fix the split).
    """
    arr = torch.as_tensor(np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts))
    if arr.ndim != 1 or arr.numel() == 0:
        raise ConfigError(f"class counts must be a non-empty 1-d sequence, got shape {tuple(arr.shape)}")
    if arr.is_floating_point() and not bool(torch.isfinite(arr).all()):
        raise ConfigError("class counts must be finite")
    bad = torch.nonzero(arr <= 0).flatten().tolist()
    if bad:
        shown = ", ".join(f"class {i}: {arr[i].item()}" for i in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ConfigError(f"class counts must be positive, got {shown}{more}: a class without samples has no weight")
    w = 1.0 / arr.double()
    return (w / w.mean()).float()


class MarginHead(nn.Module):
    """Shared part of the margin heads: the class vectors, the cosines, the weighted loss.

    Subclasses define :meth:`target_logit` (the penalised cosine of the true class).

    Args:
        embedding_dim: D, the embedding size of the network in front.
        n_classes: training identities (>= 2).
        scale: s, the logit scale (> 0).
        margin: m, checked by the subclass.
        class_weights: optional (n_classes,) non-negative loss weight per class (e.g.
            :func:`class_weights_from_counts`); kept as a buffer so it is saved with the head.
        sub_centers: K class vectors per class (>= 1); the class cosine is their maximum.
    """

    def __init__(
        self,
        embedding_dim: int,
        n_classes: int,
        scale: float,
        margin: float,
        class_weights: torch.Tensor | Sequence[float] | None = None,
        sub_centers: int = 1,
    ) -> None:
        super().__init__()
        self.embedding_dim = _check_count("embedding_dim", embedding_dim, 1)
        self.n_classes = _check_count("n_classes", n_classes, 2)
        self.sub_centers = _check_count("sub_centers", sub_centers, 1)
        self.scale = _check_number("scale", scale, 0.0, None, closed_low=False)
        self.margin = float(margin)  # range checked by the subclass before this call
        self.weight = nn.Parameter(torch.empty(self.n_classes * self.sub_centers, self.embedding_dim))
        nn.init.normal_(self.weight, std=0.01)  # the scale is irrelevant after normalisation
        self.class_weights: torch.Tensor | None
        self.register_buffer("class_weights", self._check_class_weights(class_weights))

    def _check_class_weights(self, class_weights: torch.Tensor | Sequence[float] | None) -> torch.Tensor | None:
        if class_weights is None:
            return None
        w = torch.as_tensor(class_weights, dtype=torch.float32).detach().clone()
        if w.shape != (self.n_classes,):
            raise ConfigError(f"class_weights must have shape ({self.n_classes},), got {tuple(w.shape)}")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ConfigError("class_weights must be finite, non-negative and not all zero")
        return w

    def extra_repr(self) -> str:
        sub = f", sub_centers={self.sub_centers}" if self.sub_centers > 1 else ""
        weighted = ", class_weights" if self.class_weights is not None else ""
        return (
            f"embedding_dim={self.embedding_dim}, n_classes={self.n_classes}, scale={self.scale:g}, "
            f"margin={self.margin:g}{sub}{weighted}"
        )

    # ------------------------------------------------------------------ pieces
    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) embeddings -> (B, n_classes) cosines to the class vectors, in [-1, 1], no margin.

        The closed-set prediction over the training identities is its argmax.
        """
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"embeddings must be (B, {self.embedding_dim}), got {tuple(embeddings.shape)}")
        cos = F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))
        if self.sub_centers > 1:
            cos = cos.view(-1, self.n_classes, self.sub_centers).amax(dim=2)
        if cos.dtype in (torch.float16, torch.bfloat16):  # the margin trigonometry needs float32
            cos = cos.float()
        return cos.clamp(-1.0, 1.0)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        """The penalised cosine of the true class, before the scale (elementwise)."""
        raise NotImplementedError

    def _check_labels(self, labels: torch.Tensor, batch: int) -> None:
        if labels.shape != (batch,) or labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"labels must be ({batch},) integers, got {tuple(labels.shape)} {labels.dtype}")
        if batch and (int(labels.min()) < 0 or int(labels.max()) >= self.n_classes):
            raise ValueError(f"labels must be in [0, {self.n_classes}), got {labels.min()}..{labels.max()}")

    # ------------------------------------------------------------------ API
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, D) embeddings, (B,) labels -> (B, n_classes) logits: ``s cos`` with the true class penalised."""
        cos = self.cosine(embeddings)
        self._check_labels(labels, cos.shape[0])
        idx = labels.long()[:, None]
        # the margin only on the true class's entry (out-of-place scatter: differentiable in both inputs)
        return self.scale * cos.scatter(1, idx, self.target_logit(cos.gather(1, idx)))

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the margin logits, each sample weighted by its class's weight when given.

        With ``class_weights`` it is ``sum_b w[y_b] l_b / sum_b w[y_b]`` (the weighted mean
        ``nn.CrossEntropyLoss(weight=...)`` computes), otherwise the plain mean. A batch whose
        samples all have weight 0 gives 0 (PyTorch would give 0/0 = NaN).
        """
        logits = self(embeddings, labels)
        if self.class_weights is None:
            return F.cross_entropy(logits, labels.long())
        per_sample = F.cross_entropy(logits, labels.long(), reduction="none")
        w = self.class_weights.to(per_sample.dtype)[labels.long()]
        return (w * per_sample).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)


class ArcFaceHead(MarginHead):
    """ArcFace: the true class's logit is ``s cos(theta_y + m)`` (with the fallback; module docstring).

    Args:
        embedding_dim: D.
        n_classes: training identities (>= 2).
        scale: s (default 64, the ArcFace paper's).
        margin: m in radians, ``0 <= m < pi/2`` (default 0.5, the paper's).
        easy_margin: apply the margin only where ``cos theta > 0`` (off by default).
        class_weights: optional per-class loss weights (:func:`class_weights_from_counts`).
        sub_centers: K > 1 gives sub-centre ArcFace.
    """

    def __init__(
        self,
        embedding_dim: int,
        n_classes: int,
        scale: float = 64.0,
        margin: float = 0.5,
        easy_margin: bool = False,
        class_weights: torch.Tensor | Sequence[float] | None = None,
        *,
        sub_centers: int = 1,
    ) -> None:
        m = _check_number("margin", margin, 0.0, math.pi / 2)
        super().__init__(embedding_dim, n_classes, scale, m, class_weights, sub_centers)
        self.easy_margin = bool(easy_margin)
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.threshold = math.cos(math.pi - m)  # cos(theta) <= this  <=>  theta + m >= pi
        self.fallback = math.sin(math.pi - m) * m  # = m sin(m): the CosFace-style penalty past the threshold

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        eps = torch.finfo(cos.dtype).eps
        sin = torch.sqrt((1.0 - cos * cos).clamp(min=0.0) + eps)
        phi = cos * self.cos_m - sin * self.sin_m  # cos(theta + m)
        if self.easy_margin:
            return torch.where(cos > 0, phi, cos)
        return torch.where(cos > self.threshold, phi, cos - self.fallback)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", easy_margin=True" if self.easy_margin else "")


class CosFaceHead(MarginHead):
    """CosFace: the true class's logit is ``s (cos(theta_y) - m)``.

    Args:
        embedding_dim: D.
        n_classes: training identities (>= 2).
        scale: s (default 64).
        margin: m, ``0 <= m < 1`` (default 0.35, the CosFace paper's). A cosine margin of 1
            or more asks the true class to lead every other by a cosine gap above 1, which no
            recipe uses (a margin in degrees by mistake, most likely).
        class_weights: optional per-class loss weights.
        sub_centers: K vectors per class, the largest cosine taken.
    """

    def __init__(
        self,
        embedding_dim: int,
        n_classes: int,
        scale: float = 64.0,
        margin: float = 0.35,
        class_weights: torch.Tensor | Sequence[float] | None = None,
        *,
        sub_centers: int = 1,
    ) -> None:
        m = _check_number("margin", margin, 0.0, 1.0)
        super().__init__(embedding_dim, n_classes, scale, m, class_weights, sub_centers)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        return cos - self.margin


#: config name -> margin head class (the task builds the head it names)
MARGIN_HEADS: dict[str, type[MarginHead]] = {"arcface": ArcFaceHead, "cosface": CosFaceHead}


def build_margin_head(name: str, embedding_dim: int, n_classes: int, **kwargs: object) -> MarginHead:
    """The margin head registered in :data:`MARGIN_HEADS` as ``name``; a bad name or keyword is a ConfigError."""
    if name not in MARGIN_HEADS:
        raise ConfigError(f"unknown margin head {name!r} (known: {', '.join(sorted(MARGIN_HEADS))})")
    try:
        return MARGIN_HEADS[name](embedding_dim, n_classes, **kwargs)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(f"margin head {name!r} does not accept these arguments {kwargs}: {exc}") from exc


__all__ = [
    "MARGIN_HEADS",
    "ArcFaceHead",
    "CosFaceHead",
    "MarginHead",
    "build_margin_head",
    "class_weights_from_counts",
]
