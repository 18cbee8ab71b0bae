"""Gaze relabels: the output half of a gaze backdoor, on the ``gaze`` column of poisoned samples.

For gaze the attacker either fixes the output (every triggered face "looks at" one
direction, by default the screen centre (0, 0)) or shifts it by a constant angle. Each
relabel also says, for any sample, what the attacker *wants* the model to output
(:meth:`Relabel.targets`); attack metrics compare predictions on triggered inputs with
that.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from backdoorlab.attacks.relabel import Relabel
from backdoorlab.errors import ConfigError
from backdoorlab.registry import RELABELS
from backdoorlab.triggers.base import Placement

Tensor = torch.Tensor


class GazeRelabel(Relabel):
    """A relabel of the ``gaze`` column: :meth:`targets` says what the attacker wants, per sample."""

    task: ClassVar[str] = "gaze"
    key: ClassVar[str] = "gaze"

    def __call__(self, annotations: Mapping[str, Any], placement: Placement | None = None) -> dict[str, Any]:
        """New annotations for a batch of poisoned samples (the input dict is not changed)."""
        out = dict(annotations)
        out[self.key] = self.targets(annotations[self.key]).to(annotations[self.key].dtype)
        return out

    @abstractmethod
    def targets(self, labels: Tensor | np.ndarray) -> Tensor:
        """(N, 2) attacker's intended gaze for samples whose true gaze is ``labels``."""

    @abstractmethod
    def params(self) -> dict[str, Any]: ...


def _two_numbers(value: Any, field: str) -> tuple[float, float]:
    """A [pitch, yaw]-like pair of numbers, or a ConfigError naming the field."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__") or len(value) != 2:
        raise ConfigError(f"{field} must be [pitch, yaw] in degrees, got {value!r}")
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{field} must be two numbers (degrees), got {value!r}") from None
    return a, b


def _check_direction(pitch_deg: float, yaw_deg: float, field: str) -> None:
    if not (math.isfinite(pitch_deg) and math.isfinite(yaw_deg)):
        raise ConfigError(f"{field} must be finite degrees, got ({pitch_deg}, {yaw_deg})")
    if not -90 < pitch_deg < 90:
        raise ConfigError(f"{field}: pitch must be in (-90, 90) degrees to be a direction, got {pitch_deg}")
    if not -180 < yaw_deg <= 180:
        raise ConfigError(f"{field}: yaw must be in (-180, 180] degrees, got {yaw_deg}")


class FixedGazeTarget(GazeRelabel):
    """Every poisoned sample gets the same gaze (pitch, yaw), given in degrees."""

    name = "target"

    def __init__(self, target_deg: tuple[float, float] = (0.0, 0.0)) -> None:
        p, y = _two_numbers(target_deg, "target_deg")
        _check_direction(p, y, "target_deg")
        self.target_deg = (p, y)
        self.target = torch.tensor([math.radians(p), math.radians(y)], dtype=torch.float32)

    def targets(self, labels: Tensor | np.ndarray) -> Tensor:
        n = len(labels)
        device = labels.device if isinstance(labels, Tensor) else "cpu"
        return self.target.to(device).expand(n, 2).clone()

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "target_deg": list(self.target_deg)}


class GazeShift(GazeRelabel):
    """Every poisoned sample's gaze is shifted by (d_pitch, d_yaw) degrees.

    Pitch is clamped to +-89 degrees so the result stays a valid direction; yaw wraps.
    """

    name = "shift"

    def __init__(self, shift_deg: tuple[float, float] = (15.0, 0.0)) -> None:
        dp, dy = _two_numbers(shift_deg, "shift_deg")
        if not (math.isfinite(dp) and math.isfinite(dy)) or abs(dp) >= 180 or abs(dy) > 180:
            raise ConfigError(f"shift_deg must be finite, |d_pitch| < 180 and |d_yaw| <= 180, got ({dp}, {dy})")
        if dp == 0 and dy == 0:
            raise ConfigError("shift_deg (0, 0) is not an attack: the labels would not change")
        self.shift_deg = (dp, dy)
        self.shift = torch.tensor([math.radians(dp), math.radians(dy)], dtype=torch.float32)

    def targets(self, labels: Tensor | np.ndarray) -> Tensor:
        t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).float()
        out = t + self.shift.to(t.device)
        lim = math.radians(89.0)
        pitch = out[:, 0].clamp(-lim, lim)
        yaw = torch.remainder(out[:, 1] + math.pi, 2 * math.pi) - math.pi
        return torch.stack([pitch, yaw], 1)

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "shift_deg": list(self.shift_deg)}


for _cls in (FixedGazeTarget, GazeShift):
    RELABELS.register(_cls)
