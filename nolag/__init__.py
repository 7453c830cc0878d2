"""nolag: a synchronous, thread-based Python SDK for NoLag realtime presence."""

from nolag._version import __version__
from nolag.errors import (
    AuthenticationError,
    ConnectionClosedError,
    ConnectionError,
    ForbiddenError,
    NoLagError,
    NotConnectedError,
    PresenceTimeoutError,
    RateLimitError,
    ServerError,
)
from nolag.models import ActorPresence, ConnectionState, LobbyPresenceEvent, NoLagOptions

__all__ = [
    "ActorPresence",
    "AuthenticationError",
    "ConnectionClosedError",
    "ConnectionError",
    "ConnectionState",
    "ForbiddenError",
    "LobbyPresenceEvent",
    "NoLag",
    "NoLagError",
    "NoLagOptions",
    "NotConnectedError",
    "PresenceTimeoutError",
    "RateLimitError",
    "ServerError",
    "__version__",
]


def __getattr__(name: str) -> object:
    """Import the client lazily so `import nolag` stays cheap and cycle-free."""
    if name == "NoLag":
        from nolag.client import NoLag

        return NoLag
    raise AttributeError(f"module 'nolag' has no attribute {name!r}")
