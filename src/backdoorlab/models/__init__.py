"""Building registered models, and the ``features(x)`` / linear ``head`` contract regression defences rely on."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from backdoorlab.errors import ConfigError, ModelContractError
from backdoorlab.registry import MODELS


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate a registered architecture by name."""
    cls = MODELS.get(name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model '{name}' does not accept these arguments {kwargs}: {exc}") from exc
    except (ValueError, RuntimeError) as exc:  # e.g. a negative width reaching a layer's constructor
        raise ConfigError(f"model '{name}' cannot be built with {kwargs}: {str(exc).splitlines()[0]}") from exc


def has_feature_head(model: nn.Module) -> bool:
    """Whether ``model`` declares the F/H split (``features(x)`` and a linear ``head``); not verified."""
    return callable(getattr(model, "features", None)) and isinstance(getattr(model, "head", None), nn.Linear)


def check_feature_head_contract(model: nn.Module, example: torch.Tensor | None = None) -> None:
    """Raise :class:`ModelContractError` unless ``model`` splits into F (features) and linear H.

    The contract: ``model.features(x)`` returns a (B, D) tensor, ``model.head`` is an
    ``nn.Linear`` with ``in_features == D``, and ``model(x) == model.head(model.features(x))``
    (checked on ``example`` when given).
    """
    name = type(model).__name__
    if not callable(getattr(model, "features", None)):
        raise ModelContractError(f"{name} has no features(x) method; defences need the F/H split")
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ModelContractError(f"{name}.head must be an nn.Linear, found {type(head).__name__}")
    if example is None:
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            feats = model.features(example)
            if feats.ndim != 2 or feats.shape[1] != head.in_features:
                raise ModelContractError(
                    f"{name}.features(x) returned shape {tuple(feats.shape)}; expected (B, {head.in_features})"
                )
            if not torch.allclose(model(example), head(feats), atol=1e-5, rtol=1e-4):
                raise ModelContractError(f"{name}(x) differs from {name}.head({name}.features(x))")
    finally:
        model.train(was_training)


__all__ = ["MODELS", "build_model", "check_feature_head_contract", "has_feature_head"]
