"""The NoLag wire protocol, sans-IO: encode client frames, decode server frames to typed events.

Nothing here touches a socket, a thread or a clock. The decoders never raise: a frame they
cannot make sense of comes back as a `ProtocolError` value for the reader to log and count.
Server frames mix key casings (presence events are snake_case, lists camelCase); every
lookup accepts both, and unknown keys are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Optional, Union

import attrs
import msgpack

from nolag import values

__all__ = [
    "HEARTBEAT",
    "AuthOk",
    "AuthRefused",
    "ErrorFrame",
    "Heartbeat",
    "LobbyPresence",
    "LobbySnapshot",
    "LobbyUnsubscribed",
    "OtherFrame",
    "PresenceEntry",
    "PresenceEvent",
    "PresenceList",
    "ProtocolError",
    "ServerFrame",
    "decode_entry",
    "decode_frame",
    "decode_frames",
    "decode_map",
    "encode_auth",
    "encode_clear_presence",
    "encode_get_lobby_presence",
    "encode_get_presence",
    "encode_lobby_subscribe",
    "encode_lobby_unsubscribe",
    "encode_presence",
    "presence_event",
    "validate_presence_data",
]

#: the heartbeat is an empty binary frame, both ways
HEARTBEAT = b""

PRESENCE_KINDS = ("join", "update", "leave")


# ---------------------------------------------------------------- server → client events


@attrs.frozen(slots=True)
class Heartbeat:
    """The server's echo of an empty-frame heartbeat."""


@attrs.frozen(slots=True)
class AuthOk:
    """Authentication succeeded: who the token is."""

    actor_token_id: str
    project_id: Optional[str]
    actor_type: Optional[str]
    protocol_version: int
    restored_subscriptions: tuple[Any, ...] = ()
    #: the local broker's extension: the token's message rate (frames/s), when it says
    rate_limit: Optional[float] = None


@attrs.frozen(slots=True)
class AuthRefused:
    """Authentication failed; `error` is the server's reason (e.g. access_denied)."""

    error: str


class PresenceEvent(NamedTuple):
    """A room or project presence join/update/leave.

    `room_given` is False when the frame had no roomId key (the real broker never sends
    one: the event belongs to the receiving socket's room); when True, `room` is the slug,
    or None for project-level presence. A NamedTuple, unlike the other events: it is made
    once per presence frame on the reader's hot path, where it costs half an attrs class.
    """

    kind: str
    actor_token_id: str
    presence: Any
    room: Optional[str] = None
    room_given: bool = False
    connection_id: Optional[str] = None
    actor_type: Optional[str] = None
    #: the socket's joinedAt (epoch seconds), where the broker sends it: the local broker's
    #: extension; Kraken's events carry none (PROTOCOL "Presence")
    joined_at: Optional[float] = None


def presence_event(
    *,
    kind: str,
    actor_token_id: str,
    presence: Any,
    room: Optional[str],
    room_given: bool,
    connection_id: Optional[str],
    actor_type: Optional[str],
    joined_at: Optional[float],
) -> PresenceEvent:
    """A PresenceEvent built by field name: the decoder's one factory (hot path, no checks;
    a test holds these names equal to `PresenceEvent._fields`)."""
    return _new_tuple(
        PresenceEvent,
        (kind, actor_token_id, presence, room, room_given, connection_id, actor_type, joined_at),
    )


@attrs.frozen(slots=True)
class PresenceEntry:
    """One socket's entry in a presence list."""

    actor_token_id: str
    presence: Any
    joined_at: Optional[float] = None
    status: Optional[str] = None
    connection_id: Optional[str] = None
    actor_type: Optional[str] = None
    #: sockets behind this entry: 1 in socket lists, the actor's count in REST answers
    connections: int = 1
    #: the local broker's order of this socket's last presence change (larger is newer)
    update_seq: Optional[int] = None


@attrs.frozen(slots=True)
class PresenceList:
    """The reply to getPresence: one entry per socket present in `room` (None: project level)."""

    room: Optional[str]
    entries: tuple[PresenceEntry, ...]


@attrs.frozen(slots=True)
class LobbySnapshot:
    """lobbySubscribed (`initial`) or lobbyPresenceList: {room slug: {actor id: entry}}."""

    lobby_id: str
    rooms: Mapping[str, Mapping[str, PresenceEntry]]
    initial: bool


@attrs.frozen(slots=True)
class LobbyPresence:
    """A presence change in one of a lobby's rooms."""

    kind: str
    lobby_id: str
    room: str
    actor_token_id: str
    presence: Any


@attrs.frozen(slots=True)
class LobbyUnsubscribed:
    """The server confirmed a lobbyUnsubscribe."""

    lobby_id: str


@attrs.frozen(slots=True)
class ErrorFrame:
    """An error frame: name, optional numeric code and the context the server gave."""

    error: str
    code: Optional[int] = None
    hint: Optional[str] = None
    room: Optional[str] = None
    lobby_id: Optional[str] = None
    topic: Optional[str] = None
    msg_ref: Optional[str] = None
    max_size_bytes: Optional[int] = None


@attrs.frozen(slots=True)
class OtherFrame:
    """A well-formed frame of a type presence does not use (subscribed, message, ...)."""

    type: str
    fields: Mapping[str, Any]


@attrs.frozen(slots=True)
class ProtocolError:
    """A frame that could not be decoded; a value, never raised out of the reader."""

    reason: str
    payload: bytes = b""


ServerFrame = Union[
    Heartbeat,
    AuthOk,
    AuthRefused,
    PresenceEvent,
    PresenceList,
    LobbySnapshot,
    LobbyPresence,
    LobbyUnsubscribed,
    ErrorFrame,
    OtherFrame,
]

_HEARTBEAT = Heartbeat()
_unpackb = msgpack.unpackb
_new_tuple = tuple.__new__  # a NamedTuple without its Python-level __new__ (the hot path)
_MISSING = object()


def _get(frame: Mapping[str, Any], camel: str, snake: str, default: Any = None) -> Any:
    """Look a key up in either casing."""
    value = frame.get(camel, _MISSING)
    if value is _MISSING:
        value = frame.get(snake, default)
    return value


def _opt_str(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def _opt_time(value: Any) -> Optional[float]:
    """joinedAt is Unix seconds; accept ints/floats, and milliseconds if a server sends them."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        return None
    seconds = float(value)
    return seconds / 1000.0 if seconds > 1e11 else seconds


def _opt_rate(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return None
    return float(value) if math.isfinite(value) else None


def _opt_int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Bad(ValueError):
    """Internal: the frame is malformed; turned into a ProtocolError value."""


def _req_str(frame: Mapping[str, Any], camel: str, snake: str) -> str:
    value = _get(frame, camel, snake)
    if not isinstance(value, str) or not value:
        raise _Bad(f"missing or non-string {camel!r}")
    return value


def decode_entry(raw: Any) -> PresenceEntry:
    """Decode one presence list entry (socket list or REST); raises ValueError if malformed."""
    if not isinstance(raw, Mapping):
        raise _Bad("presence list entry is not a map")
    return PresenceEntry(
        actor_token_id=_req_str(raw, "actorTokenId", "actor_token_id"),
        presence=raw.get("presence"),
        joined_at=_opt_time(_get(raw, "joinedAt", "joined_at")),
        status=_opt_str(raw.get("status")),
        connection_id=_opt_str(_get(raw, "connectionId", "connection_id")),
        actor_type=_opt_str(_get(raw, "actorType", "actor_type")),
        connections=_connections(raw.get("connections")),
        update_seq=_opt_int(_get(raw, "updateSeq", "update_seq")),
    )


def _connections(value: Any) -> int:
    count = _opt_int(value)
    return count if count is not None and count > 0 else 1


def _decode_auth(frame: Mapping[str, Any]) -> Union[AuthOk, AuthRefused]:
    if frame.get("success") is True:
        version = _opt_int(_get(frame, "protocolVersion", "protocol_version"))
        restored = _get(frame, "restoredSubscriptions", "restored_subscriptions", ())
        return AuthOk(
            actor_token_id=_req_str(frame, "actorTokenId", "actor_token_id"),
            project_id=_opt_str(_get(frame, "projectId", "project_id")),
            actor_type=_opt_str(_get(frame, "actorType", "actor_type")),
            protocol_version=version if version is not None else 1,
            restored_subscriptions=tuple(restored) if isinstance(restored, list) else (),
            rate_limit=_opt_rate(_get(frame, "rateLimit", "rate_limit")),
        )
    error = frame.get("error")
    return AuthRefused(error=error if isinstance(error, str) and error else "access_denied")


def _decode_presence(frame: Mapping[str, Any]) -> PresenceEvent:
    # every shape of presence event: either key casing, the local broker's extensions
    kind = frame.get("event")
    if kind not in PRESENCE_KINDS:
        raise _Bad(f"presence event {kind!r} is not join, update or leave")
    data = frame.get("data")
    if type(data) is not dict and not isinstance(data, Mapping):
        raise _Bad("presence event without a data map")
    actor = data.get("actor_token_id")
    if actor is None:
        actor = data.get("actorTokenId")
    if type(actor) is not str or not actor:
        raise _Bad("missing or non-string 'actorTokenId'")
    room: Any = None
    room_given = False
    connection_id = actor_type = None
    joined_at: Optional[float] = None
    if len(frame) > 3:  # more than type, event and data: the local broker's extensions
        room_given = "roomId" in frame or "room_id" in frame
        room = _get(frame, "roomId", "room_id")
        if room is not None and type(room) is not str:
            raise _Bad("presence event roomId is not a string")
        connection_id = _opt_str(_get(frame, "connectionId", "connection_id"))
    if len(data) > (1 if kind == "leave" else 2):  # more than actor_token_id (and presence)
        connection_id = _opt_str(_get(data, "connectionId", "connection_id")) or connection_id
        actor_type = _opt_str(_get(data, "actorType", "actor_type"))
        joined_at = _opt_time(_get(data, "joinedAt", "joined_at"))
    return presence_event(
        kind=kind,
        actor_token_id=actor,
        presence=data.get("presence") if kind != "leave" else None,
        room=room,
        room_given=room_given,
        connection_id=connection_id,
        actor_type=actor_type,
        joined_at=joined_at,
    )


def _decode_list(frame: Mapping[str, Any]) -> PresenceList:
    data = frame.get("data")
    if not isinstance(data, list):
        raise _Bad("presenceList without a data list")
    room = _get(frame, "roomId", "room_id")
    if room is not None and not isinstance(room, str):
        raise _Bad("presenceList roomId is not a string")
    return PresenceList(room=room, entries=tuple(decode_entry(e) for e in data))


def _decode_lobby_rooms(raw: Any) -> dict[str, dict[str, PresenceEntry]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _Bad("lobby presence is not a map")
    rooms: dict[str, dict[str, PresenceEntry]] = {}
    for room, actors in raw.items():
        if not isinstance(room, str) or not isinstance(actors, Mapping):
            raise _Bad("lobby presence room is not a map of actors")
        members: dict[str, PresenceEntry] = {}
        for actor_id, entry in actors.items():
            if not isinstance(actor_id, str) or not isinstance(entry, Mapping):
                raise _Bad("lobby presence entry is not a map")
            if "actorTokenId" not in entry and "actor_token_id" not in entry:
                entry = {**entry, "actorTokenId": actor_id}
            members[actor_id] = decode_entry(entry)
        rooms[room] = members
    return rooms


def _decode_lobby_presence(frame: Mapping[str, Any]) -> LobbyPresence:
    kind = frame.get("event")
    if kind not in PRESENCE_KINDS:
        raise _Bad(f"lobbyPresence event {kind!r} is not join, update or leave")
    return LobbyPresence(
        kind=kind,
        lobby_id=_req_str(frame, "lobbyId", "lobby_id"),
        room=_req_str(frame, "roomId", "room_id"),
        actor_token_id=_req_str(frame, "actorId", "actor_id"),
        presence=frame.get("data") if kind != "leave" else None,
    )


def _decode_error(frame: Mapping[str, Any]) -> ErrorFrame:
    error = frame.get("error")
    return ErrorFrame(
        error=error if isinstance(error, str) and error else "unknown_error",
        code=_opt_int(frame.get("code")),
        hint=_opt_str(frame.get("hint")),
        room=_opt_str(_get(frame, "roomId", "room_id")),
        lobby_id=_opt_str(_get(frame, "lobbyId", "lobby_id")),
        topic=_opt_str(frame.get("topic")),
        msg_ref=_opt_str(_get(frame, "msgRef", "msg_ref")),
        max_size_bytes=_opt_int(_get(frame, "maxSizeBytes", "max_size_bytes")),
    )


def decode_map(frame: Any) -> Union[ServerFrame, ProtocolError]:
    """Turn one decoded MessagePack value into a typed server event (or a ProtocolError)."""
    if type(frame) is not dict and not isinstance(frame, Mapping):
        return ProtocolError(f"frame is a {type(frame).__name__}, not a map")
    kind = frame.get("type")
    try:
        if kind == "presence":
            return _decode_presence(frame)
        if kind == "presenceList":
            return _decode_list(frame)
        if kind == "auth":
            return _decode_auth(frame)
        if kind == "lobbyPresence":
            return _decode_lobby_presence(frame)
        if kind in ("lobbySubscribed", "lobbyPresenceList"):
            return LobbySnapshot(
                lobby_id=_req_str(frame, "lobbyId", "lobby_id"),
                rooms=_decode_lobby_rooms(frame.get("presence")),
                initial=kind == "lobbySubscribed",
            )
        if kind == "lobbyUnsubscribed":
            return LobbyUnsubscribed(lobby_id=_req_str(frame, "lobbyId", "lobby_id"))
        if kind == "error":
            return _decode_error(frame)
        if isinstance(kind, str) and kind:
            return OtherFrame(type=kind, fields=dict(frame))
        return ProtocolError("frame has no type")
    except _Bad as exc:
        return ProtocolError(f"malformed {kind} frame: {exc}")


def decode_frame(payload: bytes) -> Union[ServerFrame, ProtocolError]:
    """Decode one binary WebSocket message from the server. Never raises."""
    return decode_frames((payload,))[0]


def decode_frames(payloads: Iterable[bytes]) -> list[Union[ServerFrame, ProtocolError]]:
    """Decode binary WebSocket messages from the server, in order. Never raises.

    The reader's hot path: a whole batch in one call, and the real broker's plain presence
    event (type, event and data; data holding actor_token_id, and presence unless a leave)
    decoded inline. Anything else takes `decode_map`, which gives the same result.
    """
    out: list[Union[ServerFrame, ProtocolError]] = []
    append = out.append
    unpackb = _unpackb
    event = presence_event
    for payload in payloads:
        if not payload:
            append(_HEARTBEAT)
            continue
        try:
            value = unpackb(payload, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types on garbage
            append(ProtocolError(f"undecodable MessagePack: {exc!r}", bytes(payload[:256])))
            continue
        if type(value) is dict and len(value) == 3:
            try:  # subscripts, not .get(): a missing key raises and takes the general path
                if value["type"] == "presence" and type(value["data"]) is dict:
                    kind = value["event"]
                    data = value["data"]
                    actor = data["actor_token_id"]
                    if kind == "leave" and len(data) == 1:
                        presence = None
                    elif (kind == "join" or kind == "update") and len(data) == 2:
                        presence = data["presence"]
                    else:
                        presence = _MISSING
                    if presence is not _MISSING and type(actor) is str and actor:
                        append(
                            event(
                                kind=kind,
                                actor_token_id=actor,
                                presence=presence,
                                room=None,
                                room_given=False,
                                connection_id=None,
                                actor_type=None,
                                joined_at=None,
                            )
                        )
                        continue
            except KeyError:
                pass
        result = decode_map(value)
        if type(result) is ProtocolError and not result.payload:
            result = ProtocolError(result.reason, bytes(payload[:256]))
        append(result)
    return out


# ---------------------------------------------------------------- client → server frames


def _pack(frame: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(frame, use_bin_type=True)
    return packed


def encode_auth(token: str, protocol_version: int = 2, reconnect: bool = False) -> bytes:
    """The first frame: the actor token, the protocol version, and the reconnect flag if set."""
    if not isinstance(token, str) or not token:
        raise ValueError("token must be a non-empty str")
    frame: dict[str, Any] = {"type": "auth", "token": token, "protocolVersion": protocol_version}
    if reconnect:
        frame["reconnect"] = True
    return _pack(frame)


def encode_presence(data: Mapping[str, Any], room: Optional[str] = None) -> bytes:
    """Set presence in `room`, or at project level when room is None (no roomId key)."""
    frame: dict[str, Any] = {"type": "presence"}
    if room is not None:
        frame["roomId"] = room
    frame["data"] = dict(data)
    return _pack(frame)


def encode_clear_presence(room: Optional[str] = None) -> bytes:
    """Clear presence: empty data (the protocol has no separate leave-room frame)."""
    return encode_presence({}, room)


def encode_get_presence(room: Optional[str] = None) -> bytes:
    """Ask for the presence list of `room` (project level when None)."""
    frame: dict[str, Any] = {"type": "getPresence"}
    if room is not None:
        frame["roomId"] = room
    return _pack(frame)


def encode_lobby_subscribe(lobby: str) -> bytes:
    """Subscribe to a lobby's presence across its rooms."""
    return _pack({"type": "lobbySubscribe", "lobbyId": lobby})


def encode_lobby_unsubscribe(lobby: str) -> bytes:
    """Stop receiving a lobby's presence events."""
    return _pack({"type": "lobbyUnsubscribe", "lobbyId": lobby})


def encode_get_lobby_presence(lobby: str) -> bytes:
    """Ask for a lobby's current presence snapshot."""
    return _pack({"type": "getLobbyPresence", "lobbyId": lobby})


# ---------------------------------------------------------------- presence data validation


def validate_presence_data(data: Any, max_bytes: int) -> tuple[dict[str, Any], bytes]:
    """Check presence data before anything is sent; return a plain copy and its encoding.

    The rules are `nolag.values`' (the local broker applies the same ones). Raises
    TypeError naming the path (``presence data ['a'][0]: ...``) for anything that is not
    JSON-like, ValueError naming the path for data nested deeper than
    `nolag.values.MAX_DEPTH` levels or containing itself, and ValueError naming the limit
    when the encoded data is larger than `max_bytes`.
    """
    plain = values.check_presence_data(data)
    packed = _pack(plain)
    if len(packed) > max_bytes:
        raise ValueError(
            f"presence data is {len(packed)} bytes encoded, over the max_presence_bytes "
            f"limit of {max_bytes}; keep presence small (ids and short status strings)"
        )
    return plain, packed
