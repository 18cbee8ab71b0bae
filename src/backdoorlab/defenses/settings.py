"""Typed settings of the defences: one pydantic model per defence, nested sections for schedules.

Why pydantic models beside the constructors: a defence's settings come from YAML
files, ``--param`` strings, sweeps and result stores. Validated once here (unknown keys
and ill-typed values refused, each error naming its dotted key), they are dumped with
every default filled in and hashed, so a store or a sweep recognises the same settings
however they were written. The constructors stay the Python API; :meth:`DefenceConfig.build`
calls them, and a conformance test checks that both agree on every default.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from backdoorlab.defenses.base import Defence

#: the settings that say where a defence runs, not what it computes: left out of the settings hash
PLACEMENT_KEYS = frozenset({"device"})


class StrictSettings(BaseModel):
    """Unknown keys and ill-typed values are errors (a misspelt setting must not fall back to a default)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def params(self) -> dict[str, Any]:
        """The settings as JSON types."""
        return self.model_dump(mode="json")


class DefenceConfig(StrictSettings):
    """The settings of one defence: its constructor's keywords, schedules as nested sections.

    Subclasses declare the fields; :func:`~backdoorlab.defenses.registration.register_defence`
    ties each to its defence class (``defence``). ``build()`` makes the defence.
    """

    #: the defence class these settings construct (set when the class is registered)
    defence: ClassVar[type[Defence]]
    #: config fields handed to the constructor under another keyword (``tune`` -> ``settings``)
    renamed: ClassVar[dict[str, str]] = {}

    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")

    @property
    def method(self) -> str:
        return self.defence.name

    def constructor_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the defence's constructor (nested sections stay settings objects)."""
        return {self.renamed.get(name, name): getattr(self, name) for name in type(self).model_fields}

    def build(self) -> Defence:
        return self.defence(**self.constructor_kwargs())

    def dump(self) -> dict[str, Any]:
        """``{"method": ..., every setting}``: what ``--config`` reads back to the same settings."""
        return {"method": self.method, **self.model_dump(mode="json")}

    def settings_hash(self) -> str:
        """A stable 12-hex hash of the method and its settings (device excluded), for stores and sweeps."""
        dump = {k: v for k, v in self.dump().items() if k not in PLACEMENT_KEYS}
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:12]
