"""The broker's protocol logic, sans-IO: frames in, deliveries out, for every socket.

The server feeds each received WebSocket message to :class:`BrokerCore` and sends the
returned deliveries; nothing here touches a socket, so every rule is unit-testable.

Decisions where the real broker is silent, defective or has no equivalent:

- Order of checks for a non-empty frame: size (``message_too_large``), rate
  (``rate_limit_exceeded``; before auth the default rate applies), decoding
  (``invalid_message``; before auth every unusable frame is ``not_authenticated``),
  then the message itself. Heartbeats (empty binary frames) are exempt from all of it.
- A second ``auth`` on an authenticated socket first ends the old session exactly as
  a close would (leaves broadcast, lobby subscriptions dropped), then is handled as a
  first auth: success gives the socket its new identity, failure leaves it
  unauthenticated. The socket keeps its ``connectionId``.
- Publish/subscribe frames (``subscribe``, ``unsubscribe``, ``publish``, ``ack``,
  ``batchAck``) get an ``unsupported`` error frame (with ``topic`` / ``msgRef`` echoed).
- Presence whose ``data`` is missing, not a map, or holds anything but JSON-like values
  (MessagePack ``bin``, extension types, non-string keys, non-finite floats, nesting
  deeper than 32) gets an ``invalid_presence`` error frame with a ``hint``.
- Error frames echo the request's ``msgRef`` when it is a string or an integer.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import frames
from .codec import BadFrame, Frame, decode_binary, decode_text
from .config import BrokerConfig
from .payload import InvalidPresence, check_presence_data
from .ratelimit import TokenBucket
from .state import Delivery, Registry
from .tokens import Identity, RoomAccess, TokenStore

logger = logging.getLogger("nolag.broker")

PUBSUB_TYPES = frozenset({"subscribe", "unsubscribe", "publish", "ack", "batchAck"})


@dataclass
class Connection:
    """The protocol state of one socket, owned by the core."""

    conn_id: str
    bucket: TokenBucket
    identity: Optional[Identity] = None
    protocol_version: int = 1

    @property
    def authenticated(self) -> bool:
        """True once a valid auth frame was received."""
        return self.identity is not None


def _msg_ref(frame: Frame) -> Any:
    """The request's ``msgRef`` if it is safe to echo, else None."""
    ref = frame.get("msgRef")
    if isinstance(ref, str) or (isinstance(ref, int) and not isinstance(ref, bool)):
        return ref
    return None


def _bad_room_field(frame: Frame) -> Frame:
    """The error for a ``roomId`` that is neither a slug nor nil."""
    return frames.error(
        frames.INVALID_MESSAGE,
        hint="roomId must be a room slug (string) or nil",
        msgRef=_msg_ref(frame),
    )


def _rate_limited(frame: Frame | None) -> Frame:
    """The rate-limit error, naming the refused request (roomId, lobbyId, topic, msgRef).

    The real broker names the ``topic`` of a refused publish; naming the room or lobby
    lets a client fail the matching request at once instead of waiting for its reply.
    """
    context: dict[str, Any] = {}
    if frame is not None:
        for key in ("roomId", "lobbyId", "topic"):
            value = frame.get(key)
            if isinstance(value, str):
                context[key] = value
        context["msgRef"] = _msg_ref(frame)
    return frames.error(frames.RATE_LIMIT_EXCEEDED, code=frames.CODE_RATE_LIMIT, **context)


def _protocol_version(value: Any) -> int:
    """min(client, server) version; a non-integer or absent version means 1."""
    if not isinstance(value, int) or isinstance(value, bool):
        return 1
    return max(1, min(value, frames.SERVER_PROTOCOL_VERSION))


class BrokerCore:
    """Authenticates sockets and applies their messages to the registry."""

    def __init__(
        self,
        tokens: TokenStore,
        config: Optional[BrokerConfig] = None,
        *,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        """Use ``wall`` for ``joinedAt`` and ``mono`` for rate limits (injectable for tests)."""
        self.tokens = tokens
        self.config = config or BrokerConfig()
        self.registry = Registry()
        self.wall = wall
        self.mono = mono

    # -- socket lifecycle ---------------------------------------------------------

    def open(self) -> Connection:
        """A new, unauthenticated socket with a fresh opaque connection id."""
        return Connection(
            conn_id="c-" + secrets.token_hex(8),
            bucket=TokenBucket(self.config.default_rate_limit, self.mono()),
        )

    def close(self, conn: Connection) -> list[Delivery]:
        """The socket is gone (any reason): drop its presence, return the leaves."""
        if conn.identity is None:
            return []
        conn.identity = None
        return self.registry.remove(conn.conn_id)

    # -- frames in ------------------------------------------------------------------

    def receive_binary(self, conn: Connection, payload: bytes) -> list[Delivery]:
        """Handle one binary frame (MessagePack, or empty for a heartbeat)."""
        if not payload:
            return [(conn.conn_id, frames.HEARTBEAT)] if conn.authenticated else []
        return self._receive(conn, len(payload), lambda: decode_binary(payload))

    def receive_text(self, conn: Connection, text: str) -> list[Delivery]:
        """Handle one text frame (JSON, accepted as the real broker does; replies are binary)."""
        size = len(text.encode("utf-8", "surrogatepass"))
        return self._receive(conn, size, lambda: decode_text(text))

    def _reply(self, conn: Connection, frame: Frame) -> list[Delivery]:
        """A single frame for the sender."""
        return [(conn.conn_id, frame)]

    def _receive(self, conn: Connection, size: int, decode: Callable[[], Frame]) -> list[Delivery]:
        """Size, decode and rate checks shared by binary and text frames.

        Decoding comes before the rate check only so that a rate-limit error can name
        the refused request; every non-heartbeat frame, decodable or not, costs a token.
        """
        if size > self.config.max_message_bytes:
            return self._reply(
                conn,
                frames.error(
                    frames.MESSAGE_TOO_LARGE,
                    code=frames.CODE_MESSAGE_TOO_LARGE,
                    maxSizeBytes=self.config.max_message_bytes,
                ),
            )
        frame: Frame | None = None
        bad: BadFrame | None = None
        try:
            frame = decode()
        except BadFrame as exc:
            bad = exc
        if not conn.bucket.take(self.mono()):
            return self._reply(conn, _rate_limited(frame))
        if frame is None:
            if not conn.authenticated:
                return self._reply(conn, frames.error(frames.NOT_AUTHENTICATED))
            hint = bad.hint if bad is not None else "not a message"
            return self._reply(conn, frames.error(frames.INVALID_MESSAGE, hint=hint))
        return self.handle(conn, frame)

    def handle(self, conn: Connection, frame: Frame) -> list[Delivery]:
        """Dispatch one decoded message by its ``type``."""
        kind = frame.get("type")
        if kind == "auth":
            return self._auth(conn, frame)
        if conn.identity is None:
            return self._reply(conn, frames.error(frames.NOT_AUTHENTICATED))
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is not None:
            return handler(self, conn, conn.identity, frame)
        if kind in PUBSUB_TYPES:
            topic = frame.get("topic")
            return self._reply(
                conn,
                frames.error(
                    frames.UNSUPPORTED,
                    hint=frames.PUBSUB_HINT,
                    topic=topic if isinstance(topic, str) else None,
                    msgRef=_msg_ref(frame),
                ),
            )
        hint = (
            "a message needs a string 'type'"
            if not isinstance(kind, str)
            else f"unknown message type {kind[:64]!r}"
        )
        return self._reply(
            conn, frames.error(frames.INVALID_MESSAGE, hint=hint, msgRef=_msg_ref(frame))
        )

    # -- auth ---------------------------------------------------------------------

    def _auth(self, conn: Connection, frame: Frame) -> list[Delivery]:
        """Authenticate (or re-authenticate) the socket."""
        token = frame.get("token")
        if token is None:
            return self._reply(conn, frames.error(frames.NOT_AUTHENTICATED))
        out = self.close(conn)  # a second auth ends the old session first
        identity = self.tokens.authenticate(token) if isinstance(token, str) else None
        if identity is None:
            logger.info("auth refused on %s", conn.conn_id)
            return out + self._reply(conn, frames.auth_denied())
        conn.identity = identity
        conn.protocol_version = _protocol_version(frame.get("protocolVersion"))
        rate = identity.rate_limit
        conn.bucket = TokenBucket(rate, self.mono())
        self.registry.add(
            conn.conn_id, identity.actor_token_id, identity.actor_type, identity.project_id
        )
        logger.debug(
            "%s authenticated as %r of project %r (protocol %d)",
            conn.conn_id,
            # in allow-all mode the actor id is the token itself: never log it
            "<allow-all actor>" if identity.allow_all else identity.actor_token_id,
            identity.project_id,
            conn.protocol_version,
        )
        return out + self._reply(conn, frames.auth_ok(identity, conn.protocol_version))

    # -- rooms --------------------------------------------------------------------

    def _room_refusal(
        self, conn: Connection, identity: Identity, room: str, frame: Frame
    ) -> Optional[Frame]:
        """The error frame for a room the token may not use, or None when it may.

        Unknown slugs (internal room ids included) get ``unknown_topic``; rooms of the
        project that the token lacks get ``not_authorized``. Callers send it on protocol
        2 only; protocol 1 refuses silently, as the real broker does.
        """
        access = self.tokens.check_room(identity, room)
        if access is RoomAccess.ALLOWED:
            return None
        if access is RoomAccess.FORBIDDEN:
            return frames.error(frames.NOT_AUTHORIZED, roomId=room, msgRef=_msg_ref(frame))
        return frames.error(
            frames.UNKNOWN_TOPIC,
            code=frames.CODE_UNKNOWN_TOPIC,
            roomId=room,
            hint=frames.UNKNOWN_ROOM_HINT,
            msgRef=_msg_ref(frame),
        )

    @staticmethod
    def _room_field(frame: Frame) -> tuple[bool, Optional[str]]:
        """Read ``roomId``: (valid, slug or None for project level)."""
        room = frame.get("roomId")
        if room is None or isinstance(room, str):
            return True, room
        return False, None

    def _presence(self, conn: Connection, identity: Identity, frame: Frame) -> list[Delivery]:
        """Set the socket's presence in a room, or at project level without ``roomId``."""
        valid, room = self._room_field(frame)
        if not valid:
            return self._reply(conn, _bad_room_field(frame))
        if "data" in frame and frame["data"] is None:
            # clearing presence (the official SDK's clear_presence): leave, where the real
            # broker would broadcast an update with nil presence
            if room is not None and self._room_refusal(conn, identity, room, frame) is not None:
                return []
            return self.registry.clear_presence(conn.conn_id, room)
        try:
            data = check_presence_data(frame.get("data"))
        except InvalidPresence as exc:
            return self._reply(
                conn,
                frames.error(
                    frames.INVALID_PRESENCE, hint=exc.hint, roomId=room, msgRef=_msg_ref(frame)
                ),
            )
        now = self.wall()
        if room is None:
            return self.registry.set_project_presence(conn.conn_id, data, now)
        refusal = self._room_refusal(conn, identity, room, frame)
        if refusal is not None:
            logger.debug("%s: presence refused for room %r", conn.conn_id, room[:64])
            return self._reply(conn, refusal) if conn.protocol_version >= 2 else []
        return self.registry.set_room_presence(conn.conn_id, room, data, now)

    def _get_presence(self, conn: Connection, identity: Identity, frame: Frame) -> list[Delivery]:
        """List a room's presence (one entry per socket), or project level without roomId."""
        valid, room = self._room_field(frame)
        if not valid:
            return self._reply(conn, _bad_room_field(frame))
        if room is None:
            members = self.registry.project_members(identity.project_id)
        else:
            refusal = self._room_refusal(conn, identity, room, frame)
            if refusal is not None:
                # an empty list always follows, so a client waiting for the list is answered;
                # protocol 2 is also told why
                empty = self._reply(conn, frames.presence_list(room, []))
                if conn.protocol_version >= 2:
                    return self._reply(conn, refusal) + empty
                return empty
            members = self.registry.room_members(identity.project_id, room)
        entries = [
            frames.list_entry(m.actor_id, m.actor_type, m.conn_id, m.data, m.joined_at, m.seq)
            for m in members
        ]
        return self._reply(conn, frames.presence_list(room, entries))

    # -- lobbies ------------------------------------------------------------------

    def _lobby_slug(self, conn: Connection, frame: Frame) -> tuple[Optional[str], list[Delivery]]:
        """Read ``lobbyId`` (a slug), or the error reply when it is missing or not a string."""
        slug = frame.get("lobbyId")
        if isinstance(slug, str) and slug:
            return slug, []
        return None, self._reply(
            conn,
            frames.error(
                frames.INVALID_MESSAGE,
                hint="lobbyId must be a lobby slug (non-empty string)",
                msgRef=_msg_ref(frame),
            ),
        )

    def _lobby_subscribe(
        self, conn: Connection, identity: Identity, frame: Frame
    ) -> list[Delivery]:
        """Subscribe to a lobby and answer with a correct snapshot of all its rooms."""
        slug, bad = self._lobby_slug(conn, frame)
        if slug is None:
            return bad
        view = self.tokens.lobby(identity, slug)
        if view is None:
            return self._reply(conn, frames.error(frames.NOT_AUTHORIZED, lobbyId=slug))
        snapshot = self.registry.lobby_subscribe(conn.conn_id, view)
        return self._reply(conn, frames.lobby_presence("lobbySubscribed", slug, snapshot))

    def _get_lobby_presence(
        self, conn: Connection, identity: Identity, frame: Frame
    ) -> list[Delivery]:
        """Answer with the lobby's snapshot without subscribing."""
        slug, bad = self._lobby_slug(conn, frame)
        if slug is None:
            return bad
        view = self.tokens.lobby(identity, slug)
        if view is None:
            return self._reply(conn, frames.error(frames.NOT_AUTHORIZED, lobbyId=slug))
        snapshot = self.registry.lobby_presence(view)
        return self._reply(conn, frames.lobby_presence("lobbyPresenceList", slug, snapshot))

    def _lobby_unsubscribe(
        self, conn: Connection, identity: Identity, frame: Frame
    ) -> list[Delivery]:
        """Unsubscribe; answered even for a lobby never subscribed (as the real broker)."""
        slug, bad = self._lobby_slug(conn, frame)
        if slug is None:
            return bad
        view = self.tokens.lobby(identity, slug)
        if view is not None:
            self.registry.lobby_unsubscribe(conn.conn_id, view.lobby_id)
        return self._reply(conn, frames.lobby_unsubscribed(slug))

    _handlers: dict[str, Callable[[BrokerCore, Connection, Identity, Frame], list[Delivery]]] = {
        "presence": _presence,
        "getPresence": _get_presence,
        "lobbySubscribe": _lobby_subscribe,
        "getLobbyPresence": _get_lobby_presence,
        "lobbyUnsubscribe": _lobby_unsubscribe,
    }
