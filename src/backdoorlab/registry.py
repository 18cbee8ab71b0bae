"""One registry for every plugin kind: tasks, models, triggers, relabels, selectors, defences.

Why one mechanism: config files name plugins by ``name:`` keys, and every kind must
answer the same questions the same way (is this name known? which names are? build it
from its stored parameters). A plugin registers itself where it is defined::

    @TRIGGERS.register
    class PatchTrigger(Trigger):
        name = "patch"

and generic code looks it up by name (``TRIGGERS.get("patch")``) without importing the
module that defines it. Where the built-in plugins live is given as module *names*
(``builtin``), imported on the first look-up, so the generic layers hold no import arrow
into a task or a plugin family.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar, overload

from backdoorlab.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> plugin classes (or factories) of one kind.

    Args:
        kind: what is registered, for error messages ("trigger", "task", ...).
        builtin: modules that register the built-in plugins when imported; they are
            imported once, at the first look-up.
    """

    def __init__(self, kind: str, builtin: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._builtin = builtin
        self._loaded = not builtin
        self._entries: dict[str, T] = {}
        self._default: str | None = None

    # ---------------------------------------------------------------- register
    @overload
    def register(self, obj: T) -> T: ...

    @overload
    def register(self, obj: None = None, *, name: str | None = None) -> Callable[[T], T]: ...

    def register(self, obj: T | None = None, *, name: str | None = None) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name`` (default: its ``name`` attribute); usable as a decorator.

        Registering a different object under a taken name is refused (two plugins
        claiming one config name is a bug); registering the same object again is a no-op.
        """

        def add(item: T) -> T:
            key = name or getattr(item, "name", None)
            if not isinstance(key, str) or not key:
                raise ValueError(f"a {self.kind} needs a non-empty string name to be registered, got {key!r}")
            if key in self._entries and self._entries[key] is not item:
                raise ValueError(f"{self.kind} name {key!r} is already registered to {self._entries[key]!r}")
            self._entries[key] = item
            return item

        return add if obj is None else add(obj)

    @property
    def default(self) -> str:
        """The name a config that names none gets (set by the built-in plugins with :meth:`set_default`)."""
        self._load_builtin()
        if self._default is None:
            raise ConfigError(f"no default {self.kind}: name one (known: {', '.join(self.names()) or 'none'})")
        return self._default

    def set_default(self, name: str) -> None:
        if name not in self._entries:
            raise ValueError(f"cannot make {name!r} the default {self.kind}: it is not registered")
        self._default = name

    def unregister(self, name: str) -> None:
        """Remove a plugin (tests that register a temporary one clean up with this)."""
        self._entries.pop(name, None)

    # ------------------------------------------------------------------ lookup
    def _load_builtin(self) -> None:
        if not self._loaded:
            self._loaded = True  # before importing: a builtin module may look itself up
            for module in self._builtin:
                importlib.import_module(module)

    def get(self, name: Any) -> T:
        """The plugin registered as ``name``, or a :class:`ConfigError` listing the known names."""
        self._load_builtin()
        if not isinstance(name, str) or name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r} (known: {', '.join(self.names()) or 'none'})")
        return self._entries[name]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def names(self) -> list[str]:
        self._load_builtin()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_builtin()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        self._load_builtin()
        return sorted(self._entries.items())

    def build(self, spec: Mapping[str, Any], **extra: Any) -> Any:
        """``{"name": ..., **kwargs}`` -> an instance; a bad keyword becomes a ConfigError naming the plugin."""
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ConfigError(f"a {self.kind} must be a mapping with a 'name', got {spec!r}")
        kwargs = dict(spec)
        factory: Any = self.get(kwargs.pop("name"))
        try:
            return factory(**kwargs, **extra)
        except TypeError as exc:
            raise ConfigError(f"{self.kind} {spec['name']!r}: {exc}") from None

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} registered)"


# The registries of the toolkit. Plugins register themselves in the modules listed here.
TASKS: Registry[Any] = Registry("task", ("backdoorlab.tasks",))
MODELS: Registry[Any] = Registry("model", ("backdoorlab.tasks",))
TRIGGERS: Registry[Any] = Registry("trigger", ("backdoorlab.triggers",))
RELABELS: Registry[Any] = Registry("relabel", ("backdoorlab.tasks",))
SELECTORS: Registry[Any] = Registry("selector", ("backdoorlab.attacks.selectors",))
DEFENCES: Registry[Any] = Registry("defence", ("backdoorlab.defenses",))
