"""The public facade `NoLag`: connect/auth, presence calls, the cache, reconnects, threads.

Threads per client (all daemons, joined by disconnect()):
- ``nolag-reader-<n>``: owns the connection; decodes frames, applies them to the store,
  queues public events; on an unexpected loss it runs the reconnect loop itself.
- ``nolag-heartbeat-<n>``: sends the empty-frame heartbeat and aborts a silent connection.
- ``nolag-dispatcher-<n>``: runs user callbacks in order (see nolag.events).
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
from typing import Any, Callable, Optional, TypeVar, Union, overload

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
from nolag.events import Dispatcher, Handler, Registry
from nolag.models import ActorPresence, ConnectionState, NoLagOptions
from nolag.presence import PresenceStore, PublicEvent
from nolag.rest import NoRestEndpoint, RestClient
from nolag.transport import Transport

__all__ = ["ClientStats", "NoLag"]

log = logging.getLogger("nolag")

H = TypeVar("H", bound=Handler)

_client_numbers = itertools.count(1)


@attrs.define(slots=True)
class ClientStats:
    """Counters a client keeps about its connection (read them, don't write them)."""

    frames_received: int = 0
    frames_sent: int = 0
    protocol_errors: int = 0
    server_errors: int = 0
    events_emitted: int = 0
    reconnects: int = 0


class _Waiter:
    """A caller blocked on a presence list reply for one room."""

    __slots__ = ("_event", "error", "result")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.result: Optional[protocol.PresenceList] = None
        self.error: Optional[BaseException] = None

    def resolve(self, result: protocol.PresenceList) -> None:
        self.result = result
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._event.set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


@attrs.define(slots=True)
class _Pending:
    """One getPresence sent on the socket, awaiting its ordered reply."""

    room: Optional[str]
    mark: int
    waiter: Optional[_Waiter]


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

    Joined-at is the earliest socket's; the data is the newest socket's (latest joinedAt,
    later entries winning ties), and `connections` counts the sockets.
    """
    grouped: dict[str, list[protocol.PresenceEntry]] = {}
    for entry in entries:
        grouped.setdefault(entry.actor_token_id, []).append(entry)
    actors = []
    for actor_id, group in grouped.items():
        newest = group[0]
        for entry in group[1:]:
            if (entry.joined_at or 0) >= (newest.joined_at or 0):
                newest = entry
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
        self._pid = os.getpid()

        self._lock = threading.RLock()  # state, store, own presence, pending replies
        self._io_lock = threading.Lock()  # keeps pending-reply order equal to send order
        self._closing = threading.Event()
        self._disconnected = threading.Event()
        self._disconnected.set()
        self._state = ConnectionState.DISCONNECTED
        self._transport: Optional[Transport] = None
        self._reader: Optional[threading.Thread] = None
        self._heartbeat: Optional[threading.Thread] = None

        self._store = PresenceStore()
        self._events = Registry()
        self._dispatcher = Dispatcher(f"nolag-dispatcher-{self._number}", self._events)
        self._rest = RestClient(self.options.derived_rest_url(), token)
        self._rest_available: Optional[bool] = None
        self.stats = ClientStats()

        self._actor_id: Optional[str] = None
        self._project_id: Optional[str] = None
        self._actor_type: Optional[str] = None
        self._own_room: Optional[tuple[str, dict[str, Any]]] = None
        self._own_project: Optional[dict[str, Any]] = None
        self._socket_room: Optional[str] = None
        self._stale_room_leaves = 0  # own leaves still due from rooms we switched away from
        self._pending: collections.deque[_Pending] = collections.deque()
        self._fork_pending = False  # set in a forked child that must reconnect on first use
        _live_clients.add(self)
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
        return self._own_room[0] if self._own_room else None

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
        self._on_open(transport, auth, reconnected=False)
        self._reader = self._thread("reader", self._run_reader)
        self._heartbeat = self._thread("heartbeat", self._run_heartbeat)
        return self

    def disconnect(self, timeout: float = 5.0) -> None:
        """Close the connection, stop every thread, clear the cache and forget own presence.

        Safe to call twice, and from inside a callback. In a forked child it only forgets
        the parent's connection.
        """
        if os.getpid() != self._pid:
            self._reset_after_fork()
        self._fork_pending = False
        self._closing.set()
        with self._lock:
            was = self._state
            self._state = ConnectionState.DISCONNECTED
            transport, self._transport = self._transport, None
            self._fail_pending(ConnectionClosedError("the client disconnected"))
            self._store.reset()
            self._own_room = self._own_project = None  # a later connect() starts afresh
            self._socket_room = None
            self._stale_room_leaves = 0
        if transport is not None:
            transport.close(timeout=min(timeout, 2.0))
        deadline = time.monotonic() + timeout
        for thread in (self._reader, self._heartbeat):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._reader = self._heartbeat = None
        if was is not ConnectionState.DISCONNECTED:
            self._emit("disconnect", "client disconnected")
        self._dispatcher.stop(max(0.1, deadline - time.monotonic()))
        self._rest.close()
        self._disconnected.set()

    close = disconnect

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

    # ------------------------------------------------------------ presence

    def set_presence(self, data: Mapping[str, Any], room: Optional[str] = None) -> None:
        """Announce this client's presence in `room` (default: options.default_room, else project).

        Raises TypeError (naming the key) for data that is not a mapping of JSON-like values,
        bytes included, and ValueError past options.max_presence_bytes — before sending anything.
        A connection holds presence in one room at a time: a new room replaces the old one.
        Called before connect() or while reconnecting, it is sent as soon as connected.
        """
        self._check_fork()
        plain, _ = protocol.validate_presence_data(data, self.options.max_presence_bytes)
        room = self._room_arg(room)
        with self._io_lock:
            with self._lock:
                if room is None:
                    self._own_project = plain
                else:
                    self._own_room = (room, plain)
                transport = self._transport if self.connected else None
                sync = self._enter_room(room) if transport is not None else None
            if transport is not None:
                self._send(transport, protocol.encode_presence(plain, room))
                if sync is not None:
                    self._send(transport, protocol.encode_get_presence(sync.room))

    def clear_presence(self, room: Optional[str] = None) -> None:
        """Withdraw this client's presence data (sends empty data) and stop re-sending it.

        Without a room it clears both the room presence and the project-level presence.
        """
        self._check_fork()
        with self._io_lock:
            with self._lock:
                targets: list[Optional[str]] = []
                if room is None or room == self.room:
                    if self._own_room is not None:
                        targets.append(self._own_room[0])
                    self._own_room = None
                if room is None:
                    if self._own_project is not None:
                        targets.append(None)
                    self._own_project = None
                transport = self._transport if self.connected else None
            if transport is not None:
                for target in targets:
                    self._send(transport, protocol.encode_clear_presence(target))

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
        reply = self._request_list_and_wait(room, max(0.0, deadline - time.monotonic()), timeout)
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
                payload = transport.recv()
                if payload is None:
                    continue  # timed out: the deadline check above ends the wait
                frame = protocol.decode_frame(payload)
                if isinstance(frame, protocol.AuthOk):
                    transport.set_timeout(self._io_timeout)
                    return transport, frame
                if isinstance(frame, protocol.AuthRefused):
                    raise AuthenticationError(frame.error)
                if isinstance(frame, protocol.ErrorFrame) and frame.error == "not_authenticated":
                    raise AuthenticationError(frame.error)
        except BaseException:
            transport.close(timeout=1.0)  # a refused socket stays open on the broker: close it
            raise

    def _on_open(self, transport: Transport, auth: protocol.AuthOk, reconnected: bool) -> None:
        """Adopt a fresh authenticated connection: re-send own presence and resync the cache."""
        with self._io_lock:
            with self._lock:
                self._transport = transport
                self._actor_id = auth.actor_token_id
                self._project_id = auth.project_id
                self._actor_type = auth.actor_type
                self._state = ConnectionState.CONNECTED
                self._socket_room = None
                self._stale_room_leaves = 0
                frames: list[bytes] = []
                if self._own_project is not None:
                    frames.append(protocol.encode_presence(self._own_project, None))
                if self._own_room is not None:
                    own_room, data = self._own_room
                    frames.append(protocol.encode_presence(data, own_room))
                    self._socket_room = own_room
                syncs: list[Optional[str]] = []
                if self.options.sync_on_join:
                    syncs = [None] if self._socket_room is None else [None, self._socket_room]
                    for sync in syncs:
                        self._pending.append(_Pending(sync, self._store.mark(), None))
                for stale in [
                    r for r in self._store.rooms() if r is not None and r != self._socket_room
                ]:
                    self._emit_all(self._store.drop_room(stale))
                self._emit("reconnect" if reconnected else "connect")
            for frame in frames:
                self._send(transport, frame)
            for sync in syncs:
                self._send(transport, protocol.encode_get_presence(sync))

    def _run_reader(self) -> None:
        """Own the connection: read frames until disconnect(), reconnecting on a loss."""
        while not self._closing.is_set():
            transport = self._transport
            if transport is None:
                break
            try:
                payload = transport.recv()
                if payload is None:
                    continue  # no frame within the I/O timeout; liveness is the heartbeat's job
            except ConnectionClosedError as exc:
                if self._closing.is_set():
                    break
                if not self._recover(exc):
                    break
                continue
            except Exception as exc:  # never let the reader die silently
                log.exception("nolag: unexpected error reading the socket")
                transport.abort()
                if self._closing.is_set() or not self._recover(ConnectionClosedError(str(exc))):
                    break
                continue
            self._handle(payload)

    def _recover(self, exc: ConnectionClosedError) -> bool:
        """After an unexpected loss: reconnect with backoff. False when giving up."""
        with self._lock:
            self._transport = None
            self._fail_pending(exc)
            reconnect = self.options.reconnect
            self._state = (
                ConnectionState.RECONNECTING if reconnect else ConnectionState.DISCONNECTED
            )
            self._emit("disconnect", str(exc) or "connection lost")
        if not reconnect:
            self._disconnected.set()
            return False
        opts = self.options
        for attempt in itertools.count(1):
            if opts.reconnect_max_attempts is not None and attempt > opts.reconnect_max_attempts:
                self._give_up(ConnectionError(f"gave up reconnecting after {attempt - 1} attempts"))
                return False
            cap = min(
                opts.reconnect_max_delay,
                opts.reconnect_initial_delay * opts.reconnect_factor ** (attempt - 1),
            )
            delay = random.uniform(0, cap)  # full jitter
            self._emit("reconnecting", attempt, delay)
            if self._closing.wait(delay):
                return False
            try:
                transport, auth = self._open(opts.connect_timeout, reconnect=True)
            except AuthenticationError as err:
                self._give_up(err)
                return False
            except (ConnectionError, OSError) as err:
                log.info("nolag: reconnect attempt %d failed: %s", attempt, err)
                continue
            if self._closing.is_set():
                transport.close(timeout=1.0)
                return False
            self.stats.reconnects += 1
            self._on_open(transport, auth, reconnected=True)
            return True
        return False  # pragma: no cover - itertools.count never ends

    def _give_up(self, error: NoLagError) -> None:
        with self._lock:
            self._state = ConnectionState.DISCONNECTED
            self._emit("error", error)
        self._disconnected.set()

    def _run_heartbeat(self) -> None:
        """Send a heartbeat every interval; abort a connection silent for two intervals."""
        interval = self.options.heartbeat_interval
        tick = min(1.0, interval / 4)
        silence_limit = 2 * interval + min(5.0, interval / 2)
        last_sent = time.monotonic()
        while not self._closing.wait(tick):
            transport = self._transport
            if transport is None or not self.connected:
                if self._disconnected.is_set():
                    return
                continue
            now = time.monotonic()
            if now - transport.last_received > silence_limit:
                log.warning("nolag: no frame for %.1fs; dropping the connection", silence_limit)
                transport.abort()
                continue
            if now - last_sent >= interval:
                last_sent = now
                self._send(transport, protocol.HEARTBEAT)

    # ------------------------------------------------------------ internals: frames

    def _handle(self, payload: bytes) -> None:
        """Decode one frame and apply it; runs on the reader thread, never runs user code."""
        self.stats.frames_received += 1
        frame = protocol.decode_frame(payload)
        with self._lock:
            if isinstance(frame, protocol.PresenceEvent):
                self._apply_event(frame)
            elif isinstance(frame, protocol.PresenceList):
                self._apply_list(frame)
            elif isinstance(frame, protocol.ErrorFrame):
                self._apply_error(frame)
            elif isinstance(frame, protocol.ProtocolError):
                self.stats.protocol_errors += 1
                log.debug("nolag: ignored a bad frame: %s", frame.reason)

    def _apply_event(self, event: protocol.PresenceEvent) -> None:
        if event.room_given:
            room = event.room
        else:  # the real broker: the event belongs to our socket's room
            if self._stale_room_leaves:
                # still events of a room we switched away from, until our own leave from it
                if event.kind == "leave" and event.actor_token_id == self._actor_id:
                    self._stale_room_leaves -= 1
                return
            room = self._socket_room
        if room is not None and room != self._socket_room:
            return  # a room we are no longer in; its cache was dropped
        self._emit_all(self._store.apply_event(event, room, time.monotonic()))

    def _apply_list(self, reply: protocol.PresenceList) -> None:
        pending = self._pop_pending(reply.room)
        if pending is None:
            return
        if pending.waiter is not None:
            pending.waiter.resolve(reply)
        if reply.room is None or reply.room == self._socket_room:
            events = self._store.apply_list(reply, reply.room, pending.mark, time.monotonic())
            self._emit_all(events)

    def _apply_error(self, frame: protocol.ErrorFrame) -> None:
        self.stats.server_errors += 1
        error = _server_exception(frame)
        if frame.room is not None:
            pending = self._pop_pending(frame.room)
            if pending is not None and pending.waiter is not None:
                pending.waiter.fail(error)
        log.info("nolag: server error: %s", error)
        self._emit("error", error)

    def _pop_pending(self, room: Optional[str]) -> Optional[_Pending]:
        for pending in self._pending:
            if pending.room == room:
                self._pending.remove(pending)
                return pending
        return None

    def _fail_pending(self, error: BaseException) -> None:
        while self._pending:
            pending = self._pending.popleft()
            if pending.waiter is not None:
                pending.waiter.fail(error)

    # ------------------------------------------------------------ internals: requests

    def _enter_room(self, room: Optional[str]) -> Optional[_Pending]:
        """Bookkeeping when our presence goes to `room` (lock held); returns a sync to send."""
        if room is None or room == self._socket_room:
            return None
        if self._socket_room is not None:
            self._emit_all(self._store.drop_room(self._socket_room))
            self._stale_room_leaves += 1
        self._socket_room = room
        if not self.options.sync_on_join:
            return None
        pending = _Pending(room, self._store.mark(), None)
        self._pending.append(pending)
        return pending

    def _refresh_cache(self, room: Optional[str]) -> None:
        """After a REST fetch, reconcile the cache from an ordered socket list (never from HTTP)."""
        with self._io_lock:
            with self._lock:
                if not self.connected or self._transport is None:
                    return
                if room is not None and room != self._socket_room:
                    return
                transport = self._transport
                self._pending.append(_Pending(room, self._store.mark(), None))
            self._send(transport, protocol.encode_get_presence(room))

    def _request_list_and_wait(
        self, room: Optional[str], remaining: float, timeout: float
    ) -> protocol.PresenceList:
        waiter = _Waiter()
        with self._io_lock:
            with self._lock:
                transport = self._transport if self.connected else None
                if transport is None:
                    raise NotConnectedError("fetch_presence over the socket needs connect() first")
                pending = _Pending(room, self._store.mark(), waiter)
                self._pending.append(pending)
            self._send(transport, protocol.encode_get_presence(room))
        if not waiter.wait(remaining):
            with self._lock:
                if pending in self._pending:
                    self._pending.remove(pending)
            raise PresenceTimeoutError(f"no presence list for room {room!r} within {timeout:.1f}s")
        if waiter.error is not None:
            raise waiter.error
        assert waiter.result is not None
        return waiter.result

    def _send(self, transport: Transport, payload: bytes) -> None:
        try:
            transport.send(payload)
        except ConnectionClosedError:
            # the reader sees the loss too and reconnects; own presence is re-sent then
            log.debug("nolag: send on a closed connection dropped (%d bytes)", len(payload))
            return
        self.stats.frames_sent += 1

    # ------------------------------------------------------------ internals: helpers

    def _emit(self, event: str, *args: Any) -> None:
        self._dispatcher.emit(self._events, event, *args)

    def _emit_all(self, events: Sequence[PublicEvent]) -> None:
        for event in events:
            self.stats.events_emitted += 1
            self._dispatcher.emit(self._events, event.name, event.actor)

    def _thread(self, role: str, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, name=f"nolag-{role}-{self._number}", daemon=True)
        thread.start()
        return thread

    def _room_arg(self, room: Optional[str]) -> Optional[str]:
        if room is None:
            return self.options.default_room
        if not isinstance(room, str):
            raise TypeError(f"room must be a str, not {type(room).__name__}")
        if not room:
            raise ValueError("room must be a non-empty str")
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
        replaced; the socket descriptor is closed without a byte sent; own presence and
        handlers are kept so that a reconnect restores them.
        """
        was_active = self._state is not ConnectionState.DISCONNECTED
        if self._transport is not None:
            self._transport.discard()
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._io_lock = threading.Lock()
        self._closing = threading.Event()
        self._disconnected = threading.Event()
        self._disconnected.set()
        self._state = ConnectionState.DISCONNECTED
        self._transport = None
        self._reader = self._heartbeat = None
        self._store = PresenceStore()
        self._events = self._events.copy()
        self._dispatcher = Dispatcher(f"nolag-dispatcher-{self._number}", self._events)
        self._rest = RestClient(self.options.derived_rest_url(), self._token)
        self._pending = collections.deque()
        self._socket_room = None
        self._stale_room_leaves = 0
        self.stats = ClientStats()
        self._fork_pending = was_active


_live_clients: weakref.WeakSet[NoLag] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_live_clients):
        client._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
