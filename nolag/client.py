"""The public facade `NoLag`: the API, and the wiring of the session, the loop and the threads.

The rules live in `nolag.session.Session` (pure); this module feeds it, under the
client's lock, what happened -- frames read by the loop, user calls, timer ticks, a lost
connection -- and carries out the effects it returns without ever blocking: frames go to
the connection's outbox in the loop, events to the dispatcher, answers to the callers
waiting on them. Nothing here runs user code under the lock, and nothing the loop thread
calls waits on a peer.

Threads (all daemons, named, joined by disconnect()):
- ``nolag-loop-<k>``: one per process, shared by every client (nolag._io.loop): every
  socket read and write, and every timer.
- ``nolag-dispatcher-<n>``: runs this client's callbacks in order (nolag.events).
- ``nolag-connect-<n>``: only after an unexpected loss, while it reconnects with backoff.
The opening handshake runs on the caller's thread (connect(), clear_presence()) or on the
connect thread, bounded as a whole by its deadline.
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
import time
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NoReturn, Optional, TypeVar, Union, overload

import attrs

from nolag import protocol
from nolag._io.loop import Channel, TimerHandle, shared_loop
from nolag._io.rest import NoRestEndpoint, RestClient
from nolag._io.transport import open_websocket
from nolag.errors import (
    AuthenticationError,
    ConnectionClosedError,
    ConnectionError,
    NoLagError,
    PresenceTimeoutError,
)
from nolag.events import PRESENCE_EVENTS, Dispatcher, Handler, Lifecycle, Registry
from nolag.lobby import Lobby, LobbyState
from nolag.models import ActorPresence, ConnectionState, NoLagOptions, freeze
from nolag.presence import PublicEvent
from nolag.rooms import App, Room
from nolag.session import ClientStats, Effects, Session, merge_entries

__all__ = ["ClientStats", "NoLag", "merge_entries"]

log = logging.getLogger("nolag")

H = TypeVar("H", bound=Handler)
T = TypeVar("T")

_client_numbers = iter(range(1, 1 << 62))

#: "not given" for the constructor's keywords (None is a meaningful value for some)
_UNSET: Any = object()


class _Reply:
    """A caller blocked on one answer (an auth reply, a list, a lobby snapshot)."""

    __slots__ = ("_event", "error", "result")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None

    def resolve(self, result: Any, error: Optional[BaseException]) -> None:
        if not self._event.is_set():
            self.result, self.error = result, error
            self._event.set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(max(0.0, timeout))


class _Opening:
    """A connection between its handshake and its auth reply: the loop hands its frames
    here until the client adopts it."""

    __slots__ = ("channel", "leftover", "reply")

    def __init__(self) -> None:
        self.channel: Optional[Channel] = None
        self.reply = _Reply()
        self.leftover: list[bytes] = []

    def feed(self, payloads: list[bytes]) -> None:
        """Frames before adoption: find the auth answer; keep what follows it."""
        if self.reply._event.is_set():
            self.leftover.extend(payloads)
            return
        for index, frame in enumerate(protocol.decode_frames(payloads)):
            if isinstance(frame, protocol.AuthOk):
                self.leftover.extend(payloads[index + 1 :])
                self.reply.resolve(frame, None)
                return
            if isinstance(frame, protocol.AuthRefused):
                self.reply.resolve(None, AuthenticationError(frame.error))
                return
            if isinstance(frame, protocol.ErrorFrame) and frame.error == "not_authenticated":
                self.reply.resolve(None, AuthenticationError(frame.error))
                return


class _Resources:
    """What a client holds that must be released even if it is garbage-collected
    without disconnect() (no reference back to the client)."""

    __slots__ = ("channel", "dispatcher", "timer")

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.channel: Optional[Channel] = None
        self.timer: Optional[TimerHandle] = None
        self.dispatcher = dispatcher


def _release(resources: _Resources, number: int) -> None:
    """A client was collected while connected: close its connection, end its threads."""
    channel, resources.channel = resources.channel, None
    if channel is None:
        return
    warnings.warn(
        f"NoLag client #{number} was garbage-collected while connected; "
        "call disconnect() (or use `with NoLag(...) as client:`)",
        ResourceWarning,
        stacklevel=2,
    )
    if resources.timer is not None:
        resources.timer.cancel()
    channel.close(1.0)
    resources.dispatcher.stop(0.0)


def _tick(ref: weakref.ref[NoLag]) -> None:
    """The loop's timer for one client (weakly held, so a dropped client can be collected)."""
    client = ref()
    if client is not None:
        client._on_timer()


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
        rest_url: Optional[str] = _UNSET,
        connect_timeout: float = _UNSET,
        request_timeout: float = _UNSET,
        heartbeat_interval: float = _UNSET,
        protocol_version: int = _UNSET,
        default_room: Optional[str] = _UNSET,
        max_presence_bytes: int = _UNSET,
        max_presence_rate: Optional[float] = _UNSET,
        observer: bool = _UNSET,
        sync_on_join: bool = _UNSET,
        reconnect: bool = _UNSET,
        reconnect_initial_delay: float = _UNSET,
        reconnect_max_delay: float = _UNSET,
        reconnect_factor: float = _UNSET,
        send_timeout: float = _UNSET,
        max_message_bytes: int = _UNSET,
        lobby_refresh_interval: Optional[float] = _UNSET,
        reconnect_max_attempts: Optional[int] = _UNSET,
        fork_policy: str = _UNSET,
        **unknown: NoReturn,
    ) -> None:
        """A client for `token` (an actor access token) at `url` (default
        ws://127.0.0.1:8080/ws). Nothing connects until connect().

        Every keyword is a field of `NoLagOptions` (its docs give units and defaults); pass
        them here, or as ``options=NoLagOptions(...)`` with any of them overriding it.
        Raises TypeError for an unknown keyword (naming the closest option) or a value of
        the wrong type, ValueError for a value out of range.
        """
        if not isinstance(token, str):
            raise TypeError(f"token must be a str, not {type(token).__name__}")
        if not token.strip():
            raise ValueError("token must be a non-empty str")
        names = list(NoLagOptions.field_names())
        for name in unknown:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; options: {', '.join(names)}"
            raise TypeError(f"NoLag() got an unknown option {name!r}{hint}")
        given = {
            name: value
            for name, value in locals().items()
            if name in names and name != "url" and value is not _UNSET
        }
        if url is not None:
            given["url"] = url
        self.options = attrs.evolve(options, **given) if options else NoLagOptions(**given)
        self._token = token
        self._number = next(_client_numbers)
        self._events = Registry()
        self._rooms: dict[str, Room] = {}
        self._room_events: dict[str, Registry] = {}
        self._lobbies: dict[str, Lobby] = {}
        self._lobby_events: dict[str, Registry] = {}
        self._setup()
        _live_clients.add(self)

    def _setup(self) -> None:
        """Fresh locks, session, dispatcher and connection state (also after a fork)."""
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # notified when the cache changes
        self._session = Session(self.options, self._token)
        self._dispatcher = Dispatcher(
            f"nolag-dispatcher-{self._number}",
            self._events,
            self._room_events,
            self._lobby_events,
        )
        self._res = _Resources(self._dispatcher)
        self._finalizer = weakref.finalize(self, _release, self._res, self._number)
        self._opening: Optional[_Opening] = None
        self._replies: dict[int, _Reply] = {}
        self._timer_at: Optional[float] = None
        self._closing = threading.Event()
        self._disconnected = threading.Event()
        self._disconnected.set()
        self._connector: Optional[threading.Thread] = None
        self._rest = RestClient(self.options.derived_rest_url(), self._token, self._schedule)
        self._rest_available: Optional[bool] = None
        self._fork_pending = False  # set in a forked child that must reconnect on first use

    # ------------------------------------------------------------ properties

    @property
    def status(self) -> ConnectionState:
        """The connection state: disconnected, connecting, connected, reconnecting."""
        return self._session.status

    @property
    def connected(self) -> bool:
        """True while the socket is open and authenticated."""
        return self._session.connected

    @property
    def actor_id(self) -> Optional[str]:
        """This token's actor id, known once connected."""
        return self._session.actor_id

    @property
    def project_id(self) -> Optional[str]:
        """The project the token belongs to, known once connected."""
        return self._session.project_id

    @property
    def actor_type(self) -> Optional[str]:
        """The token's actor type (user, device, server, ...), known once connected."""
        return self._session.actor_type

    @property
    def room(self) -> Optional[str]:
        """The room this client's presence is in (one room per connection), if any."""
        return self._session.room

    @property
    def stats(self) -> ClientStats:
        """Counters about the connection (frames, presence sent and coalesced, events...)."""
        return self._session.stats

    def __repr__(self) -> str:
        return f"<NoLag #{self._number} {self.status.value} actor={self.actor_id!r}>"

    # ------------------------------------------------------------ connect / disconnect

    def connect(self, timeout: Optional[float] = None) -> NoLag:
        """Open the connection and block until authenticated, `timeout` seconds at most for
        the whole call (default: options.connect_timeout).

        Raises AuthenticationError if the token is refused (no retry), or a
        nolag.ConnectionError (saying what failed and where) if the server cannot be
        reached, does not complete the handshake or does not answer the auth in time.
        """
        self._check_fork()
        timeout = self._timeout(timeout, self.options.connect_timeout, "timeout")
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._session.connected:
                return self
            if not self._session.can("connect"):
                raise NoLagError(f"connect() while {self.status.value}")
            auth = self._session.begin("connect")
            self._closing.clear()
            self._disconnected.clear()
        self._dispatcher.start()
        try:
            opening = self._open(deadline, auth)
        except BaseException as exc:
            with self._lock:
                self._carry(self._session.open_failed(exc, time.monotonic()))
                self._disconnected.set()
            self._dispatcher.stop(max(0.1, deadline - time.monotonic()))
            shared_loop().join_if_idle(max(0.1, deadline - time.monotonic()))
            raise
        self._adopt(opening, silent=False)
        return self

    def disconnect(self, timeout: float = 5.0) -> None:
        """Close the connection, stop every thread, clear the cache and forget own presence.

        The last presence set is sent first (so peers see it), then the connection closes;
        the whole call takes at most `timeout` seconds. Lobby subscriptions end too. Safe
        to call twice, and from inside a callback. In a forked child it only forgets the
        parent's connection.
        """
        if os.getpid() != self._pid:
            self._reset_after_fork()
        deadline = time.monotonic() + timeout
        self._fork_pending = False
        self._closing.set()
        with self._lock:
            channel = self._res.channel
            self._carry(self._session.disconnect(time.monotonic()))
            self._res.channel = None
            opening, self._opening = self._opening, None
            self._cancel_timer()
            for reply in self._replies.values():
                reply.resolve(None, ConnectionClosedError("the client disconnected"))
            self._replies.clear()
            self._changed.notify_all()
        if opening is not None and opening.channel is not None:
            opening.channel.abort("the client disconnected", report=False)
        if channel is not None:
            channel.close(max(0.0, deadline - time.monotonic()))
            channel.ended.wait(max(0.0, deadline - time.monotonic()))
        connector, self._connector = self._connector, None
        if connector is not None and connector is not threading.current_thread():
            connector.join(max(0.0, deadline - time.monotonic()))
        self._dispatcher.stop(max(0.1, deadline - time.monotonic()))
        shared_loop().join_if_idle(max(0.0, deadline - time.monotonic()))
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

    @overload
    def once(self, event: str, handler: None = None) -> Callable[[H], H]: ...

    @overload
    def once(self, event: str, handler: H) -> H: ...

    def once(self, event: str, handler: Optional[H] = None) -> Union[H, Callable[[H], H]]:
        """Like on(), for the next event only (as the official SDKs' ``once``)."""
        return self._events.once(event, handler)

    def off(self, event: str, handler: Optional[Handler] = None) -> None:
        """Unregister one callback, or every callback of the event when handler is None."""
        self._events.off(event, handler)

    # ------------------------------------------------------------ contexts

    def set_app(self, app: str) -> App:
        """A fluent context for an app: ``client.set_app("demo").set_room("general")``."""
        return App(self, app)

    def set_room(self, room: str) -> Room:
        """The context of one room: its presence, its members and its events."""
        room = self._room_name(room)
        with self._lock:
            context = self._rooms.get(room)
            if context is None:
                context = self._rooms[room] = Room(self, room)
                self._room_events[room] = context._events
            return context

    def set_lobby(self, lobby: str) -> Lobby:
        """The context of one lobby: presence across its rooms, seen without joining them."""
        lobby = self._room_name(lobby, "lobby")
        with self._lock:
            context = self._lobbies.get(lobby)
            if context is None:
                context = self._lobbies[lobby] = Lobby(_LobbyPort(self), lobby)
                self._lobby_events[lobby] = context._events
            return context

    # ------------------------------------------------------------ presence

    def set_presence(
        self, data: Mapping[str, Any], room: Optional[str] = None, *, room_id: Optional[str] = None
    ) -> None:
        """Announce this client's presence in `room` (default: options.default_room, else project).

        Raises TypeError (naming the key) for data that is not a mapping of JSON-like values,
        bytes included, and ValueError past options.max_presence_bytes — before sending anything.
        A connection holds presence in one room at a time: a new room replaces the old one.
        Bursts are coalesced (latest wins) to at most options.max_presence_rate frames a
        second. Called before connect() or while reconnecting, it is sent once connected.
        Never blocks: the frame is queued for the loop thread. `room_id` is the official
        SDKs' name for `room`.
        """
        self._check_fork()
        if self.options.observer:
            raise NoLagError("this client is an observer (observer=True): it never sets presence")
        plain, _ = protocol.validate_presence_data(data, self.options.max_presence_bytes)
        room = self._room_arg(_either(room, room_id))
        with self._lock:
            self._carry(self._session.set_presence(plain, room, time.monotonic()))

    def clear_presence(self, room: Optional[str] = None) -> None:
        """Leave: withdraw this client's presence so that others see a presence:leave.

        Without a room it withdraws both the room presence and the project-level presence.
        The protocol has no leave frame, so when presence was already sent the client
        reopens its connection without it (the broker then broadcasts the leave); lobby
        subscriptions and any presence kept are restored on the new connection at once.
        Blocks at most options.connect_timeout seconds (the new connection's opening).
        """
        self._check_fork()
        with self._lock:
            cycle = self._session.clear_presence(room)
        if cycle:
            self._reopen()

    def own_presence(self, room: Optional[str] = None) -> Optional[Mapping[str, Any]]:
        """The presence this client asked to show in `room` (default room or project), or None."""
        room = self._room_arg(room)
        with self._lock:
            own = self._session.own_presence(room)
        return None if own is None else freeze(own)

    def get_all_presence(
        self, room: Optional[str] = None, *, room_id: Optional[str] = None
    ) -> Sequence[ActorPresence]:
        """Everyone in the local cache (one entry per actor and room), or one room's members.

        Returns an immutable tuple; the same object while nothing changed. `room_id` is the
        official SDKs' name for `room`.
        """
        self._check_fork()
        room = _either(room, room_id)
        with self._lock:
            return self._session.snapshot(room)

    def get_presence(self, actor_id: str, room: Optional[str] = None) -> Optional[ActorPresence]:
        """One actor from the local cache (in `room`, or wherever it changed last), or None."""
        if not isinstance(actor_id, str):
            raise TypeError(f"actor_id must be a str, not {type(actor_id).__name__}")
        self._check_fork()
        with self._lock:
            return self._session.store.get(actor_id, room)

    def presence_count(self, room: Optional[str] = None) -> int:
        """How many actors (not sockets) the cache holds, in `room` or everywhere."""
        self._check_fork()
        with self._lock:
            return self._session.store.count(room)

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
        The predicate runs on the calling thread, never under the client's lock.
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
        while True:
            with self._lock:
                people = self._session.snapshot(room)
                version = self._session.store.version
            for person in people:
                if match(person):
                    return person
            with self._changed:
                while self._session.store.version == version:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise PresenceTimeoutError(f"no matching presence within {timeout:.1f}s")
                    self._changed.wait(remaining)

    def fetch_presence(
        self,
        room: Optional[str] = None,
        timeout: Optional[float] = None,
        *,
        room_id: Optional[str] = None,
    ) -> list[ActorPresence]:
        """Ask the server for the authoritative list (one entry per actor) and block for it,
        `timeout` seconds at most for the whole call (default: options.request_timeout).

        Uses the REST endpoint (GET /v1/presence); a server without one (HTTP 404) is asked
        over the socket instead, within the same deadline. Rooms default to
        options.default_room. Raises PresenceTimeoutError, AuthenticationError (401),
        ForbiddenError (403) or RateLimitError (429, with retry_after). `room_id` is the
        official SDKs' name for `room`.
        """
        self._check_fork()
        room = self._room_arg(_either(room, room_id))
        timeout = self._timeout(timeout, self.options.request_timeout, "timeout")
        deadline = time.monotonic() + timeout
        if self._rest_available is not False:
            log.debug("client #%d: fetching room %r over REST", self._number, room)
            try:
                entries = self._rest.fetch_presence(room, timeout)
            except NoRestEndpoint:
                log.debug("no REST presence endpoint; fetching over the socket")
                self._rest_available = False
            else:
                self._rest_available = True
                with self._lock:
                    fx = Effects()
                    self._session.refresh(room, fx)
                    self._carry(fx)
                return merge_entries(entries, room)
        reply = self._request(lambda fx: self._session.fetch(room, fx), deadline, timeout)
        assert isinstance(reply, protocol.PresenceList)
        return merge_entries(reply.entries, room)

    # ------------------------------------------------------------ the loop's side

    def on_frames(self, channel: Channel, payloads: list[bytes], now: float) -> None:
        """Frames read from a connection (on the loop thread; never blocks, no user code)."""
        with self._changed:
            if channel is not self._res.channel:
                opening = self._opening
                if opening is not None and opening.channel is channel and payloads:
                    opening.feed(payloads)
                return
            session = self._session
            if not payloads:
                session.received(now)
                return
            version = session.store.version
            fx = session.receive(payloads, now, self._listening())
            self._carry(fx)
            if session.store.version != version:
                self._changed.notify_all()

    def on_lost(self, channel: Channel, error: ConnectionClosedError, now: float) -> None:
        """A connection ended (on the loop thread, which must not block)."""
        with self._changed:
            opening = self._opening
            if opening is not None and opening.channel is channel:
                opening.reply.resolve(None, error)
                return
            if channel is not self._res.channel or self._closing.is_set():
                return
            log.debug("client #%d: connection lost: %s", self._number, error)
            self._res.channel = None
            self._cancel_timer()
            self._carry(self._session.lost(error, now))
            self._changed.notify_all()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer_at = None
            self._res.timer = None
            channel = self._res.channel
            if channel is None:
                return
            now = time.monotonic()
            fx = self._session.tick(now)
            if fx.drop is not None and channel.transport.input_pending():
                # bytes wait in the socket: the server is alive, the loop was only behind
                # (a starved process, or this client's lock held for a while)
                self._session.received(now)
                fx = self._session.tick(now)
            self._carry(fx)

    # ------------------------------------------------------------ internals

    def _carry(self, fx: Effects) -> None:
        """Do what the session asked, without blocking (lock held, so order is kept)."""
        session = self._session
        channel = self._res.channel
        if fx.frames and channel is not None:
            session.stats.frames_sent += len(fx.frames)
            channel.send(fx.frames)
        events = fx.events
        if events and not self._listening():  # a cache-only client: only the rare kinds
            events = [item for item in events if type(item) is not PublicEvent]
        if events:
            self._dispatcher.emit_many(events)
        for rid, result, error in fx.replies:
            reply = self._replies.pop(rid, None)
            if reply is not None:
                reply.resolve(result, error)
        if fx.drop is not None and channel is not None:
            log.debug("client #%d: dropping the connection: %s", self._number, fx.drop)
            channel.abort(fx.drop)
        if fx.ended:
            self._cancel_timer()
            if not self._closing.is_set():  # disconnect() sets it once its threads are gone
                self._disconnected.set()
            self._changed.notify_all()
        if fx.reconnect_in is not None and threading.current_thread() is not self._connector:
            self._connector = threading.Thread(
                target=self._reconnect,
                args=(fx.reconnect_in,),
                name=f"nolag-connect-{self._number}",
                daemon=True,
            )
            self._connector.start()
        self._arm_timer()

    def _arm_timer(self) -> None:
        """Keep one loop timer per client at the session's next deadline (lock held).

        A deadline that moved later (new bytes pushed liveness back) keeps the earlier
        timer; it fires, finds nothing due and re-arms: no timer churn per batch.
        """
        when = self._session.next_deadline()
        if when is None:
            self._cancel_timer()
            return
        if self._timer_at is not None and self._timer_at <= when:
            return
        self._cancel_timer()
        self._timer_at = when
        self._res.timer = shared_loop().call_at(when, _tick, weakref.ref(self))

    def _cancel_timer(self) -> None:
        timer, self._res.timer = self._res.timer, None
        self._timer_at = None
        if timer is not None:
            timer.cancel()

    def _schedule(self, delay: float, fn: Callable[[], None]) -> Callable[[], None]:
        """Run fn after `delay` seconds on the loop thread; returns its cancel function."""
        return shared_loop().call_later(delay, fn).cancel

    def _listening(self) -> bool:
        """Whether a presence handler is registered on the client or one of its rooms
        (a client that only reads its cache queues no events for the dispatcher)."""
        handlers = self._events._handlers
        if any(handlers.get(name) for name in PRESENCE_EVENTS):
            return True
        return any(registry._handlers for registry in self._room_events.values())

    def _open(self, deadline: float, auth: bytes) -> _Opening:
        """Open and authenticate a connection by `deadline`; not yet adopted.

        Raises nolag.ConnectionError or AuthenticationError; nothing is left open then.
        """
        opts = self.options
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConnectionError(f"no time left to connect to {opts.url}")
        log.debug("client #%d: opening %s (%.1fs left)", self._number, opts.url, remaining)
        transport = open_websocket(opts.url, remaining, self._schedule, opts.max_message_bytes)
        log.debug("client #%d: WebSocket open; authenticating", self._number)
        opening = _Opening()
        with self._lock:
            self._opening = opening
        channel = shared_loop().add(transport, self, write_timeout=opts.send_timeout)
        opening.channel = channel
        channel.send([auth])
        error: Optional[BaseException]
        if not opening.reply.wait(deadline - time.monotonic()):
            error = ConnectionError(f"no auth reply from {opts.url} within {remaining:.1f}s")
        else:
            error = opening.reply.error
        if error is not None or self._closing.is_set():
            with self._lock:
                if self._opening is opening:
                    self._opening = None
            channel.close(1.0)  # a refused socket stays open on the broker: close it
            raise error or ConnectionClosedError("the client disconnected")
        return opening

    def _adopt(self, opening: _Opening, silent: bool) -> None:
        """Make an authenticated connection the client's, and apply what came after the auth."""
        auth = opening.reply.result
        assert isinstance(auth, protocol.AuthOk) and opening.channel is not None
        old: Optional[Channel] = None
        with self._changed:
            if self._opening is opening:
                self._opening = None
            if self._closing.is_set():
                opening.channel.close(1.0)  # disconnect() won the race
                return
            now = time.monotonic()
            if silent:
                old = self._res.channel
                self._carry(self._session.reopened(now))
            self._res.channel = opening.channel
            log.debug(
                "client #%d: authenticated as %r (project %r, protocol %d)%s",
                self._number,
                auth.actor_token_id,
                auth.project_id,
                auth.protocol_version,
                "; connection swapped" if silent else "",
            )
            self._carry(self._session.opened(auth, now, silent=silent))
            if opening.leftover:
                self._carry(self._session.receive(opening.leftover, now, self._listening()))
            self._changed.notify_all()
        if old is not None:
            old.close(1.0)

    def _reconnect(self, delay: float) -> None:
        """After an unexpected loss: wait, try, back off, until it works or the session ends."""
        while not self._closing.wait(delay):
            with self._lock:
                if not self._session.can("retry"):
                    return
                auth = self._session.retry()
            try:
                opening = self._open(time.monotonic() + self.options.connect_timeout, auth)
            except (NoLagError, OSError) as exc:
                with self._lock:
                    fx = self._session.open_failed(exc, time.monotonic())
                    self._carry(fx)
                if fx.reconnect_in is None:
                    return
                delay = fx.reconnect_in
                continue
            self._adopt(opening, silent=False)
            return

    def _reopen(self) -> None:
        """Replace the connection with a fresh one (the broker sends our leaves for the old)."""
        with self._lock:
            auth = protocol.encode_auth(self._token, self.options.protocol_version, True)
            old = self._res.channel
        try:
            opening = self._open(time.monotonic() + self.options.connect_timeout, auth)
        except AuthenticationError as err:
            with self._lock:
                self._dispatcher.emit_many([Lifecycle("error", (err,))])
            if old is not None:
                old.abort("the token was refused on a reopen")  # the loss ends the session
            return
        except (NoLagError, OSError) as err:
            log.info("could not reopen the connection: %s", err)
            if old is not None:
                old.abort(f"could not reopen: {err}")  # reconnects without the presence
            return
        self._adopt(opening, silent=True)

    def _request(self, send: Callable[[Effects], int], deadline: float, timeout: float) -> Any:
        """Send one request on the socket and block for its ordered reply, by `deadline`."""
        reply = _Reply()
        with self._lock:
            fx = Effects()
            rid = send(fx)
            self._replies[rid] = reply
            self._carry(fx)
        if not reply.wait(deadline - time.monotonic()):
            with self._lock:
                self._replies.pop(rid, None)
                self._session.abandon(rid)
            raise PresenceTimeoutError(f"no answer from the server within {timeout:.1f}s")
        if reply.error is not None:
            raise reply.error
        return reply.result

    # ------------------------------------------------------------ lobbies (the port)

    def _lobby_call(
        self, slug: str, send: Callable[[Effects], Optional[int]], timeout: Optional[float]
    ) -> Any:
        timeout = self._timeout(timeout, self.options.request_timeout, "timeout")
        deadline = time.monotonic() + timeout

        def sender(fx: Effects) -> int:
            rid = send(fx)
            assert rid is not None
            return rid

        return self._request(sender, deadline, timeout)

    # ------------------------------------------------------------ helpers

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
        log.info("forked child %d reconnects with its own socket", self._pid)
        self.connect()

    def _reset_after_fork(self) -> None:
        """Runs in a forked child: drop every resource shared with the parent, write nothing.

        Locks may have been held by parent threads that do not exist here, so they are
        replaced; the loop (and the parent's socket in it) is the parent's, abandoned by
        the child's first use of its own; own presence, handlers and lobby subscriptions
        are kept so that a reconnect restores them.
        """
        old = self._session
        was_active = old.state.public is not ConnectionState.DISCONNECTED
        self._finalizer.detach()
        self._events = self._events.copy()
        for slug, context in self._rooms.items():
            context._events = context._events.copy()
            self._room_events[slug] = context._events
        for slug, lobby in self._lobbies.items():
            lobby._after_fork()
            self._lobby_events[slug] = lobby._events
        self._setup()
        self._session.own_room, self._session.own_project = old.own_room, old.own_project
        for state in old.lobbies.subscribed():
            self._session.lobbies.get(state.slug).subscribed = True
        self._fork_pending = was_active


def _either(room: Optional[str], room_id: Optional[str]) -> Optional[str]:
    """`room`, or the official SDKs' `room_id` spelling of it (not both, unless equal)."""
    if room_id is None:
        return room
    if room is not None and room != room_id:
        raise TypeError(f"give room or room_id, not both ({room!r} and {room_id!r})")
    return room_id


class _LobbyPort:
    """The client as its lobby contexts see it (nolag.lobby.LobbyPort)."""

    __slots__ = ("_client",)

    def __init__(self, client: NoLag) -> None:
        self._client = client

    def lobby_subscribe(self, slug: str, timeout: Optional[float]) -> None:
        client = self._client
        session = client._session
        try:
            client._lobby_call(slug, lambda fx: session.lobby_subscribe(slug, fx), timeout)
            client._lobby_call(slug, lambda fx: session.lobby_fetch(slug, fx), timeout)
        except BaseException:
            with client._lock:
                session.lobbies.get(slug).forget()
            raise

    def lobby_fetch(self, slug: str, timeout: Optional[float]) -> protocol.LobbySnapshot:
        client = self._client
        session = client._session
        reply = client._lobby_call(slug, lambda fx: session.lobby_fetch(slug, fx), timeout)
        assert isinstance(reply, protocol.LobbySnapshot)
        return reply

    def lobby_unsubscribe(self, slug: str, timeout: Optional[float]) -> None:
        client = self._client
        session = client._session
        timeout = client._timeout(timeout, client.options.request_timeout, "timeout")
        deadline = time.monotonic() + timeout
        with client._lock:
            fx = Effects()
            rid = session.lobby_unsubscribe(slug, fx)
            if rid is None:
                client._carry(fx)
                return
            reply = _Reply()
            client._replies[rid] = reply
            client._carry(fx)
        # nothing depends on the server's confirmation, so a late one is no error
        if not reply.wait(deadline - time.monotonic()):
            with client._lock:
                client._replies.pop(rid, None)
                session.abandon(rid)

    def lobby_read(self, slug: str, read: Callable[[LobbyState], T]) -> T:
        client = self._client
        with client._lock:
            return read(client._session.lobbies.get(slug))


_live_clients: weakref.WeakSet[NoLag] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_live_clients):
        client._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
