"""The broker's view of presence data: the shared rules of `nolag.values`, keys sorted.

The SDK checks data with the same function before sending, so a client never sends
what its own broker refuses. The broker keeps a canonical copy (keys sorted at every
level) and answers refused data with an ``invalid_presence`` error frame whose ``hint``
is the exception's message, which names the path (``presence data ['a'][0]: ...``).
"""

from __future__ import annotations

from typing import Any

from nolag import values
from nolag.values import MAX_DEPTH, InvalidPresenceData

__all__ = ["MAX_DEPTH", "InvalidPresence", "check_presence_data"]

InvalidPresence = InvalidPresenceData
"""Presence data the broker refuses (a TypeError or ValueError); ``hint`` says why."""


def check_presence_data(value: Any) -> dict[str, Any]:
    """Return a canonical copy of presence ``data`` or raise InvalidPresence with a hint."""
    return values.check_presence_data(value, sort_keys=True)
