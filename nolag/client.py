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
import time
import weakref
from collections.abc import Mapping
from typing import Any, Callable, NoReturn, Optional, Union

import attrs

from nolag import protocol
from nolag._io.driver import Driver, DriverLobbyPort, release, schedule
from nolag._io.rest import NoRestEndpoint, RestClient
from nolag.errors import (
    NoLagError,
    PresenceTimeoutError,
)
from nolag.events import ClientEmitter, Dispatcher, Registry
from nolag.lobby import Lobby
from nolag.models import (
    ActorPresence,
    ConnectionState,
    NoLagOptions,
    check_timeout,
    either_room,
    freeze,
)
from nolag.rooms import App, Room
from nolag.session import ClientStats, Effects, merge_entries

__all__ = ["ClientStats", "NoLag", "merge_entries"]

log = logging.getLogger("nolag")


_client_numbers = iter(range(1, 1 << 62))

#: "not given" for the constructor's keywords (None is a meaningful value for some)
_UNSET: Any = object()


class NoLag(ClientEmitter):
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
        """A fresh dispatcher, driver (lock, session, connection) and REST client (also
        after a fork)."""
        self._pid = os.getpid()
        self._dispatcher = Dispatcher(
            f"nolag-dispatcher-{self._number}",
            self._events,
            self._room_events,
            self._lobby_events,
        )
        self._driver = Driver(
            self.options,
            self._token,
            self._number,
            self._dispatcher,
            self._events,
            self._room_events,
        )
        self._lock = self._driver.lock
        self._changed = self._driver.changed
        self._session = self._driver.session
        self._res = self._driver.res
        self._finalizer = weakref.finalize(self, release, self._res, self._number)
        self._rest = RestClient(self.options.derived_rest_url(), self._token, schedule)
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
        self._driver.connect(time.monotonic() + timeout)
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
        self._fork_pending = False
        self._driver.disconnect(time.monotonic() + timeout)
        self._rest.close()

    close = disconnect

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the client is disconnected (or `timeout` passes); True if it was.

        Ctrl-C interrupts it as usual; it installs no signal handler, so it is safe in
        threads, Django and Flask. For scripts: ``client.connect(); ...; client.wait()``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        disconnected = self._driver.disconnected
        while not disconnected.is_set():
            remaining = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
            if remaining <= 0:
                return False
            disconnected.wait(remaining)  # short waits keep KeyboardInterrupt prompt
        return True

    def __enter__(self) -> NoLag:
        if not self.connected:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

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
                context = self._lobbies[lobby] = Lobby(DriverLobbyPort(self._driver), lobby)
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
        room = self._room_arg(either_room(room, room_id))
        with self._lock:
            self._driver.carry(self._session.set_presence(plain, room, time.monotonic()))

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
            self._driver.reopen()

    def own_presence(self, room: Optional[str] = None) -> Optional[Mapping[str, Any]]:
        """The presence this client asked to show in `room` (default room or project), or None."""
        room = self._room_arg(room)
        with self._lock:
            own = self._session.own_presence(room)
        return None if own is None else freeze(own)

    def get_all_presence(
        self, room: Optional[str] = None, *, room_id: Optional[str] = None
    ) -> tuple[ActorPresence, ...]:
        """Everyone in the local cache (one entry per actor and room, each with its `room`;
        `None` for client level), or one room's members.

        An immutable tuple, in the order the members appeared (room by room, the rooms in
        the order the cache first held them); the same object while nothing changed.
        `room_id` is the official SDKs' name for `room`.
        """
        self._check_fork()
        room = either_room(room, room_id)
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
    ) -> tuple[ActorPresence, ...]:
        """Ask the server for the authoritative list and block for it, `timeout` seconds at
        most for the whole call (default: options.request_timeout).

        An immutable tuple, one entry per actor (each with `room` set to the room asked
        for), in the order the server listed them (an actor's first socket).

        Uses the REST endpoint (GET /v1/presence); a server without one (HTTP 404) is asked
        over the socket instead, within the same deadline. Rooms default to
        options.default_room. Raises PresenceTimeoutError, AuthenticationError (401),
        ForbiddenError (403) or RateLimitError (429, with retry_after). `room_id` is the
        official SDKs' name for `room`.
        """
        self._check_fork()
        room = self._room_arg(either_room(room, room_id))
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
                    self._driver.carry(fx)
                return tuple(merge_entries(entries, room))
        reply = self._driver.request(lambda fx: self._session.fetch(room, fx), deadline, timeout)
        assert isinstance(reply, protocol.PresenceList)
        return tuple(merge_entries(reply.entries, room))

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

    _timeout = staticmethod(check_timeout)

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


_live_clients: weakref.WeakSet[NoLag] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_live_clients):
        client._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
