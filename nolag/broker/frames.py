"""Builders for every frame the broker sends, so their shapes live in one place."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Optional

from .tokens import Identity

Frame = dict[str, Any]

# Error names and codes (PROTOCOL.md's table plus the local broker's own names).
NOT_AUTHENTICATED = "not_authenticated"
NOT_AUTHORIZED = "not_authorized"
ACCESS_DENIED = "access_denied"
RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
MESSAGE_TOO_LARGE = "message_too_large"
UNKNOWN_TOPIC = "unknown_topic"
INVALID_MESSAGE = "invalid_message"
INVALID_PRESENCE = "invalid_presence"
UNSUPPORTED = "unsupported"
ALREADY_AUTHENTICATED = "already_authenticated"
CONNECTION_LIMIT_REACHED = "connection_limit_reached"

CODE_RATE_LIMIT = 42910
CODE_MESSAGE_TOO_LARGE = 42930
CODE_UNKNOWN_TOPIC = 42940

SERVER_PROTOCOL_VERSION = 2
HEARTBEAT = b""
"""The empty binary frame: a heartbeat, echoed after auth."""

UNKNOWN_ROOM_HINT = "no room with this slug in the project (roomId takes a room slug)"
PUBSUB_HINT = "the local broker serves presence only; publish/subscribe is not implemented"
REAUTH_HINT = (
    "this socket is already authenticated as another actor; open a new connection to "
    "change identity"
)


def error(name: str, **extra: Any) -> Frame:
    """An error frame; ``extra`` keys whose value is None are left out."""
    frame: Frame = {"type": "error", "error": name}
    frame.update({k: v for k, v in extra.items() if v is not None})
    return frame


def auth_ok(identity: Identity, protocol_version: int, *, kraken: bool = False) -> Frame:
    """The successful auth reply as the real broker shapes it, plus ``rateLimit`` (not in
    Kraken mode)."""
    frame: Frame = {
        "type": "auth",
        "success": True,
        "actorTokenId": identity.actor_token_id,
        "actorType": identity.actor_type,
        "projectId": identity.project_id,
        "protocolVersion": protocol_version,
        "restoredSubscriptions": [],
    }
    if not kraken:
        # extension: the token's message rate, so clients can pace themselves under it
        frame["rateLimit"] = identity.rate_limit
    return frame


def auth_denied(error: str = ACCESS_DENIED) -> Frame:
    """The refused auth reply: ``access_denied`` (the socket stays open), or another
    refusal such as ``connection_limit_reached``."""
    return {"type": "auth", "success": False, "error": error}


def presence_event(
    event: str,
    actor_id: str,
    conn_id: str,
    room: Optional[str],
    presence: Any,
    *,
    actor_type: Optional[str] = None,
    joined_at: Optional[int] = None,
    kraken: bool = False,
) -> Frame:
    """A presence event: Kraken's snake_case ``data`` plus extensions.

    ``presence`` is left out of a ``leave``; on ``join``/``update`` it is sent as is, nil
    included (a ``data: nil`` presence frame is an update to nil, as Kraken does). The
    extensions, which Kraken mode drops: ``roomId`` beside ``data``; ``connectionId`` in
    it; and on ``join``/``update`` the socket's ``actorType`` and ``joinedAt`` (Unix
    seconds, as in lists), so a client's cache holds the same fields whether it learned
    of a member from an event or from a list.
    """
    data: Frame = {"actor_token_id": actor_id}
    if not kraken:
        data["connectionId"] = conn_id
    if event != "leave":
        data["presence"] = presence
        if not kraken:
            if actor_type is not None:
                data["actorType"] = actor_type
            if joined_at is not None:
                data["joinedAt"] = joined_at
    if kraken:
        return {"type": "presence", "event": event, "data": data}
    return {"type": "presence", "event": event, "roomId": room, "data": data}


def list_entry(
    actor_id: str,
    actor_type: str,
    conn_id: str,
    presence: Any,
    joined_at: int,
    update_seq: int,
    *,
    kraken: bool = False,
) -> Frame:
    """One socket's entry in a ``presenceList`` (camelCase, as the real broker).

    Extensions (left out in Kraken mode): ``actorType``, ``connectionId``, and
    ``updateSeq``, the order of the socket's last presence change (larger is newer), so a
    client can tell which of an actor's sockets set its presence last.
    """
    if kraken:
        return {
            "actorTokenId": actor_id,
            "joinedAt": joined_at,
            "presence": presence,
            "status": "online",
        }
    return {
        "actorTokenId": actor_id,
        "actorType": actor_type,
        "connectionId": conn_id,
        "joinedAt": joined_at,
        "presence": presence,
        "status": "online",
        "updateSeq": update_seq,
    }


def presence_list(room: Optional[str], entries: Iterable[Frame], *, kraken: bool = False) -> Frame:
    """The ``getPresence`` reply; ``roomId`` is nil for the project-level list (left out in
    Kraken mode, whose list without a room is always empty)."""
    if kraken and room is None:
        return {"type": "presenceList", "data": list(entries)}
    return {"type": "presenceList", "roomId": room, "data": list(entries)}


def lobby_event(event: str, lobby_id: str, room: str, actor_id: str, presence: Any) -> Frame:
    """A ``lobbyPresence`` event; ``lobby_id`` is the slug the client subscribed with
    (local mode) or the broker's internal lobby id (Kraken mode). ``data`` is ``{}`` on a
    leave, else the presence as is (nil included)."""
    if event == "leave":
        data: Any = {}
    else:
        data = dict(presence) if isinstance(presence, Mapping) else presence
    return {
        "type": "lobbyPresence",
        "event": event,
        "lobbyId": lobby_id,
        "roomId": room,
        "actorId": actor_id,
        "data": data,
    }


def lobby_presence(kind: str, lobby_slug: str, presence: Mapping[str, Any]) -> Frame:
    """A ``lobbySubscribed`` or ``lobbyPresenceList`` snapshot frame."""
    return {"type": kind, "lobbyId": lobby_slug, "presence": dict(presence)}


def lobby_unsubscribed(lobby_slug: str) -> Frame:
    """The ``lobbyUnsubscribe`` reply (sent even for a lobby never subscribed)."""
    return {"type": "lobbyUnsubscribed", "lobbyId": lobby_slug}
