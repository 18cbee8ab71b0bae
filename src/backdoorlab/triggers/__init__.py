"""Triggers: batched, deterministic ``images, annotations -> images`` maps (one file per family)."""

from backdoorlab.triggers.base import Trigger
from backdoorlab.triggers.registry import TRIGGERS, build_trigger

__all__ = ["TRIGGERS", "Trigger", "build_trigger"]
