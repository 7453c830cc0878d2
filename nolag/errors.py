"""The nolag exception hierarchy: everything the SDK raises derives from NoLagError."""

from __future__ import annotations

import builtins
from typing import Optional

__all__ = [
    "AuthenticationError",
    "ConnectionClosedError",
    "ConnectionError",
    "ForbiddenError",
    "NoLagError",
    "NotConnectedError",
    "PresenceTimeoutError",
    "RateLimitError",
    "ServerError",
]


class NoLagError(Exception):
    """Base class of every error nolag raises."""


class ConnectionError(NoLagError, builtins.ConnectionError):
    """The server could not be reached, or the connection was lost."""


class ConnectionClosedError(ConnectionError):
    """The connection closed; `code` and `reason` are the server's close frame, if it sent one."""

    def __init__(self, message: str, code: Optional[int] = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class NotConnectedError(NoLagError):
    """A call needs an open, authenticated connection and there is none."""


class AuthenticationError(NoLagError):
    """The server refused the token; `reason` is the server's word (e.g. access_denied)."""

    def __init__(self, reason: str, message: Optional[str] = None) -> None:
        super().__init__(message or f"authentication refused by the server: {reason}")
        self.reason = reason


class PresenceTimeoutError(NoLagError, builtins.TimeoutError):
    """A blocking call did not get its answer within its timeout."""


class ServerError(NoLagError):
    """The server reported an error: `error` is its name, `code` its number if any.

    Error frames on the socket (reported through the client's `error` event) and REST
    failures share this shape: `hint`, `room`, `lobby` and `topic` say what it was about.
    """

    def __init__(
        self,
        error: str,
        code: Optional[int] = None,
        hint: Optional[str] = None,
        room: Optional[str] = None,
        lobby: Optional[str] = None,
        topic: Optional[str] = None,
    ) -> None:
        parts = [error]
        if code is not None:
            parts.append(f"(code {code})")
        if room is not None:
            parts.append(f"room={room!r}")
        if lobby is not None:
            parts.append(f"lobby={lobby!r}")
        if topic is not None:
            parts.append(f"topic={topic!r}")
        if hint:
            parts.append(f"- {hint}")
        self.message = " ".join(parts)  # the human-readable text, also str(exc)
        super().__init__(self.message)
        self.error = error
        self.code = code
        self.hint = hint
        self.room = room
        self.lobby = lobby
        self.topic = topic


class ForbiddenError(ServerError, builtins.PermissionError):
    """The token may not use that room or lobby (HTTP 403 or a not_authorized frame)."""


class RateLimitError(ServerError):
    """The server rate-limited the call; `retry_after` is in seconds when the server said."""

    def __init__(
        self,
        error: str = "rate_limit_exceeded",
        code: Optional[int] = None,
        hint: Optional[str] = None,
        room: Optional[str] = None,
        lobby: Optional[str] = None,
        topic: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(error, code=code, hint=hint, room=room, lobby=lobby, topic=topic)
        self.retry_after = retry_after
