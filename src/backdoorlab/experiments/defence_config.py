"""Defence settings from YAML files, ``--param KEY=VALUE`` strings and flat dicts, through one validation.

A defence config file names its method and its settings, schedules as nested sections::

    method: METHOD      # a registered defence
    steps: 200          # one of its settings
    tune: {lr: 2.0e-4}  # a section (a mitigator's fine-tuning schedule)

``--param tune.lr=2e-4`` is a shorthand for the same nested key, and the flat dicts the
bench scripts pass (``{"tune.lr": 2e-4}``) are nested the same way, so all three give the
same validated :class:`~backdoorlab.defenses.settings.DefenceConfig` (and the same
settings hash). Errors name the dotted key under the method: ``METHOD.tune.lr: ...``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, create_model

from backdoorlab.defenses.registration import defence_config_class
from backdoorlab.defenses.settings import DefenceConfig
from backdoorlab.errors import ConfigError
from backdoorlab.experiments.config import dotted, read_yaml_mapping, validate_model


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """``key=value`` strings (values parsed as JSON when they can be) -> a flat dict (dotted keys kept)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def nest(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys -> nested sections (``{"tune.lr": 1}`` -> ``{"tune": {"lr": 1}}``), merged with nested ones."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        *sections, leaf = str(key).split(".")
        node = out
        for i, part in enumerate(sections):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"setting {'.'.join(sections[: i + 1])!r} is a value, not a section (from {key!r})")
            node = child
        if isinstance(value, Mapping):
            value = nest(value)
            if isinstance(node.get(leaf), dict):
                value = {**node[leaf], **value}
        node[leaf] = value
    return out


@functools.cache
def _under_method(config: type[DefenceConfig], method: str) -> type[BaseModel]:
    """A one-field model ``{method: config}``: pydantic then reports every error at ``method.dotted.key``."""
    return create_model(f"{config.__name__}Document", **{method: (config, ...)})  # type: ignore[call-overload]


def defence_config(
    method: str, shape: str, settings: Mapping[str, Any] | None = None, origin: str = "defence settings"
) -> DefenceConfig:
    """The validated settings of ``method`` in ``shape`` ("detection", "mitigation") from a (flat or nested) dict."""
    raw = nest(settings or {})
    named = raw.pop("method", method)
    if named != method:
        raise ConfigError(f"{origin}: method {named!r} does not match --method {method!r}")
    config = defence_config_class(method, shape)
    return getattr(validate_model(_under_method(config, method), {method: raw}, origin), method)


def load_defence_config(
    shape: str,
    path: str | os.PathLike[str] | None = None,
    method: str | None = None,
    params: Mapping[str, Any] | None = None,
    device: str | None = None,
    default_method: str | None = None,
) -> DefenceConfig:
    """Settings from a YAML file (optional), overridden by ``params`` (dotted keys) and ``device`` when given.

    The method is ``method`` when given, else the file's ``method:``, else ``default_method``.
    """
    raw = nest(read_yaml_mapping(path, "defence config")) if path is not None else {}
    chosen = method or raw.get("method") or default_method
    if not chosen:
        raise ConfigError("no defence method: pass --method or give 'method:' in the config")
    if method is not None and raw.get("method", method) != method:
        raise ConfigError(f"{path}: method {raw['method']!r} does not match --method {method!r}")
    raw.pop("method", None)
    merged = nest({**dotted(raw), **dict(params or {})})
    if device is not None:
        merged["device"] = device
    return defence_config(str(chosen), shape, merged, str(path) if path is not None else "--param")
