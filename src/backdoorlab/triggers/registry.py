"""Trigger names -> classes, and building a trigger from its stored parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from backdoorlab.errors import ConfigError
from backdoorlab.registry import TRIGGERS
from backdoorlab.triggers.base import Trigger
from backdoorlab.triggers.blend import BlendTrigger
from backdoorlab.triggers.face_patch import FacePatchTrigger
from backdoorlab.triggers.patch import PatchTrigger
from backdoorlab.triggers.sticker import FaceStickerTrigger
from backdoorlab.triggers.wanet import WaNetTrigger

for _cls in (PatchTrigger, BlendTrigger, WaNetTrigger, FaceStickerTrigger, FacePatchTrigger):
    TRIGGERS.register(_cls)


def build_trigger(params: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None) -> Trigger:
    """``{"name": ..., **kwargs}`` (as :meth:`Trigger.params` writes it) -> a trigger."""
    kwargs = dict(params)
    name = kwargs.pop("name", None)
    cls = TRIGGERS.get(name)
    if "center" in kwargs and isinstance(kwargs["center"], list):
        kwargs["center"] = tuple(kwargs["center"])
    state = dict(state or {})
    if "pattern" in state and name in ("patch", "blend", "face_patch"):
        kwargs["pattern_pixels"] = state.pop("pattern")  # never re-read a file the run already stored
    try:
        trigger = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"trigger '{name}': {exc}") from None
    if state:
        trigger.load_state(state)
    return trigger
