"""Public value types: immutable presence records, connection states and client options."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, NoReturn, Optional

import attrs

__all__ = [
    "ActorPresence",
    "ConnectionState",
    "ConnectionStatus",
    "FrozenDict",
    "NoLagOptions",
    "freeze",
    "thaw",
]


class FrozenDict(dict):  # type: ignore[type-arg]
    """A dict that refuses mutation: safe to share between threads, still JSON-serialisable."""

    __slots__ = ()

    def _readonly(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("presence data is read-only; use client.set_presence() to change it")

    __setitem__ = _readonly
    __delitem__ = _readonly
    clear = _readonly
    pop = _readonly
    popitem = _readonly
    setdefault = _readonly
    update = _readonly
    __ior__ = _readonly

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenDict:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __repr__(self) -> str:
        return f"FrozenDict({dict.__repr__(self)})"


EMPTY: FrozenDict = FrozenDict()


_SCALARS = frozenset({str, int, float, bool, type(None)})


def freeze(value: Any) -> Any:
    """Return a deeply immutable copy of JSON-like data (dicts → FrozenDict, lists → tuples)."""
    kind = type(value)
    if kind in _SCALARS or kind is FrozenDict:
        return value
    if kind is dict:
        # the hot path: flat presence data from the wire needs no recursion
        for item in value.values():
            if type(item) not in _SCALARS:
                break
        else:
            return FrozenDict(value)
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, Mapping):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Return a plain, mutable copy of frozen data (FrozenDict → dict, tuples → lists)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


def _freeze_presence(value: Any) -> FrozenDict:
    """Presence is a mapping; anything else a foreign client sent becomes an empty mapping."""
    if type(value) is FrozenDict:
        return value
    if isinstance(value, Mapping):
        frozen: FrozenDict = freeze(value)
        return frozen
    return EMPTY


class _PresenceFields(NamedTuple):
    actor_token_id: str
    presence: FrozenDict
    actor_type: Optional[str]
    joined_at: Optional[float]
    room: Optional[str]
    connections: int


class ActorPresence(_PresenceFields):
    """One actor's presence as the cache knows it: who, what kind, custom data, since when.

    An immutable named tuple: hashable, safe to share between threads, and cheap to make
    (the cache makes one per presence event). `presence` is always deeply frozen.
    """

    __slots__ = ()

    def __new__(
        cls,
        actor_token_id: str,
        presence: Any = EMPTY,
        actor_type: Optional[str] = None,
        joined_at: Optional[float] = None,
        room: Optional[str] = None,
        connections: int = 1,
    ) -> ActorPresence:
        fields = (
            actor_token_id,
            _freeze_presence(presence),
            actor_type,
            joined_at,
            room,
            connections,
        )
        return tuple.__new__(cls, fields)

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> ActorPresence:  # type: ignore[override]
        """A record from an iterable of its six fields, through the constructor."""
        return cls(*iterable)

    def _replace(self, **changes: Any) -> ActorPresence:
        """A copy with some fields changed, through the constructor (data frozen again)."""
        return ActorPresence(**{**self._asdict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-ready dict, camelCase keys as on the wire."""
        return {
            "actorTokenId": self.actor_token_id,
            "actorType": self.actor_type,
            "presence": thaw(self.presence),
            "joinedAt": self.joined_at,
            "roomId": self.room,
            "connections": self.connections,
        }


def actor_presence(
    *,
    actor_token_id: str,
    presence: FrozenDict,
    actor_type: Optional[str],
    joined_at: Optional[float],
    room: Optional[str],
    connections: int,
) -> ActorPresence:
    """An ActorPresence from data that is already deeply frozen, built by field name.

    The cache's one factory (it makes one per presence event): it skips the
    constructor's freezing, and naming every field keeps a new field from silently
    shifting the others (a test holds these names equal to `ActorPresence._fields`).
    """
    return tuple.__new__(
        ActorPresence, (actor_token_id, presence, actor_type, joined_at, room, connections)
    )


class ConnectionState(str, enum.Enum):
    """Where the client's connection stands."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"

    def __str__(self) -> str:
        return self.value


def either_room(room: Optional[str], room_id: Optional[str]) -> Optional[str]:
    """`room`, or the official SDKs' `room_id` spelling of it (not both, unless equal).

    Raises TypeError when both are given and differ.
    """
    if room_id is None:
        return room
    if room is not None and room != room_id:
        raise TypeError(f"give room or room_id, not both ({room!r} and {room_id!r})")
    return room_id


def check_timeout(value: Optional[float], default: float, name: str) -> float:
    """A call's `timeout` argument in seconds: `default` when None; TypeError for a
    non-number, ValueError for one not above zero (both naming `name`)."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
    return float(value)


#: the official SDKs' name for `ConnectionState`
ConnectionStatus = ConnectionState


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{attribute.name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


def _ws_url(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a str, not {type(value).__name__}")
    if not value.startswith(("ws://", "wss://")):
        raise ValueError(f"{attribute.name} must start with ws:// or wss://, got {value!r}")
    _no_space(attribute.name, value)


def _no_space(name: str, value: str) -> None:
    """A URL with white space or control characters in it is a typo, not an address."""
    bad = next((c for c in value if c.isspace() or ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ValueError(
            f"{name} contains {bad!r} at position {value.index(bad)}: {value!r} "
            "(percent-encode it, or remove it if it slipped in)"
        )


def _http_url(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValueError(f"{attribute.name} must start with http:// or https://, got {value!r}")
    _no_space(attribute.name, value)


def _opt_str(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{attribute.name} must be a non-empty str or None, got {value!r}")


def _opt_count(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be an int >= 0 or None, got {value!r}")


DEFAULT_URL = "ws://127.0.0.1:8080/ws"


@attrs.frozen(slots=True, kw_only=True)
class NoLagOptions:
    """Everything a client can be told; every field is validated when the options are built."""

    url: str = attrs.field(default=DEFAULT_URL, validator=_ws_url)
    #: base URL of the REST API; derived from `url` (ws→http, wss→https) when None
    rest_url: Optional[str] = attrs.field(default=None, validator=_http_url)
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: timeout of fetch_presence (REST and socket fallback) unless the call gives one
    request_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: seconds between empty-frame heartbeats; the broker closes sockets idle for 60 s
    heartbeat_interval: float = attrs.field(default=30.0, validator=_positive)
    protocol_version: int = attrs.field(default=2, validator=attrs.validators.in_((1, 2)))
    #: room used by set_presence() without a room; None means project-level presence
    default_room: Optional[str] = attrs.field(default=None, validator=_opt_str)
    #: client-side limit on the encoded size of presence data, in bytes
    max_presence_bytes: int = attrs.field(default=16 * 1024, validator=_positive)
    #: most presence frames sent per second (bursts coalesce, latest wins); None: no limit.
    #: A server that states its rate (the local broker does) lowers it to 80% of that.
    max_presence_rate: Optional[float] = attrs.field(default=20.0, validator=_positive)
    #: never announce presence: set_presence() raises (watch through lobbies instead)
    observer: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    #: after presence enters a room, fetch that room's list over the socket and reconcile
    sync_on_join: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    reconnect: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    reconnect_initial_delay: float = attrs.field(default=0.5, validator=_positive)
    reconnect_max_delay: float = attrs.field(default=30.0, validator=_positive)
    reconnect_factor: float = attrs.field(default=2.0, validator=_positive)
    #: seconds the connection may make no progress writing (the server reads nothing)
    #: before it is considered dead and replaced; other clients are never held up by it
    send_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: the largest message accepted from the server, in bytes (the real broker sends none
    #: over 1 MiB); a room's list over it is reported once and no longer synced over the socket
    max_message_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    #: seconds between lobby re-subscriptions, which keep the real broker from forgetting
    #: a lobby's rooms (it does ~300 s after the last subscribe); None: never
    lobby_refresh_interval: Optional[float] = attrs.field(default=240.0, validator=_positive)
    #: None retries for ever
    reconnect_max_attempts: Optional[int] = attrs.field(default=None, validator=_opt_count)
    #: in a forked child (gunicorn --preload, multiprocessing): "reconnect" on first use,
    #: or "raise" NoLagError; the parent's socket is never written either way
    fork_policy: str = attrs.field(
        default="reconnect", validator=attrs.validators.in_(("reconnect", "raise"))
    )

    def derived_rest_url(self) -> str:
        """The REST base URL: rest_url if given, else the WebSocket URL's origin over http(s)."""
        if self.rest_url is not None:
            return self.rest_url.rstrip("/")
        scheme, rest = self.url.split("://", 1)
        host = rest.split("/", 1)[0]
        return f"{'https' if scheme == 'wss' else 'http'}://{host}"

    @classmethod
    def field_names(cls) -> Iterable[str]:
        """Names accepted as keyword options by NoLag(...)."""
        return [a.name for a in attrs.fields(cls)]
