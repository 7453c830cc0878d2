"""The broker's protocol logic, sans-IO: frames in, deliveries out, for every socket.

The server feeds each received WebSocket message to :class:`BrokerCore` and sends the
returned deliveries; nothing here touches a socket, so every rule is unit-testable.

Decisions where the real broker is silent, defective or has no equivalent:

- Order of checks for a non-empty frame: size (``message_too_large``), rate
  (``rate_limit_exceeded``; before auth the default rate applies), decoding
  (``invalid_message``; before auth every unusable frame is ``not_authenticated``),
  then the message itself. Heartbeats (empty binary frames) are exempt from all of it.
- A second ``auth`` on an authenticated socket changes nothing: with the socket's own
  token it is answered with the same success reply (as Kraken answers it), without
  refilling the rate bucket or broadcasting anything; with another token it is refused
  (``{type: auth, success: false, error: already_authenticated}``). Kraken would switch
  identity; a socket that can re-authenticate at will can reset its rate limit and spam
  leave/join (issue 14).
- A refused auth counts against the remote address: past ``max_auth_failures`` per
  ``auth_failure_window`` the auth is refused unchecked, answered ``rate_limit_exceeded``
  and the socket closed with 1008 ``auth_rate_limited``.
- A token already holding ``max_connections_per_token`` sockets is refused with
  ``connection_limit_reached`` and the socket closed with 4002 (PROTOCOL.md's codes).
- ``data: nil`` is an update to nil presence (the socket stays listed), as Kraken does.
- Publish/subscribe frames (``subscribe``, ``unsubscribe``, ``publish``, ``ack``,
  ``batchAck``) get an ``unsupported`` error frame (with ``topic`` / ``msgRef`` echoed).
- Presence whose ``data`` is missing, not a map, or holds anything but JSON-like values
  (MessagePack ``bin``, extension types, non-string keys, non-finite floats, nesting
  deeper than 32) gets an ``invalid_presence`` error frame with a ``hint``.
- Error frames echo the request's ``msgRef`` when it is a string or an integer.

Kraken mode (``BrokerConfig(compat="kraken")``) answers as Kraken v0.4.0 does instead:
silent where it is silent (unusable frames after auth, unknown types, presence without a
room, unknown or forbidden rooms, missing ``data``), non-map presence data broadcast as
is, no extension keys, and its lobby quirks (see :mod:`nolag.broker.state`). Its defects
stay refused: binary presence values and over-size or over-rate frames still get error
frames, a room is always checked against the token.
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
from .tokens import Identity, LobbyView, RoomAccess, TokenStore

logger = logging.getLogger("nolag.broker")

PUBSUB_TYPES = frozenset({"subscribe", "unsubscribe", "publish", "ack", "batchAck"})
CLOSE_POLICY = 1008
"""Closes a socket that broke a policy: ``auth_timeout``, ``auth_rate_limited``."""
CLOSE_CONNECTION_LIMIT = 4002
"""Closes a socket over a connection limit (PROTOCOL.md: 4002 connection limit)."""
MAX_TRACKED_ADDRESSES = 4096
"""Per-address refused-auth buckets kept before refilled ones are forgotten."""


@dataclass
class Connection:
    """The protocol state of one socket, owned by the core."""

    conn_id: str
    bucket: TokenBucket
    identity: Optional[Identity] = None
    protocol_version: int = 1
    remote: str = ""
    """The peer's address, for per-address limits ("" when unknown)."""
    close_request: Optional[tuple[int, str]] = None
    """Set by the core when the socket must be closed (code, reason) after its replies."""

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


def _rate_limited(frame: Frame | None, *, kraken: bool = False) -> Frame:
    """The rate-limit error, naming the refused request (roomId, lobbyId, topic, msgRef).

    The real broker names the ``topic`` of a refused publish; naming the room or lobby
    lets a client fail the matching request at once instead of waiting for its reply.
    """
    context: dict[str, Any] = {}
    if kraken:  # Kraken names only the topic of a refused publish
        topic = frame.get("topic") if frame is not None else None
        return frames.error(
            frames.RATE_LIMIT_EXCEEDED,
            code=frames.CODE_RATE_LIMIT,
            topic=topic if isinstance(topic, str) else None,
        )
    if frame is not None:
        for key in ("roomId", "lobbyId", "topic"):
            value = frame.get(key)
            if isinstance(value, str):
                context[key] = value
        context["msgRef"] = _msg_ref(frame)
    return frames.error(frames.RATE_LIMIT_EXCEEDED, code=frames.CODE_RATE_LIMIT, **context)


def _token_key(identity: Identity) -> str:
    """The identity's per-token key (the opaque digest prefix; actor and project when the
    store was built without one)."""
    return identity.rate_key or f"{identity.project_id}\0{identity.actor_token_id}"


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
        self.kraken = self.config.kraken
        self.registry = Registry(kraken=self.kraken)
        self.wall = wall
        self.mono = mono
        self._token_conns: dict[str, int] = {}
        """Authenticated sockets per token (by its opaque rate key)."""
        self._auth_failures: dict[str, TokenBucket] = {}
        """Refused-auth allowance per remote address."""

    # -- socket lifecycle ---------------------------------------------------------

    def open(self, remote: str = "") -> Connection:
        """A new, unauthenticated socket from ``remote`` with a fresh opaque connection id."""
        return Connection(
            conn_id="c-" + secrets.token_hex(8),
            bucket=TokenBucket(self.config.default_rate_limit, self.mono()),
            remote=remote,
        )

    def close(self, conn: Connection) -> list[Delivery]:
        """The socket is gone (any reason): drop its presence, return the leaves."""
        identity = conn.identity
        if identity is None:
            return []
        conn.identity = None
        key = _token_key(identity)
        left = self._token_conns.get(key, 0) - 1
        if left > 0:
            self._token_conns[key] = left
        else:
            self._token_conns.pop(key, None)
        self._expire_lobbies()
        return self.registry.remove(conn.conn_id)

    def token_connections(self, identity: Identity) -> int:
        """Authenticated sockets of the identity's token right now."""
        return self._token_conns.get(_token_key(identity), 0)

    def _expire_lobbies(self) -> None:
        """Kraken mode: forget the rooms of lobbies whose forget timer ran out."""
        if self.kraken:
            self.registry.expire_lobbies(self.mono(), self.config.lobby_forget_after)

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
            return self._reply(conn, _rate_limited(frame, kraken=self.kraken))
        if frame is None:
            if not conn.authenticated:
                return self._reply(conn, frames.error(frames.NOT_AUTHENTICATED))
            if self.kraken:
                return []  # Kraken ignores unusable frames after auth (transcript 07)
            hint = bad.hint if bad is not None else "not a message"
            return self._reply(conn, frames.error(frames.INVALID_MESSAGE, hint=hint))
        return self.handle(conn, frame)

    def handle(self, conn: Connection, frame: Frame) -> list[Delivery]:
        """Dispatch one decoded message by its ``type``."""
        kind = frame.get("type")
        self._expire_lobbies()
        if kind == "auth":
            return self._auth(conn, frame)
        if conn.identity is None:
            return self._reply(conn, frames.error(frames.NOT_AUTHENTICATED))
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is not None:
            return handler(self, conn, conn.identity, frame)
        if kind in PUBSUB_TYPES:
            topic = frame.get("topic")
            if self.kraken and not isinstance(topic, str):
                return []  # Kraken ignores a subscribe without a topic (transcript 07)
            return self._reply(
                conn,
                frames.error(
                    frames.UNSUPPORTED,
                    hint=frames.PUBSUB_HINT,
                    topic=topic if isinstance(topic, str) else None,
                    msgRef=_msg_ref(frame),
                ),
            )
        if self.kraken:
            return []  # Kraken ignores unknown message types (transcript 07)
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
        """Authenticate the socket (a second auth is answered, never re-applied)."""
        token = frame.get("token")
        if token is None:
            return self._reply(conn, frames.error(frames.NOT_AUTHENTICATED))
        if conn.identity is not None:
            return self._second_auth(conn, token)
        now = self.mono()
        failures = self._failure_bucket(conn.remote, now)
        if failures is not None and failures.retry_after(now) > 0:
            return self._auth_rate_limited(conn)
        identity = self.tokens.authenticate(token) if isinstance(token, str) else None
        if identity is None:
            logger.info("auth refused on %s", conn.conn_id)
            if failures is not None and not failures.take(now):
                return self._auth_rate_limited(conn)
            return self._reply(conn, frames.auth_denied())
        limit = self.config.max_connections_per_token
        if limit and self.token_connections(identity) >= limit:
            logger.warning(
                "%s: refused, its token already has %d sockets (max_connections_per_token)",
                conn.conn_id,
                limit,
            )
            conn.close_request = (
                CLOSE_CONNECTION_LIMIT,
                f"connection_limit_reached: this token already has {limit} connections "
                "(max_connections_per_token)",
            )
            return self._reply(conn, frames.auth_denied(frames.CONNECTION_LIMIT_REACHED))
        conn.identity = identity
        self._token_conns[_token_key(identity)] = self.token_connections(identity) + 1
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
        return self._reply(
            conn, frames.auth_ok(identity, conn.protocol_version, kraken=self.kraken)
        )

    def _second_auth(self, conn: Connection, token: Any) -> list[Delivery]:
        """An auth frame on an authenticated socket: the same reply for its own token,
        ``already_authenticated`` for any other; the session is never touched."""
        identity = conn.identity
        assert identity is not None
        again = self.tokens.authenticate(token) if isinstance(token, str) else None
        if again is not None and _token_key(again) == _token_key(identity):
            return self._reply(
                conn, frames.auth_ok(identity, conn.protocol_version, kraken=self.kraken)
            )
        logger.info("%s: second auth with another token refused", conn.conn_id)
        refusal = frames.auth_denied(frames.ALREADY_AUTHENTICATED)
        if not self.kraken:
            refusal["hint"] = frames.REAUTH_HINT
        return self._reply(conn, refusal)

    def _failure_bucket(self, remote: str, now: float) -> Optional[TokenBucket]:
        """The address's refused-auth allowance, or None when failures are not limited."""
        limit = self.config.max_auth_failures
        if not limit or not remote:
            return None
        bucket = self._auth_failures.get(remote)
        if bucket is None:
            if len(self._auth_failures) >= MAX_TRACKED_ADDRESSES:
                self._auth_failures = {
                    k: b for k, b in self._auth_failures.items() if not b.full(now)
                }
            rate = limit / self.config.auth_failure_window
            bucket = self._auth_failures[remote] = TokenBucket(rate, now, burst=limit)
        return bucket

    def _auth_rate_limited(self, conn: Connection) -> list[Delivery]:
        """Refuse an auth unchecked: the address refused too many; close the socket."""
        limit, window = self.config.max_auth_failures, self.config.auth_failure_window
        logger.warning("%s: too many refused auths from %s; closing", conn.conn_id, conn.remote)
        conn.close_request = (
            CLOSE_POLICY,
            f"auth_rate_limited: over {limit} refused auths in {window:g} s from this address",
        )
        return self._reply(
            conn,
            frames.error(
                frames.RATE_LIMIT_EXCEEDED,
                code=frames.CODE_RATE_LIMIT,
                hint=None if self.kraken else "too many refused auths from this address",
            ),
        )

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
        if self.kraken:
            return self._kraken_presence(conn, identity, frame)
        valid, room = self._room_field(frame)
        if not valid:
            return self._reply(conn, _bad_room_field(frame))
        data = frame.get("data")
        if not ("data" in frame and data is None):  # nil: an update to nil, as Kraken
            try:
                data = check_presence_data(data)
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

    def _kraken_presence(
        self, conn: Connection, identity: Identity, frame: Frame
    ) -> list[Delivery]:
        """Kraken's presence: silent unless a room of the token and ``data`` are given.

        Data of any type is broadcast as is (transcript 07), except what would crash a
        receiver on the real broker (binary values and the like: ``invalid_presence``).
        """
        room = frame.get("roomId")
        if not isinstance(room, str) or "data" not in frame:
            return []  # roomless (project level), nil or odd roomId, or no data: ignored
        if self.tokens.check_room(identity, room) is not RoomAccess.ALLOWED:
            logger.debug("%s: presence ignored for room %r", conn.conn_id, room[:64])
            return []
        try:
            data = check_presence_data({"data": frame["data"]})["data"]
        except InvalidPresence as exc:
            return self._reply(conn, frames.error(frames.INVALID_PRESENCE, hint=exc.hint))
        return self.registry.set_room_presence(conn.conn_id, room, data, self.wall())

    def _get_presence(self, conn: Connection, identity: Identity, frame: Frame) -> list[Delivery]:
        """List a room's presence (one entry per socket), or project level without roomId."""
        kraken = self.kraken
        valid, room = self._room_field(frame)
        if not valid:
            if kraken:
                return self._reply(conn, frames.presence_list(None, [], kraken=True))
            return self._reply(conn, _bad_room_field(frame))
        if room is None:
            members = [] if kraken else self.registry.project_members(identity.project_id)
        else:
            refusal = self._room_refusal(conn, identity, room, frame)
            if refusal is not None:
                # an empty list always follows, so a client waiting for the list is answered;
                # protocol 2 is also told why (not in Kraken mode: Kraken is silent)
                empty = self._reply(conn, frames.presence_list(room, [], kraken=kraken))
                if conn.protocol_version >= 2 and not kraken:
                    return self._reply(conn, refusal) + empty
                return empty
            members = self.registry.room_members(identity.project_id, room)
        entries = [
            frames.list_entry(
                m.actor_id, m.actor_type, m.conn_id, m.data, m.joined_at, m.seq, kraken=kraken
            )
            for m in members
        ]
        return self._reply(conn, frames.presence_list(room, entries, kraken=kraken))

    # -- lobbies ------------------------------------------------------------------

    def _lobby_slug(self, conn: Connection, frame: Frame) -> tuple[Optional[str], list[Delivery]]:
        """Read ``lobbyId`` (a slug), or the error reply when it is missing or not a string."""
        slug = frame.get("lobbyId")
        if isinstance(slug, str) and slug:
            return slug, []
        if self.kraken:
            return None, []
        return None, self._reply(
            conn,
            frames.error(
                frames.INVALID_MESSAGE,
                hint="lobbyId must be a lobby slug (non-empty string)",
                msgRef=_msg_ref(frame),
            ),
        )

    def _lobby_view(self, identity: Identity, slug: str) -> Optional[LobbyView]:
        """The lobby as the token sees it, or None when the token may not use it.

        Kraken mode takes the lobby's rooms from the token's own rooms (as Kraken's static
        auth does), not from the token file's lobby map.
        """
        view = self.tokens.lobby(identity, slug)
        if view is None or not self.kraken or not identity.rooms:
            return view
        return LobbyView(view.project_id, view.lobby_id, view.slug, tuple(sorted(identity.rooms)))

    def _lobby_subscribe(
        self, conn: Connection, identity: Identity, frame: Frame
    ) -> list[Delivery]:
        """Subscribe to a lobby and answer with a correct snapshot of all its rooms."""
        slug, bad = self._lobby_slug(conn, frame)
        if slug is None:
            return bad
        view = self._lobby_view(identity, slug)
        if view is None:
            return self._reply(conn, frames.error(frames.NOT_AUTHORIZED, lobbyId=slug))
        snapshot = self.registry.lobby_subscribe(conn.conn_id, view, self.mono())
        return self._reply(conn, frames.lobby_presence("lobbySubscribed", slug, snapshot))

    def _get_lobby_presence(
        self, conn: Connection, identity: Identity, frame: Frame
    ) -> list[Delivery]:
        """Answer with the lobby's snapshot without subscribing."""
        slug, bad = self._lobby_slug(conn, frame)
        if slug is None:
            return bad
        view = self._lobby_view(identity, slug)
        if view is None:
            return self._reply(conn, frames.error(frames.NOT_AUTHORIZED, lobbyId=slug))
        if self.kraken and not self.registry.lobby_known(view):
            # Kraken forgot the lobby's rooms (or never learned them): no room keys at all
            return self._reply(conn, frames.lobby_presence("lobbyPresenceList", slug, {}))
        snapshot = self.registry.lobby_presence(view)
        return self._reply(conn, frames.lobby_presence("lobbyPresenceList", slug, snapshot))

    def _lobby_unsubscribe(
        self, conn: Connection, identity: Identity, frame: Frame
    ) -> list[Delivery]:
        """Unsubscribe; answered even for a lobby never subscribed (as the real broker)."""
        slug, bad = self._lobby_slug(conn, frame)
        if slug is None:
            return bad
        view = self._lobby_view(identity, slug)
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
