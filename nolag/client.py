"""The public facade `NoLag`: connect/auth, presence calls, the cache, reconnects, threads.

Threads (all daemons, joined by disconnect()):
- ``nolag-reader-<k>``: one per process, shared by every client (nolag.readloop): reads
  each socket when it is readable and calls the owner's `_on_batch`, which decodes the
  frames, applies them to the store and queues public events.
- ``nolag-timer-<k>``: one per process, shared too (nolag.timers): each client's
  empty-frame heartbeat, liveness check, coalesced presence flushes and typing-indicator
  timeouts, as a `TimerGroup` the client cancels on disconnect().
- ``nolag-dispatcher-<n>``: runs user callbacks in order (see nolag.events).
- ``nolag-reconnect-<n>``: only after an unexpected loss, while it reconnects with backoff.

Own presence is *desired state*: set_presence() records what this client wants to show,
and a flush sends whatever differs from what this connection has sent, at most
`max_presence_rate` frames a second (latest wins), so a burst of calls becomes a few
frames and a reconnect simply flushes everything again.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union, overload

import attrs

from nolag import protocol
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
from nolag.events import PRESENCE_EVENTS, Dispatcher, Handler, Item, Registry
from nolag.models import ActorPresence, ConnectionState, NoLagOptions, freeze
from nolag.presence import PresenceStore, PublicEvent
from nolag.readloop import read_loop
from nolag.rest import NoRestEndpoint, RestClient
from nolag.timers import TimerGroup, TimerHandle, TokenBucket
from nolag.transport import Transport

if TYPE_CHECKING:
    from nolag.rooms import App, Lobby, Room

__all__ = ["ClientStats", "NoLag", "merge_entries"]

log = logging.getLogger("nolag")

H = TypeVar("H", bound=Handler)

_client_numbers = itertools.count(1)

#: errors that mean "this room (or lobby) is not yours": our presence there was refused
_REFUSALS = ("not_authorized", "unknown_topic")

#: frames decoded at a time: few enough that a slice's decoded frames are freed before
#: the garbage collector's youngest generation fills (700 objects), so they are never
#: promoted to be scanned again by older collections (~6% faster ingest than decoding a
#: 256 KiB read's ~2,500 frames at once)
_DECODE_SLICE = 64


@attrs.define(slots=True)
class ClientStats:
    """Counters a client keeps about its connection (read them, don't write them)."""

    frames_received: int = 0
    frames_sent: int = 0
    presence_sent: int = 0
    presence_coalesced: int = 0
    protocol_errors: int = 0
    server_errors: int = 0
    events_emitted: int = 0
    reconnects: int = 0


class Waiter:
    """A caller blocked on one reply (a presence list, a lobby snapshot, ...)."""

    __slots__ = ("_event", "error", "result")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None

    def resolve(self, result: Any) -> None:
        self.result = result
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._event.set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


@attrs.define(slots=True)
class _Pending:
    """One request sent on the socket, awaiting its ordered reply.

    `key` is ("room", slug-or-None) for getPresence, ("lobby", slug) for lobbySubscribe and
    getLobbyPresence, ("unsubscribe", slug) for lobbyUnsubscribe. `waiter` is None for the
    client's own syncs.
    """

    key: tuple[str, Optional[str]]
    mark: int
    waiter: Optional[Waiter]


def _server_exception(frame: protocol.ErrorFrame) -> ServerError:
    """Map an error frame to the typed exception users catch."""
    kind: type[ServerError] = ServerError
    if frame.error == "not_authorized":
        kind = ForbiddenError
    elif frame.error == "rate_limit_exceeded":
        kind = RateLimitError
    return kind(
        frame.error,
        code=frame.code,
        hint=frame.hint,
        room=frame.room,
        lobby=frame.lobby_id,
        topic=frame.topic,
    )


def merge_entries(
    entries: Sequence[protocol.PresenceEntry], room: Optional[str]
) -> list[ActorPresence]:
    """Fold per-socket list entries into one ActorPresence per actor, in first-seen order.

    Joined-at is the earliest socket's; the data is that of the socket that set it last
    (the local broker's updateSeq, else the latest joinedAt), and `connections` counts
    the sockets.
    """
    grouped: dict[str, list[protocol.PresenceEntry]] = {}
    for entry in entries:
        grouped.setdefault(entry.actor_token_id, []).append(entry)
    actors = []
    for actor_id, group in grouped.items():
        newest = max(group, key=lambda e: (e.update_seq or 0, e.joined_at or 0))
        times = [e.joined_at for e in group if e.joined_at is not None]
        actors.append(
            ActorPresence(
                actor_token_id=actor_id,
                presence=newest.presence,
                actor_type=next((e.actor_type for e in group if e.actor_type), None),
                joined_at=min(times) if times else None,
                room=room,
                connections=sum(e.connections for e in group),
            )
        )
    return actors


class NoLag:
    """A synchronous NoLag presence client: one WebSocket, a local cache, callbacks.

    >>> client = NoLag("at_token", url="ws://127.0.0.1:8080/ws")  # doctest: +SKIP
    >>> client.connect()                                           # doctest: +SKIP
    """

    def __init__(
        self,
        token: str,
        url: Optional[str] = None,
        *,
        options: Optional[NoLagOptions] = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(token, str):
            raise TypeError(f"token must be a str, not {type(token).__name__}")
        if not token.strip():
            raise ValueError("token must be a non-empty str")
        unknown = set(kwargs) - set(NoLagOptions.field_names())
        if unknown:
            raise TypeError(
                f"unknown option(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(NoLagOptions.field_names())}"
            )
        if url is not None:
            kwargs["url"] = url
        self.options = attrs.evolve(options, **kwargs) if options else NoLagOptions(**kwargs)
        self._token = token
        self._number = next(_client_numbers)
        self._events = Registry()
        self._rooms: dict[str, Room] = {}
        self._lobbies: dict[str, Lobby] = {}
        self._setup()
        _live_clients.add(self)

    def _setup(self) -> None:
        """Fresh locks, threads' state, cache and connection state (also after a fork)."""
        self._pid = os.getpid()
        self._lock = threading.RLock()  # state, store, own presence, pending replies
        self._changed = threading.Condition(self._lock)  # notified when the cache changes
        self._io_lock = threading.Lock()  # keeps pending-reply order equal to send order
        self._closing = threading.Event()
        self._disconnected = threading.Event()
        self._disconnected.set()
        self._state = ConnectionState.DISCONNECTED
        self._transport: Optional[Transport] = None
        self._reconnector: Optional[threading.Thread] = None
        self._store = PresenceStore()
        self._dispatcher = Dispatcher(f"nolag-dispatcher-{self._number}", self._events, self._rooms)
        self._scheduler = TimerGroup()
        self._rest = RestClient(self.options.derived_rest_url(), self._token)
        self._rest_available: Optional[bool] = None
        self.stats = ClientStats()
        self._actor_id: Optional[str] = None
        self._project_id: Optional[str] = None
        self._actor_type: Optional[str] = None
        # own presence: what we want shown, and what this connection has sent
        self._own_room: Optional[tuple[str, dict[str, Any]]] = None
        self._own_project: Optional[dict[str, Any]] = None
        self._sent_room: Optional[tuple[str, dict[str, Any]]] = None
        self._sent_project: Optional[dict[str, Any]] = None
        self._bucket: Optional[TokenBucket] = None
        self._flush_timer: Optional[TimerHandle] = None
        self._heartbeat_timer: Optional[TimerHandle] = None
        self._last_heartbeat = 0.0
        # the room this socket is in, as far as events without a roomId are concerned
        self._socket_room: Optional[str] = None
        self._room_confirmed = False  # our own event for _socket_room has arrived
        self._stale_room_leaves = 0  # own leaves still due from rooms we switched away from
        self._quiet_errors: collections.Counter[tuple[str, Optional[str]]] = collections.Counter()
        self._lobby_alias: dict[str, str] = {}  # a broker's internal lobby id -> our slug
        self._pending: collections.deque[_Pending] = collections.deque()
        # while the reader applies a batch of frames, events collect here (lock held)
        self._batch: Optional[list[Item]] = None
        self._now = 0.0  # monotonic time of the batch being applied
        self._fork_pending = False  # set in a forked child that must reconnect on first use
        # socket reads wake this often; a write blocked this long drops the connection
        self._io_timeout = max(1.0, min(5.0, self.options.heartbeat_interval))

    # ------------------------------------------------------------ properties

    @property
    def status(self) -> ConnectionState:
        """The connection state: disconnected, connecting, connected, reconnecting."""
        return self._state

    @property
    def connected(self) -> bool:
        """True while the socket is open and authenticated."""
        return self._state is ConnectionState.CONNECTED

    @property
    def actor_id(self) -> Optional[str]:
        """This token's actor id, known once connected."""
        return self._actor_id

    @property
    def project_id(self) -> Optional[str]:
        """The project the token belongs to, known once connected."""
        return self._project_id

    @property
    def actor_type(self) -> Optional[str]:
        """The token's actor type (user, device, server, ...), known once connected."""
        return self._actor_type

    @property
    def room(self) -> Optional[str]:
        """The room this client's presence is in (one room per connection), if any."""
        own = self._own_room
        return own[0] if own else None

    def __repr__(self) -> str:
        return f"<NoLag #{self._number} {self._state.value} actor={self._actor_id!r}>"

    # ------------------------------------------------------------ connect / disconnect

    def connect(self, timeout: Optional[float] = None) -> NoLag:
        """Open the connection and block until authenticated.

        Raises AuthenticationError if the token is refused (no retry), or a
        nolag.ConnectionError if the server cannot be reached within `timeout`
        (default: options.connect_timeout).
        """
        self._check_fork()
        timeout = self._timeout(timeout, self.options.connect_timeout, "timeout")
        with self._lock:
            if self._state is ConnectionState.CONNECTED:
                return self
            if self._state is not ConnectionState.DISCONNECTED:
                raise NoLagError(f"connect() while {self._state.value}")
            self._state = ConnectionState.CONNECTING
            self._closing.clear()
            self._disconnected.clear()
        try:
            transport, auth = self._open(timeout, reconnect=False)
        except BaseException:
            with self._lock:
                self._state = ConnectionState.DISCONNECTED
                self._disconnected.set()
            raise
        self._dispatcher.start()
        self._on_open(transport, auth, "connect")
        tick = min(1.0, self.options.heartbeat_interval / 4)
        self._last_heartbeat = time.monotonic()
        self._heartbeat_timer = self._scheduler.call_every(tick, self._heartbeat)
        return self

    def disconnect(self, timeout: float = 5.0) -> None:
        """Close the connection, stop every thread, clear the cache and forget own presence.

        Lobby subscriptions end too. Safe to call twice, and from inside a callback. In a
        forked child it only forgets the parent's connection.
        """
        if os.getpid() != self._pid:
            self._reset_after_fork()
        self._fork_pending = False
        self._closing.set()
        with self._changed:
            was = self._state
            self._state = ConnectionState.DISCONNECTED
            transport, self._transport = self._transport, None
            self._fail_pending(ConnectionClosedError("the client disconnected"))
            self._store.reset()
            for lobby in self._lobbies.values():
                lobby._forget()
            self._own_room = self._own_project = None  # a later connect() starts afresh
            self._sent_room = self._sent_project = None
            self._socket_room = None
            self._stale_room_leaves = 0
            self._changed.notify_all()
        if transport is not None:
            transport.close(timeout=min(timeout, 2.0))
        deadline = time.monotonic() + timeout
        self._scheduler.stop(max(0.0, deadline - time.monotonic()))
        reconnector, self._reconnector = self._reconnector, None
        if reconnector is not None and reconnector is not threading.current_thread():
            reconnector.join(max(0.0, deadline - time.monotonic()))
        read_loop().join_if_idle(max(0.0, deadline - time.monotonic()))
        if was is not ConnectionState.DISCONNECTED:
            self._emit("disconnect", "client disconnected")
        self._dispatcher.stop(max(0.1, deadline - time.monotonic()))
        self._rest.close()
        self._disconnected.set()

    close = disconnect

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the client is disconnected (or `timeout` passes); True if it was.

        Ctrl-C interrupts it as usual; it installs no signal handler, so it is safe in
        threads, Django and Flask. For scripts: ``client.connect(); ...; client.wait()``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._disconnected.is_set():
            remaining = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
            if remaining <= 0:
                return False
            self._disconnected.wait(remaining)  # short waits keep KeyboardInterrupt prompt
        return True

    def __enter__(self) -> NoLag:
        if not self.connected:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # ------------------------------------------------------------ events

    @overload
    def on(self, event: str, handler: None = None) -> Callable[[H], H]: ...

    @overload
    def on(self, event: str, handler: H) -> H: ...

    def on(self, event: str, handler: Optional[H] = None) -> Union[H, Callable[[H], H]]:
        """Register a callback for an event; use as ``client.on(name, fn)`` or ``@client.on(name)``.

        Events: presence:join, presence:update, presence:leave (handler(actor)), connect(),
        disconnect(reason), reconnecting(attempt, delay), reconnect(), error(exception).
        """
        return self._events.on(event, handler)

    def off(self, event: str, handler: Optional[Handler] = None) -> None:
        """Unregister one callback, or every callback of the event when handler is None."""
        self._events.off(event, handler)

    # ------------------------------------------------------------ contexts

    def set_app(self, app: str) -> App:
        """A fluent context for an app: ``client.set_app("demo").set_room("general")``."""
        from nolag.rooms import App

        return App(self, app)

    def set_room(self, room: str) -> Room:
        """The context of one room: its presence, its members and its events."""
        from nolag.rooms import Room

        room = self._room_name(room)
        with self._lock:
            context = self._rooms.get(room)
            if context is None:
                context = self._rooms[room] = Room(self, room)
            return context

    def set_lobby(self, lobby: str) -> Lobby:
        """The context of one lobby: presence across its rooms, seen without joining them."""
        from nolag.rooms import Lobby

        lobby = self._room_name(lobby, "lobby")
        with self._lock:
            context = self._lobbies.get(lobby)
            if context is None:
                context = self._lobbies[lobby] = Lobby(self, lobby)
            return context

    # ------------------------------------------------------------ presence

    def set_presence(self, data: Mapping[str, Any], room: Optional[str] = None) -> None:
        """Announce this client's presence in `room` (default: options.default_room, else project).

        Raises TypeError (naming the key) for data that is not a mapping of JSON-like values,
        bytes included, and ValueError past options.max_presence_bytes — before sending anything.
        A connection holds presence in one room at a time: a new room replaces the old one.
        Bursts are coalesced (latest wins) to at most options.max_presence_rate frames a
        second. Called before connect() or while reconnecting, it is sent once connected.
        """
        self._check_fork()
        if self.options.observer:
            raise NoLagError("this client is an observer (observer=True): it never sets presence")
        plain, _ = protocol.validate_presence_data(data, self.options.max_presence_bytes)
        room = self._room_arg(room)
        with self._lock:
            if room is None:
                self._own_project = plain
            else:
                self._own_room = (room, plain)
        self._flush()

    def clear_presence(self, room: Optional[str] = None) -> None:
        """Leave: withdraw this client's presence so that others see a presence:leave.

        Without a room it withdraws both the room presence and the project-level presence.
        The protocol has no leave frame, so when presence was already sent the client
        reopens its connection without it (the broker then broadcasts the leave); lobby
        subscriptions and any presence kept are restored on the new connection at once.
        """
        self._check_fork()
        with self._lock:
            announced = False
            if room is None or room == self.room:
                announced |= self._sent_room is not None
                self._own_room = None
            if room is None:
                announced |= self._sent_project is not None
                self._own_project = None
            cycle = announced and self.connected
        if cycle:
            self._cycle_connection()

    def own_presence(self, room: Optional[str] = None) -> Optional[Mapping[str, Any]]:
        """The presence this client asked to show in `room` (default room or project), or None."""
        room = self._room_arg(room)
        with self._lock:
            if room is None:
                own = self._own_project
            else:
                own = self._own_room[1] if self._own_room and self._own_room[0] == room else None
            return None if own is None else freeze(own)

    def get_all_presence(self, room: Optional[str] = None) -> Sequence[ActorPresence]:
        """Everyone in the local cache (one entry per actor and room), or one room's members.

        Returns an immutable tuple; the same object while nothing changed.
        """
        self._check_fork()
        with self._lock:
            return self._store.snapshot(room) if room is not None else self._store.snapshot()

    def get_presence(self, actor_id: str, room: Optional[str] = None) -> Optional[ActorPresence]:
        """One actor from the local cache (in `room`, or wherever it changed last), or None."""
        if not isinstance(actor_id, str):
            raise TypeError(f"actor_id must be a str, not {type(actor_id).__name__}")
        self._check_fork()
        with self._lock:
            return self._store.get(actor_id, room)

    def presence_count(self, room: Optional[str] = None) -> int:
        """How many actors (not sockets) the cache holds, in `room` or everywhere."""
        self._check_fork()
        with self._lock:
            return self._store.count(room)

    def wait_for_presence(
        self,
        actor: Union[str, Callable[[ActorPresence], bool]],
        timeout: float = 10.0,
        room: Optional[str] = None,
    ) -> ActorPresence:
        """Block until the cache holds an actor (by id, or one matching a predicate).

        Raises PresenceTimeoutError after `timeout` seconds. Handy in scripts and tests:
        ``client.wait_for_presence("bob")`` or
        ``client.wait_for_presence(lambda a: a.presence.get("status") == "away")``.
        """
        match: Callable[[ActorPresence], bool]
        if isinstance(actor, str):
            actor_id = actor

            def match(a: ActorPresence) -> bool:
                return a.actor_token_id == actor_id

        elif callable(actor):
            match = actor
        else:
            raise TypeError(f"actor must be an actor id or a predicate, not {type(actor).__name__}")
        timeout = self._timeout(timeout, 10.0, "timeout")
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                people = self._store.snapshot(room) if room is not None else self._store.snapshot()
                for person in people:
                    if match(person):
                        return person
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PresenceTimeoutError(f"no matching presence within {timeout:.1f}s")
                self._changed.wait(remaining)

    def fetch_presence(
        self, room: Optional[str] = None, timeout: Optional[float] = None
    ) -> list[ActorPresence]:
        """Ask the server for the authoritative list (one entry per actor) and block for it.

        Uses the REST endpoint (GET /v1/presence); a server without one (HTTP 404) is asked
        over the socket instead, with the same timeout. Rooms default to options.default_room.
        Raises PresenceTimeoutError, AuthenticationError (401), ForbiddenError (403) or
        RateLimitError (429, with retry_after).
        """
        self._check_fork()
        room = self._room_arg(room)
        timeout = self._timeout(timeout, self.options.request_timeout, "timeout")
        deadline = time.monotonic() + timeout
        if self._rest_available is not False:
            try:
                entries = self._rest.fetch_presence(room, timeout)
            except NoRestEndpoint:
                log.info("nolag: no REST presence endpoint; fetching over the socket")
                self._rest_available = False
            else:
                self._rest_available = True
                self._refresh_cache(room)
                return merge_entries(entries, room)
        reply = self._request(
            ("room", room),
            protocol.encode_get_presence(room),
            max(0.0, deadline - time.monotonic()),
            f"presence list of room {room!r}",
        )
        assert isinstance(reply, protocol.PresenceList)
        return merge_entries(reply.entries, room)

    # ------------------------------------------------------------ internals: connection

    def _open(self, timeout: float, reconnect: bool) -> tuple[Transport, protocol.AuthOk]:
        """Connect and authenticate within `timeout`; close the socket on any failure."""
        deadline = time.monotonic() + timeout
        transport = Transport(self.options.url, timeout)
        try:
            transport.send(
                protocol.encode_auth(self._token, self.options.protocol_version, reconnect)
            )
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectionError(
                        f"no auth reply from {self.options.url} in {timeout:.1f}s"
                    )
                transport.set_timeout(remaining)
                batch = transport.recv_batch()
                for index, payload in enumerate(batch or ()):
                    frame = protocol.decode_frame(payload)
                    if isinstance(frame, protocol.AuthOk):
                        transport.unread(batch[index + 1 :])  # type: ignore[index]
                        transport.set_timeout(self._io_timeout)
                        return transport, frame
                    if isinstance(frame, protocol.AuthRefused):
                        raise AuthenticationError(frame.error)
                    if (
                        isinstance(frame, protocol.ErrorFrame)
                        and frame.error == "not_authenticated"
                    ):
                        raise AuthenticationError(frame.error)
        except BaseException:
            transport.close(timeout=1.0)  # a refused socket stays open on the broker: close it
            raise

    def _on_open(self, transport: Transport, auth: protocol.AuthOk, event: Optional[str]) -> None:
        """Adopt a fresh authenticated connection: resync the cache, restore lobbies, flush.

        `event` is the lifecycle event to emit (connect / reconnect), None for a silent swap.
        """
        with self._io_lock:
            with self._lock:
                if self._closing.is_set():  # disconnect() won the race with a reconnect
                    transport.abort()
                    return
                self._transport = transport
                self._actor_id = auth.actor_token_id
                self._project_id = auth.project_id
                self._actor_type = auth.actor_type
                self._state = ConnectionState.CONNECTED
                self._socket_room = None
                self._room_confirmed = False
                self._stale_room_leaves = 0
                self._sent_room = self._sent_project = None
                self._quiet_errors.clear()
                self._bucket = self._make_bucket(auth)
                frames: list[bytes] = []
                if self.options.sync_on_join:
                    self._pending.append(_Pending(("room", None), self._store.mark(), None))
                    frames.append(protocol.encode_get_presence(None))
                keep = self._own_room[0] if self._own_room else None
                for stale in [r for r in self._store.rooms() if r is not None and r != keep]:
                    self._emit_all(self._store.drop_room(stale))
                for slug, lobby in self._lobbies.items():
                    if lobby.subscribed:
                        self._pending.append(_Pending(("lobby", slug), 0, None))
                        frames.append(protocol.encode_lobby_subscribe(slug))
                        self._pending.append(_Pending(("lobby", slug), 0, None))
                        frames.append(protocol.encode_get_lobby_presence(slug))
                if event is not None:
                    self._emit(event)
            for frame in frames:
                self._send(transport, frame)
        read_loop().add(transport, self._on_batch, self._on_lost)
        self._flush()

    def _make_bucket(self, auth: protocol.AuthOk) -> Optional[TokenBucket]:
        """The presence send budget: our option, under the server's rate when it says one."""
        rate = self.options.max_presence_rate
        server = auth.rate_limit
        if server is not None and server > 0:
            # leave room for list requests and lobby frames, which count on the server too
            rate = min(rate, server * 0.8) if rate is not None else server * 0.8
        if rate is None:
            return None
        return TokenBucket(rate, max(1.0, rate / 2), time.monotonic())

    def _cycle_connection(self) -> None:
        """Replace the connection with a fresh one (the broker sends our leaves for the old)."""
        try:
            transport, auth = self._open(self.options.connect_timeout, reconnect=True)
        except AuthenticationError as err:
            self._emit("error", err)
            old = self._transport
            if old is not None:
                old.abort()  # the reader reports the loss and stops on the refusal
            return
        except (ConnectionError, OSError) as err:
            log.info("nolag: could not reopen the connection: %s", err)
            old = self._transport
            if old is not None:
                old.abort()  # the reader reconnects with backoff, without the presence
            return
        with self._lock:
            old = self._transport
            self._fail_pending(ConnectionClosedError("the connection was reopened"))
            self._emit_all(self._store.drop_room(self._socket_room))
            if self._own_project is None:
                self._emit_all(self._store.drop_room(None))
        if self._closing.is_set():
            transport.close(timeout=1.0)
            return
        self._on_open(transport, auth, None)
        if old is not None:
            old.close(timeout=1.0)

    def _on_batch(self, transport: Transport, payloads: list[bytes]) -> None:
        """Messages read from a socket (on the read loop's thread); stale sockets are ignored."""
        if transport is self._transport:
            self._handle_batch(payloads)

    def _on_lost(self, transport: Transport, exc: ConnectionClosedError) -> None:
        """A connection ended (on the read loop's thread, which must not block): unless we
        closed it or replaced it, report the loss and reconnect on a thread of our own."""
        if self._closing.is_set():
            return
        with self._lock:
            if transport is not self._transport:
                return  # replaced by a fresh connection (clear_presence), or already handled
            self._transport = None
            self._fail_pending(exc)
            reconnect = self.options.reconnect
            self._state = (
                ConnectionState.RECONNECTING if reconnect else ConnectionState.DISCONNECTED
            )
            self._emit("disconnect", str(exc) or "connection lost")
            if reconnect:
                self._reconnector = threading.Thread(
                    target=self._reconnect, name=f"nolag-reconnect-{self._number}", daemon=True
                )
                self._reconnector.start()
        if not reconnect:
            self._disconnected.set()

    def _reconnect(self) -> None:
        """After an unexpected loss: reconnect with backoff (full jitter) until it works,
        the attempts run out, the token is refused or disconnect() is called."""
        opts = self.options
        for attempt in itertools.count(1):
            if opts.reconnect_max_attempts is not None and attempt > opts.reconnect_max_attempts:
                self._give_up(ConnectionError(f"gave up reconnecting after {attempt - 1} attempts"))
                return
            cap = min(
                opts.reconnect_max_delay,
                opts.reconnect_initial_delay * opts.reconnect_factor ** (attempt - 1),
            )
            delay = random.uniform(0, cap)  # full jitter
            self._emit("reconnecting", attempt, delay)
            if self._closing.wait(delay):
                return
            try:
                transport, auth = self._open(opts.connect_timeout, reconnect=True)
            except AuthenticationError as err:
                self._give_up(err)
                return
            except (ConnectionError, OSError) as err:
                log.info("nolag: reconnect attempt %d failed: %s", attempt, err)
                continue
            if self._closing.is_set():
                transport.close(timeout=1.0)
                return
            self.stats.reconnects += 1
            self._on_open(transport, auth, "reconnect")
            return

    def _give_up(self, error: NoLagError) -> None:
        with self._lock:
            self._state = ConnectionState.DISCONNECTED
            self._emit("error", error)
        self._disconnected.set()

    def _heartbeat(self) -> None:
        """Timer tick: heartbeat every interval; drop a connection silent for two intervals."""
        transport = self._transport
        if transport is None or not self.connected:
            return
        interval = self.options.heartbeat_interval
        now = time.monotonic()
        if now - transport.last_received > 2 * interval + min(5.0, interval / 2):
            if transport.input_pending():
                # the server did send; our reader is behind (a starved thread), not dead
                transport.last_received = now
            else:
                log.warning("nolag: no frame from the server for %.1fs; reconnecting", 2 * interval)
                transport.abort()
                return
        if now - self._last_heartbeat >= interval:
            self._last_heartbeat = now
            self._send(transport, protocol.HEARTBEAT)

    # ------------------------------------------------------------ internals: own presence

    def _flush(self) -> None:
        """Send the own presence that differs from what this connection sent, within budget."""
        with self._io_lock:
            with self._lock:
                transport = self._transport if self.connected else None
                if transport is None:
                    return
                frames: list[bytes] = []
                now = time.monotonic()
                for slot in ("project", "room"):
                    want: Any = self._own_project if slot == "project" else self._own_room
                    sent: Any = self._sent_project if slot == "project" else self._sent_room
                    if want is None or want == sent:
                        continue
                    if self._bucket is not None and not self._bucket.take(now):
                        self._schedule_flush(self._bucket.wait_time(now))
                        break
                    self.stats.presence_sent += 1
                    if slot == "project":
                        self._sent_project = want
                        frames.append(protocol.encode_presence(want, None))
                        continue
                    room, data = want
                    self._sent_room = want
                    frames.append(protocol.encode_presence(data, room))
                    if self._enter_room(room):
                        frames.append(protocol.encode_get_presence(room))
            for frame in frames:
                self._send(transport, frame)

    def _schedule_flush(self, delay: float) -> None:
        """Flush again once the budget allows (one timer at a time); lock held."""
        self.stats.presence_coalesced += 1
        if self._flush_timer is None or self._flush_timer.cancelled:
            self._flush_timer = self._scheduler.call_later(delay, self._flush_from_timer)

    def _flush_from_timer(self) -> None:
        with self._lock:
            self._flush_timer = None
        self._flush()

    def _enter_room(self, room: str) -> bool:
        """Bookkeeping when our presence goes to `room` (lock held); True: sync its list."""
        if room == self._socket_room:
            return False
        if self._socket_room is not None:
            self._emit_all(self._store.drop_room(self._socket_room))
            if self._room_confirmed:
                self._stale_room_leaves += 1
        self._socket_room = room
        self._room_confirmed = False
        if not self.options.sync_on_join:
            return False
        self._pending.append(_Pending(("room", room), self._store.mark(), None))
        if self._bucket is not None:
            self._bucket.spend(time.monotonic())
        return True

    # ------------------------------------------------------------ internals: frames

    def _handle_batch(self, payloads: list[bytes]) -> None:
        """Decode and apply frames in order; runs on the reader thread, never runs user code.

        The whole batch is applied under one lock acquisition, and its events reach the
        dispatcher as one item, queued before the lock is released so that no other
        thread's events can overtake them.
        """
        self.stats.frames_received += len(payloads)
        decode = protocol.decode_frames
        presence_event = protocol.PresenceEvent
        apply_event = self._apply_event
        emitted = 0
        with self._changed:
            version = self._store.version
            batch: list[Item] = []
            self._batch = batch
            self._now = time.monotonic()
            listening = self._listening()
            try:
                for start in range(0, len(payloads), _DECODE_SLICE):
                    for frame in decode(payloads[start : start + _DECODE_SLICE]):
                        if type(frame) is presence_event:
                            events = apply_event(frame)
                            if events:
                                emitted += len(events)
                                if listening:
                                    batch += events
                        else:
                            self._apply(frame)
            finally:
                self._batch = None
                self.stats.events_emitted += emitted
                self._dispatcher.emit_many(batch)
            if self._store.version != version:
                self._changed.notify_all()

    def _apply(self, frame: Union[protocol.ServerFrame, protocol.ProtocolError]) -> None:
        """Route one decoded frame to its handler (lock held)."""
        if isinstance(frame, protocol.PresenceEvent):
            self._emit_all(self._apply_event(frame))
        elif isinstance(frame, protocol.PresenceList):
            self._apply_list(frame)
        elif isinstance(frame, protocol.LobbyPresence):
            self._apply_lobby_event(frame)
        elif isinstance(frame, protocol.LobbySnapshot):
            self._apply_lobby_snapshot(frame)
        elif isinstance(frame, protocol.LobbyUnsubscribed):
            pending = self._pop_pending(("unsubscribe", frame.lobby_id))
            if pending is not None and pending.waiter is not None:
                pending.waiter.resolve(frame)
        elif isinstance(frame, protocol.ErrorFrame):
            self._apply_error(frame)
        elif isinstance(frame, protocol.ProtocolError):
            self.stats.protocol_errors += 1
            log.debug("nolag: ignored a bad frame: %s", frame.reason)

    def _apply_event(self, event: protocol.PresenceEvent) -> Sequence[PublicEvent]:
        """Apply a presence event to the cache (lock held); the public events, to emit."""
        kind, actor, _, room, room_given, _, _ = event  # one unpack: the hot path
        if not room_given:  # the real broker: the event belongs to our socket's room
            if self._stale_room_leaves:
                # still events of a room we switched away from, until our own leave from it
                if kind == "leave" and actor == self._actor_id:
                    self._stale_room_leaves -= 1
                return ()
            room = self._socket_room
        if room is not None:
            if room != self._socket_room:
                return ()  # a room we are no longer in; its cache was dropped
            if actor == self._actor_id and kind != "leave":
                self._room_confirmed = True
        return self._store.apply_event(event, room, self._now)

    def _apply_list(self, reply: protocol.PresenceList) -> None:
        pending = self._pop_pending(("room", reply.room))
        if pending is None:
            return
        if pending.waiter is not None:
            pending.waiter.resolve(reply)
        if reply.room is None or reply.room == self._socket_room:
            events = self._store.apply_list(reply, reply.room, pending.mark, time.monotonic())
            self._emit_all(events)

    def _lobby_for(self, lobby_id: str, room: Optional[str]) -> Optional[Lobby]:
        """The subscribed lobby an event belongs to; the real broker names lobbies by an
        internal id, not the slug we subscribed with, so learn that alias once."""
        slug = self._lobby_alias.get(lobby_id, lobby_id)
        lobby = self._lobbies.get(slug)
        if lobby is not None:
            return lobby if lobby.subscribed else None
        candidates = [lb for lb in self._lobbies.values() if lb.subscribed]
        if len(candidates) > 1 and room is not None:
            candidates = [lb for lb in candidates if room in lb.known_rooms] or candidates
        if len(candidates) == 1:
            self._lobby_alias[lobby_id] = candidates[0].slug
            return candidates[0]
        return None

    def _apply_lobby_event(self, event: protocol.LobbyPresence) -> None:
        lobby = self._lobby_for(event.lobby_id, event.room)
        if lobby is not None:
            self._emit_to(lobby._events, lobby._store.apply_event(event))

    def _apply_lobby_snapshot(self, snap: protocol.LobbySnapshot) -> None:
        pending = self._pop_pending(("lobby", snap.lobby_id))
        lobby = self._lobbies.get(snap.lobby_id)
        if lobby is not None and lobby.subscribed:
            lobby.known_rooms.update(snap.rooms)
            self._emit_to(lobby._events, lobby._store.apply_snapshot(snap))
        if pending is not None and pending.waiter is not None:
            pending.waiter.resolve(snap)

    def _apply_error(self, frame: protocol.ErrorFrame) -> None:
        self.stats.server_errors += 1
        error = _server_exception(frame)
        target: Optional[tuple[str, Optional[str]]] = None
        if frame.lobby_id is not None:
            target = ("lobby", frame.lobby_id)
        elif frame.room is not None:
            target = ("room", frame.room)
        if target is not None and self._quiet_errors[target] > 0:
            # the reply to our own list request for a room whose refusal we already reported
            self._quiet_errors[target] -= 1
            self._pop_pending(target)
            return
        refused = (
            frame.error in _REFUSALS
            and frame.room is not None
            and frame.room == self._socket_room
            and not self._room_confirmed
        )
        if refused:
            assert frame.room is not None
            self._refuse_room(frame.room)
        else:
            if frame.error == "rate_limit_exceeded" and frame.lobby_id is None:
                self._presence_throttled()
            pending = self._pop_pending(target) if target is not None else None
            if pending is not None and pending.waiter is not None:
                pending.waiter.fail(error)
            elif pending is not None and pending.key[0] == "room":
                self._resync_later(pending.key[1])
            elif pending is not None and pending.key[0] == "lobby":
                lobby = self._lobbies.get(pending.key[1] or "")
                if lobby is not None and frame.error in _REFUSALS:
                    lobby._forget()  # a re-subscription refused after a reconnect
        log.info("nolag: server error: %s", error)
        self._emit("error", error)

    def _refuse_room(self, room: str) -> None:
        """The server refused our presence in `room`: stop showing and re-sending it."""
        if self._own_room is not None and self._own_room[0] == room:
            self._own_room = None
        self._sent_room = None
        self._socket_room = None
        if any(p.key == ("room", room) and p.waiter is None for p in self._pending):
            self._quiet_errors[("room", room)] += 1  # its list request will be refused too

    def _presence_throttled(self) -> None:
        """The server dropped a frame over its rate: halve our budget, resend own presence."""
        self._sent_room = self._sent_project = None
        rate = self._bucket.rate / 2 if self._bucket is not None else 5.0
        self._bucket = TokenBucket(max(0.5, rate), 1.0, time.monotonic())
        self._schedule_flush(1.0 / self._bucket.rate)

    def _resync_later(self, room: Optional[str]) -> None:
        """Our list request was refused over the rate: ask again a moment later."""
        self._scheduler.call_later(1.0, self._refresh_cache, room)

    def _pop_pending(self, key: tuple[str, Optional[str]]) -> Optional[_Pending]:
        for pending in self._pending:
            if pending.key == key:
                self._pending.remove(pending)
                return pending
        return None

    def _fail_pending(self, error: BaseException) -> None:
        while self._pending:
            pending = self._pending.popleft()
            if pending.waiter is not None:
                pending.waiter.fail(error)

    # ------------------------------------------------------------ internals: requests

    def _refresh_cache(self, room: Optional[str]) -> None:
        """After a REST fetch, reconcile the cache from an ordered socket list (never from HTTP)."""
        with self._io_lock:
            with self._lock:
                if not self.connected or self._transport is None:
                    return
                if room is not None and room != self._socket_room:
                    return
                transport = self._transport
                self._pending.append(_Pending(("room", room), self._store.mark(), None))
            self._send(transport, protocol.encode_get_presence(room))

    def _request(
        self,
        key: tuple[str, Optional[str]],
        frame: bytes,
        timeout: float,
        what: str,
        before: Optional[Callable[[], None]] = None,
    ) -> Any:
        """Send one request on the socket and block for its ordered reply (or error)."""
        waiter = Waiter()
        with self._io_lock:
            with self._lock:
                transport = self._transport if self.connected else None
                if transport is None:
                    raise NotConnectedError(f"the {what} needs a connection: call connect() first")
                if before is not None:
                    before()
                pending = _Pending(key, self._store.mark(), waiter)
                self._pending.append(pending)
            self._send(transport, frame)
        if not waiter.wait(timeout):
            with self._lock:
                if pending in self._pending:
                    self._pending.remove(pending)
            raise PresenceTimeoutError(f"no answer for the {what} within {timeout:.1f}s")
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    def _send(self, transport: Transport, payload: bytes) -> None:
        try:
            transport.send(payload)
        except ConnectionClosedError:
            # the reader sees the loss too and reconnects; own presence is re-sent then
            log.debug("nolag: send on a closed connection dropped (%d bytes)", len(payload))
            return
        self.stats.frames_sent += 1

    def _send_now(self, frame: bytes) -> bool:
        """Send a frame if connected (lobby unsubscribe and the like); False if not."""
        with self._io_lock:
            transport = self._transport if self.connected else None
            if transport is None:
                return False
            self._send(transport, frame)
            return True

    # ------------------------------------------------------------ internals: helpers

    def _emit(self, event: str, *args: Any) -> None:
        self._queue_event(self._events, event, args)

    def _emit_all(self, events: Sequence[PublicEvent]) -> None:
        """Hand the cache's events to the dispatcher (client handlers, then the room's)."""
        if not events:
            return
        self.stats.events_emitted += len(events)
        if not self._listening():
            return
        batch = self._batch
        if batch is not None:
            batch += events
        else:
            self._dispatcher.emit_many(list(events))

    def _listening(self) -> bool:
        """Whether a presence handler is registered on the client or one of its rooms
        (a client that only reads its cache queues no events for the dispatcher)."""
        handlers = self._events._handlers
        if any(handlers.get(name) for name in PRESENCE_EVENTS):
            return True
        return any(context._events._handlers for context in self._rooms.values())

    def _emit_to(self, registry: Registry, events: Sequence[PublicEvent]) -> None:
        for event in events:
            self.stats.events_emitted += 1
            self._queue_event(registry, event.name, (event.actor,))

    def _queue_event(self, registry: Registry, event: str, args: tuple[Any, ...]) -> None:
        """Hand an event to the dispatcher, or to the batch the reader is applying."""
        if not registry.handlers(event):
            return
        batch = self._batch
        if batch is not None:
            batch.append((registry, event, args))
        else:
            self._dispatcher.emit(registry, event, *args)

    def _room_arg(self, room: Optional[str]) -> Optional[str]:
        if room is None:
            return self.options.default_room
        return self._room_name(room)

    @staticmethod
    def _room_name(room: Any, what: str = "room") -> str:
        if not isinstance(room, str):
            raise TypeError(f"{what} must be a str, not {type(room).__name__}")
        if not room:
            raise ValueError(f"{what} must be a non-empty str")
        return room

    @staticmethod
    def _timeout(value: Optional[float], default: float, name: str) -> float:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        return float(value)

    def _check_fork(self) -> None:
        """In a forked child, reconnect on first use (or raise, per options.fork_policy)."""
        if os.getpid() != self._pid:  # the at-fork hook did not run (it always should)
            self._reset_after_fork()
        if not self._fork_pending:
            return
        if self.options.fork_policy == "raise":
            raise NoLagError(
                "this NoLag client was connected in the parent process before a fork; "
                "create a new client in the child (or use fork_policy='reconnect')"
            )
        self._fork_pending = False
        log.info("nolag: forked child %d reconnects with its own socket", self._pid)
        self.connect()

    def _reset_after_fork(self) -> None:
        """Runs in a forked child: drop every resource shared with the parent, write nothing.

        Locks may have been held by parent threads that do not exist here, so they are
        replaced; the socket descriptor is closed without a byte sent; own presence,
        handlers and lobby subscriptions are kept so that a reconnect restores them.
        """
        was_active = self._state is not ConnectionState.DISCONNECTED
        if self._transport is not None:
            self._transport.discard()
        own_room, own_project = self._own_room, self._own_project
        self._events = self._events.copy()
        for context in self._rooms.values():
            context._events = context._events.copy()
        for lobby in self._lobbies.values():
            lobby._after_fork()
        self._setup()
        self._own_room, self._own_project = own_room, own_project
        self._fork_pending = was_active


_live_clients: weakref.WeakSet[NoLag] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_live_clients):
        client._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
