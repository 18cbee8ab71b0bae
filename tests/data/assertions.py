"""Assertions shared by the loader tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from backdoorlab.errors import DatasetError


def raises_naming(fn: Callable[[], Any], *needles: str) -> str:
    """Call ``fn``, expect one :class:`DatasetError` whose message holds every needle (file, line, field)."""
    with pytest.raises(DatasetError) as info:
        fn()
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg}"
    return msg
