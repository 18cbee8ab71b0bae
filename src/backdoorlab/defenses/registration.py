"""Defences register by method name in ``backdoorlab.registry.DEFENCES``, one entry per method.

Why an entry per *method* holding a class per *shape*: one method can come in several
shapes under one name (``securegaze`` detects with :class:`SecureGaze` and repairs with
:class:`SecureGazeUnlearning`), and users name the method, while the command they run
(``detect``, ``mitigate``) names the shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from backdoorlab.defenses.base import Defence
from backdoorlab.defenses.settings import DefenceConfig
from backdoorlab.errors import ConfigError
from backdoorlab.registry import DEFENCES

D = TypeVar("D", bound=type[Defence])


@dataclass
class DefenceMethod:
    """One method name and its defence class in each shape it offers, with each one's settings model."""

    name: str
    classes: dict[str, type[Defence]] = field(default_factory=dict)
    configs: dict[str, type[DefenceConfig]] = field(default_factory=dict)

    def shapes(self) -> list[str]:
        return sorted(self.classes)


_METHODS: dict[str, DefenceMethod] = {}


def register_defence(config: type[DefenceConfig]):  # type: ignore[no-untyped-def]
    """Class decorator: register a defence class (and its settings model ``config``) under ``cls.name``.

    Refuses a second class of the same shape under one method name (two plugins claiming
    one name is a bug).
    """

    def add(cls: D) -> D:
        entry = _METHODS.setdefault(cls.name, DefenceMethod(cls.name))
        if entry.classes.get(cls.shape, cls) is not cls:
            raise ValueError(f"{cls.shape} method {cls.name!r} is already registered to {entry.classes[cls.shape]!r}")
        entry.classes[cls.shape] = cls
        entry.configs[cls.shape] = config
        config.defence = cls
        DEFENCES.register(entry, name=cls.name)
        return cls

    return add


def methods(shape: str) -> list[str]:
    """The registered method names that offer ``shape`` ("detection", "mitigation", ...)."""
    return [name for name, entry in DEFENCES.items() if shape in entry.classes]


def defence_config_class(method: str, shape: str) -> type[DefenceConfig]:
    """The settings model of ``method`` in ``shape``, or one error listing the methods that offer the shape."""
    known = methods(shape)
    if method not in known:
        offers = f" ({method!r} offers {', '.join(DEFENCES.get(method).shapes())})" if method in DEFENCES else ""
        raise ConfigError(f"unknown {shape} method {method!r}{offers}; registered: {', '.join(known) or 'none'}")
    return DEFENCES.get(method).configs[shape]
