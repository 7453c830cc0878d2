"""nolag: a synchronous, thread-based Python SDK for NoLag realtime presence.

Every public name is imported here eagerly, so that ``from nolag import NoLag`` is
fully typed for a user's type checker (a lazy module ``__getattr__`` made them
``object``). Importing nolag therefore loads the client and its libraries
(websocket-client, requests, msgpack, attrs).
"""

from nolag._version import __version__
from nolag.client import ClientStats, NoLag
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
from nolag.events import (
    ConnectHandler,
    DisconnectHandler,
    ErrorHandler,
    EventName,
    PresenceEventName,
    PresenceHandler,
    ReconnectingHandler,
)
from nolag.lobby import Lobby
from nolag.models import ActorPresence, ConnectionState, ConnectionStatus, NoLagOptions
from nolag.rooms import App, Room
from nolag.typing_indicator import TypingIndicator

__all__ = [
    "ActorPresence",
    "App",
    "AuthenticationError",
    "ClientStats",
    "ConnectHandler",
    "ConnectionClosedError",
    "ConnectionError",
    "ConnectionState",
    "ConnectionStatus",
    "DisconnectHandler",
    "ErrorHandler",
    "EventName",
    "ForbiddenError",
    "Lobby",
    "NoLag",
    "NoLagError",
    "NoLagOptions",
    "NotConnectedError",
    "PresenceEventName",
    "PresenceHandler",
    "PresenceTimeoutError",
    "RateLimitError",
    "ReconnectingHandler",
    "Room",
    "ServerError",
    "TypingIndicator",
    "__version__",
]
