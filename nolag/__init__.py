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
from nolag.models import ActorPresence, ConnectionState, NoLagOptions

__all__ = [
    "ActorPresence",
    "App",
    "AuthenticationError",
    "ClientStats",
    "ConnectionClosedError",
    "ConnectionError",
    "ConnectionState",
    "ForbiddenError",
    "Lobby",
    "NoLag",
    "NoLagError",
    "NoLagOptions",
    "NotConnectedError",
    "PresenceTimeoutError",
    "RateLimitError",
    "Room",
    "ServerError",
    "TypingIndicator",
    "__version__",
]


_LAZY = {
    "NoLag": "nolag.client",
    "ClientStats": "nolag.client",
    "App": "nolag.rooms",
    "Room": "nolag.rooms",
    "Lobby": "nolag.lobby",
    "TypingIndicator": "nolag.typing_indicator",
}


def __getattr__(name: str) -> object:
    """Import the client lazily so `import nolag` stays cheap and cycle-free."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nolag' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
