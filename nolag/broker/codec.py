"""Bytes ↔ maps: decoding client frames (MessagePack or JSON text) and encoding replies."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import msgpack

Frame = dict[str, Any]
"""One decoded message: a map that should hold a ``type`` key."""


class BadFrame(ValueError):
    """A frame that is not a usable message; ``hint`` says why, for the error frame."""

    def __init__(self, hint: str) -> None:
        """Keep the human-readable reason."""
        super().__init__(hint)
        self.hint = hint


def decode_binary(payload: bytes) -> Frame:
    """Decode one binary frame into a map, or raise BadFrame."""
    try:
        value = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises ValueError, TypeError, StackError, ...
        raise BadFrame(f"not a valid MessagePack value ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise BadFrame("a message must be a MessagePack map with a 'type' key")
    return value


def decode_text(text: str) -> Frame:
    """Decode one text frame (JSON, accepted as the real broker does) into a map."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise BadFrame("text frames must hold a JSON object; send binary MessagePack") from None
    if not isinstance(value, dict):
        raise BadFrame("text frames must hold a JSON object; send binary MessagePack")
    return value


def _canonical(value: Any) -> Any:
    """Copy a value with every map's keys sorted, as the real broker emits them."""
    if isinstance(value, Mapping):
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def encode(frame: Mapping[str, Any]) -> bytes:
    """Encode a server frame: keys sorted, strings as str, ints in their smallest form."""
    packed: bytes = msgpack.packb(_canonical(frame), use_bin_type=True)
    return packed
