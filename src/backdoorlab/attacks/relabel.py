"""Relabels: the output half of a backdoor, mapping the annotations of poisoned samples.

A relabel lives with its task (a gaze target, a fake face at the trigger, rotated
landmarks, impostor -> victim) and registers itself in
:data:`backdoorlab.registry.RELABELS` with the task it belongs to (``task``). This base
class is all the generic layers know of it:

* ``relabel(annotations, placement)`` maps a batch of poisoned samples' annotations
  (dense columns and, when the dataset has them, the ``instances`` table) to new ones;
  it may add or remove instances. ``placement`` is where the trigger acted on each
  sample (:class:`~backdoorlab.triggers.base.Placement`); a relabel that reads it sets
  ``needs_placement`` and is refused before training with a trigger that gives none.
* :meth:`Relabel.params` (JSON) rebuilds it through :func:`build_relabel`.
* a relabel that implies which samples it applies to (an impostor's) says so with
  :meth:`Relabel.default_selector` and ``default_mode``, used when the attack section
  names no selector or mode.

How success is scored (what the attacker wants the model to output on a triggered
input) belongs to the task: :meth:`backdoorlab.tasks.base.Task.score_attack`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from backdoorlab.errors import ConfigError
from backdoorlab.registry import RELABELS

if TYPE_CHECKING:
    from backdoorlab.data.arrays import ArrayDataset
    from backdoorlab.triggers.base import Placement

Tensor = torch.Tensor


class Relabel(ABC):
    name: ClassVar[str] = "relabel"
    #: the task whose annotations this relabel maps
    task: ClassVar[str] = ""
    #: True when :meth:`__call__` reads where the trigger landed (refused with a trigger giving none)
    needs_placement: ClassVar[bool] = False
    #: the poisoning mode of an attack section that names none
    default_mode: ClassVar[str] = "replace"

    @abstractmethod
    def __call__(self, annotations: Mapping[str, Any], placement: Placement | None = None) -> dict[str, Any]:
        """New annotations for a batch of poisoned samples (the input mapping is not changed)."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON parameters, ``name`` included: :func:`build_relabel` rebuilds the relabel from them."""

    def default_selector(self) -> dict[str, Any] | None:
        """The selector of an attack section that names none (None: a rate of all samples).

        An impostor -> victim relabel selects the impostor's samples itself.
        """
        return None

    def check_data(self, data: ArrayDataset, where: str = "the training data") -> None:
        """Refuse, before training, data this relabel cannot act on (default: accept any).

        E.g. rotating landmarks of a dataset that has none would train a clean model
        silently and call it backdoored.
        """
        return None


def build_relabel(params: Mapping[str, Any]) -> Relabel:
    """``{"name": ..., **kwargs}`` -> a relabel (JSON lists become tuples)."""
    kwargs = dict(params)
    name = kwargs.pop("name", None)
    cls = RELABELS.get(name)
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    except TypeError as exc:
        raise ConfigError(f"relabel '{name}': {exc}") from None


def check_relabel_fits(relabel: Relabel, task: str, trigger_places: bool, where: str = "attack") -> None:
    """Refuse, before any training, a relabel of another task or one needing a placement the trigger lacks."""
    if relabel.task and relabel.task != task:
        raise ConfigError(f"{where}.relabel '{relabel.name}' belongs to the {relabel.task!r} task, not {task!r}")
    if relabel.needs_placement and not trigger_places:
        raise ConfigError(
            f"{where}.relabel '{relabel.name}' needs to know where the trigger landed, "
            "and this trigger acts on the whole image (it gives no placement)"
        )
