"""Validation of presence data: JSON-like maps only, so no receiver can be crashed by it."""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 32
"""Deepest nesting of maps and lists accepted in presence data."""


class InvalidPresence(ValueError):
    """Presence data the broker refuses; ``hint`` says why, for the error frame."""

    def __init__(self, hint: str) -> None:
        """Keep the human-readable reason."""
        super().__init__(hint)
        self.hint = hint


def _check(value: Any, depth: int, path: str) -> Any:
    """Return a canonical copy of one value (sorted map keys) or raise InvalidPresence."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidPresence(f"{path}: floats must be finite (no NaN or infinity)")
        return value
    if isinstance(value, (bytes, bytearray)):
        raise InvalidPresence(
            f"{path}: binary values (MessagePack bin) are not allowed in presence; send text"
        )
    if depth >= MAX_DEPTH:
        raise InvalidPresence(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key in value:
            if not isinstance(key, str):
                raise InvalidPresence(f"{path}: map keys must be strings")
        for key in sorted(value):
            out[key] = _check(value[key], depth + 1, f"{path}.{key}")
        return out
    if isinstance(value, list):
        return [_check(v, depth + 1, f"{path}[{i}]") for i, v in enumerate(value)]
    raise InvalidPresence(
        f"{path}: {type(value).__name__} values are not allowed "
        "(use str, int, float, bool, nil, lists and maps)"
    )


def check_presence_data(value: Any) -> dict[str, Any]:
    """Return a canonical copy of presence ``data`` or raise InvalidPresence with a hint."""
    if not isinstance(value, dict):
        raise InvalidPresence("presence 'data' must be a map of JSON-like values")
    checked: dict[str, Any] = _check(value, 0, "data")
    return checked
