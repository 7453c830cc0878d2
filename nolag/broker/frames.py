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

CODE_RATE_LIMIT = 42910
CODE_MESSAGE_TOO_LARGE = 42930
CODE_UNKNOWN_TOPIC = 42940

SERVER_PROTOCOL_VERSION = 2
HEARTBEAT = b""
"""The empty binary frame: a heartbeat, echoed after auth."""

UNKNOWN_ROOM_HINT = "no room with this slug in the project (roomId takes a room slug)"
PUBSUB_HINT = "the local broker serves presence only; publish/subscribe is not implemented"


def error(name: str, **extra: Any) -> Frame:
    """An error frame; ``extra`` keys whose value is None are left out."""
    frame: Frame = {"type": "error", "error": name}
    frame.update({k: v for k, v in extra.items() if v is not None})
    return frame


def auth_ok(identity: Identity, protocol_version: int) -> Frame:
    """The successful auth reply as the real broker shapes it, plus ``rateLimit``."""
    return {
        "type": "auth",
        "success": True,
        "actorTokenId": identity.actor_token_id,
        "actorType": identity.actor_type,
        "projectId": identity.project_id,
        "protocolVersion": protocol_version,
        "restoredSubscriptions": [],
        # extension: the token's message rate, so clients can pace themselves under it
        "rateLimit": identity.rate_limit,
    }


def auth_denied() -> Frame:
    """The refused auth reply (the socket stays open)."""
    return {"type": "auth", "success": False, "error": ACCESS_DENIED}


def presence_event(
    event: str,
    actor_id: str,
    conn_id: str,
    room: Optional[str],
    presence: Optional[Mapping[str, Any]],
) -> Frame:
    """A presence event: Kraken's snake_case ``data`` plus ``roomId`` and ``connectionId``."""
    data: Frame = {"actor_token_id": actor_id, "connectionId": conn_id}
    if presence is not None:
        data["presence"] = presence
    return {"type": "presence", "event": event, "roomId": room, "data": data}


def list_entry(
    actor_id: str,
    actor_type: str,
    conn_id: str,
    presence: Mapping[str, Any],
    joined_at: int,
    update_seq: int,
) -> Frame:
    """One socket's entry in a ``presenceList`` (camelCase, as the real broker).

    Extensions: ``actorType``, ``connectionId``, and ``updateSeq``, the order of the
    socket's last presence change (larger is newer), so a client can tell which of an
    actor's sockets set its presence last.
    """
    return {
        "actorTokenId": actor_id,
        "actorType": actor_type,
        "connectionId": conn_id,
        "joinedAt": joined_at,
        "presence": presence,
        "status": "online",
        "updateSeq": update_seq,
    }


def presence_list(room: Optional[str], entries: Iterable[Frame]) -> Frame:
    """The ``getPresence`` reply; ``roomId`` is nil for the project-level list."""
    return {"type": "presenceList", "roomId": room, "data": list(entries)}


def lobby_event(
    event: str, lobby_slug: str, room: str, actor_id: str, presence: Optional[Mapping[str, Any]]
) -> Frame:
    """A ``lobbyPresence`` event; ``lobbyId`` is the slug the client subscribed with."""
    return {
        "type": "lobbyPresence",
        "event": event,
        "lobbyId": lobby_slug,
        "roomId": room,
        "actorId": actor_id,
        "data": dict(presence) if presence is not None else {},
    }


def lobby_presence(kind: str, lobby_slug: str, presence: Mapping[str, Any]) -> Frame:
    """A ``lobbySubscribed`` or ``lobbyPresenceList`` snapshot frame."""
    return {"type": kind, "lobbyId": lobby_slug, "presence": dict(presence)}


def lobby_unsubscribed(lobby_slug: str) -> Frame:
    """The ``lobbyUnsubscribe`` reply (sent even for a lobby never subscribed)."""
    return {"type": "lobbyUnsubscribed", "lobbyId": lobby_slug}
