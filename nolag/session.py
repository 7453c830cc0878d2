"""The client's session rules, sans-IO: frames, intents and clock ticks in; effects out.

`Session` never touches a socket, a thread or a clock (the models are h11's `Connection`
and the local broker's `nolag/broker/core.py`). The threaded facade (`nolag.client`)
feeds it what happened -- a connection opened or was lost, frames arrived, the user asked
for something, time passed -- under the client's lock, and carries out the `Effects` each
call returns: frames to write, events for the dispatcher, answers for blocked callers, a
connection to drop, a reconnect to schedule.

What it owns:

- the connection state, as one transition table (`TRANSITIONS`);
- own presence as desired state: what the user wants shown vs what this connection has
  sent, flushed within a token bucket (latest wins), re-sent after every reconnect;
- room routing: the real broker's events carry no room, they belong to the room our
  socket is in (PROTOCOL.md, "Presence"); events of a room we switched away from are
  dropped until our own leave from it arrives;
- request correlation: replies have no request id, but a socket answers in order, so a
  reply answers the oldest request of its key (room or lobby). A request whose caller
  gave up stays queued, abandoned, so that its late reply is consumed by it and never
  answers a later request. The local broker answers a refused list request with an error
  and then an empty list: that pair is one answer;
- the heartbeat, the liveness deadline, lobby keep-alives and reconnect backoff (full
  jitter; the attempt count resets only once a connection has stayed up `STABLE_AFTER`
  seconds, so a connection that fails right after opening cannot storm).
"""

from __future__ import annotations

import collections
import enum
import itertools
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

import attrs

from nolag import protocol
from nolag.errors import (
    AuthenticationError,
    ConnectionClosedError,
    ConnectionError,
    ForbiddenError,
    NoLagError,
    NotConnectedError,
    RateLimitError,
    ServerError,
)
from nolag.events import Item, Lifecycle, LobbyEvent
from nolag.lobby import LobbyBook, LobbyState
from nolag.models import ActorPresence, ConnectionState, NoLagOptions
from nolag.presence import PresenceStore, PublicEvent, merge_sockets
from nolag.ratelimit import TokenBucket

__all__ = [
    "STABLE_AFTER",
    "TRANSITIONS",
    "ClientStats",
    "Effects",
    "Session",
    "State",
    "merge_entries",
]

log = logging.getLogger("nolag")

#: errors that mean "this room (or lobby) is not yours": our presence there was refused
_REFUSALS = ("not_authorized", "unknown_topic")

#: frames decoded at a time: few enough that a slice's decoded frames are freed before
#: the garbage collector's youngest generation fills (700 objects), so they are never
#: promoted to be scanned again by older collections (~6% faster ingest than decoding a
#: 256 KiB read's ~2,500 frames at once)
_DECODE_SLICE = 64

#: seconds a connection must stay up before the reconnect backoff starts again at attempt 1
STABLE_AFTER = 10.0

#: the close code a client answers a too-large message with (RFC 6455, 7.4.1)
_TOO_BIG = 1009


class State(enum.Enum):
    """The session's connection state (finer than the public `ConnectionState`)."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"  # connect(): opening and authenticating
    CONNECTED = "connected"
    BACKOFF = "backoff"  # lost: waiting before the next attempt
    REOPENING = "reopening"  # a reconnect attempt: opening and authenticating

    @property
    def public(self) -> ConnectionState:
        """What users see: `NoLag.status`."""
        return _PUBLIC[self]


_PUBLIC = {
    State.DISCONNECTED: ConnectionState.DISCONNECTED,
    State.CONNECTING: ConnectionState.CONNECTING,
    State.CONNECTED: ConnectionState.CONNECTED,
    State.BACKOFF: ConnectionState.RECONNECTING,
    State.REOPENING: ConnectionState.RECONNECTING,
}

#: (state, what happened) -> the next state; anything else is a bug and raises
TRANSITIONS: Mapping[tuple[State, str], State] = {
    (State.DISCONNECTED, "connect"): State.CONNECTING,
    (State.CONNECTING, "authenticated"): State.CONNECTED,
    (State.CONNECTING, "failed"): State.DISCONNECTED,
    (State.CONNECTED, "lost"): State.BACKOFF,
    (State.CONNECTED, "ended"): State.DISCONNECTED,
    (State.BACKOFF, "retry"): State.REOPENING,
    (State.BACKOFF, "ended"): State.DISCONNECTED,
    (State.REOPENING, "authenticated"): State.CONNECTED,
    (State.REOPENING, "failed"): State.BACKOFF,
    (State.REOPENING, "ended"): State.DISCONNECTED,
    **{(state, "disconnect"): State.DISCONNECTED for state in State},
}


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


@attrs.define(slots=True, eq=False)
class Effects:
    """What the shell must do after a session call, in this order.

    `frames`: payloads to write on the current connection, in order. `events`: items for
    the dispatcher, in order. `replies`: (request id, result, error) for blocked callers.
    `drop`: a reason to abort the current connection now (its loss is then reported back
    through `lost`). `reconnect_in`: seconds to wait before the next reconnect attempt.
    `ended`: the session is over (timers and the reconnect thread may stop).
    """

    frames: list[bytes] = attrs.Factory(list)
    events: list[Item] = attrs.Factory(list)
    replies: list[tuple[int, Any, Optional[BaseException]]] = attrs.Factory(list)
    drop: Optional[str] = None
    reconnect_in: Optional[float] = None
    ended: bool = False


RequestKey = tuple[str, Optional[str]]


class _Pending:
    """A request sent on the socket, awaiting its ordered reply.

    `key` is ("room", slug-or-None) for getPresence, ("lobby", slug) for lobbySubscribe and
    getLobbyPresence, ("unsubscribe", slug) for lobbyUnsubscribe. `rid` is the caller's
    request id, None for the session's own syncs; `abandoned` once the caller timed out.
    """

    __slots__ = ("abandoned", "key", "mark", "rid")

    def __init__(self, key: RequestKey, mark: int, rid: Optional[int]) -> None:
        self.key = key
        self.mark = mark
        self.rid = rid
        self.abandoned = False


def server_exception(frame: protocol.ErrorFrame) -> ServerError:
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
    actors = []
    for actor_id, newest, group in merge_sockets(
        entries,
        actor=lambda e: e.actor_token_id,
        order=lambda e: (e.update_seq or 0, e.joined_at or 0),
    ):
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


class Session:
    """One client's session across its connections (pure; not thread-safe by itself).

    `rng` draws the reconnect jitter (pass a seeded `random.Random` in tests); `wall`
    (epoch seconds) dates the memberships no frame dated (see `nolag.presence`).
    """

    def __init__(
        self,
        options: NoLagOptions,
        token: str,
        rng: Optional[random.Random] = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.options = options
        self._token = token
        self._rng = rng or random.Random()
        self.state = State.DISCONNECTED
        self.stats = ClientStats()
        self.store = PresenceStore(wall=wall)
        self.lobbies = LobbyBook(wall)
        self.actor_id: Optional[str] = None
        self.project_id: Optional[str] = None
        self.actor_type: Optional[str] = None
        # own presence: what the user wants shown, and what this connection has sent
        self.own_room: Optional[tuple[str, dict[str, Any]]] = None
        self.own_project: Optional[dict[str, Any]] = None
        self._sent_room: Optional[tuple[str, dict[str, Any]]] = None
        self._sent_project: Optional[dict[str, Any]] = None
        self._bucket: Optional[TokenBucket] = None
        # the room this socket is in, as far as events without a roomId are concerned
        self._socket_room: Optional[str] = None
        self._room_confirmed = False  # our own event for _socket_room has arrived
        self._stale_room_leaves = 0  # own leaves still due from rooms we switched away from
        self._quiet: collections.Counter[RequestKey] = collections.Counter()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._absorb: Optional[RequestKey] = None  # an empty list that completes an error
        self._rids = itertools.count(1)
        # time: everything below is in the shell's monotonic seconds
        self._last_rx = 0.0
        self._last_heartbeat = 0.0
        self._connected_at: Optional[float] = None
        self._flush_due: Optional[float] = None
        self._resync_due: dict[Optional[str], float] = {}
        self._lobby_refresh_due: Optional[float] = None
        self._attempt = 0
        # a room whose list is too large for a socket message: not synced over the socket
        self._oversize_rooms: set[Optional[str]] = set()
        self._last_sync: Optional[RequestKey] = None
        self._dropping = False  # asked the shell to drop the connection; waiting for `lost`
        self._probe_due: Optional[float] = None  # a liveness probe's answer is due by then

    # ------------------------------------------------------------ state

    @property
    def status(self) -> ConnectionState:
        """The public connection state."""
        return self.state.public

    @property
    def connected(self) -> bool:
        return self.state is State.CONNECTED

    @property
    def room(self) -> Optional[str]:
        """The room own presence is (to be) in, if any."""
        own = self.own_room
        return own[0] if own else None

    def _go(self, event: str) -> State:
        """Move along the transition table; an unknown transition is a bug."""
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise NoLagError(f"{event} while {self.state.value}") from None
        return self.state

    def can(self, event: str) -> bool:
        """True if `event` is a valid transition from the current state."""
        return (self.state, event) in TRANSITIONS

    # ------------------------------------------------------------ connection lifecycle

    def begin(self, event: str) -> bytes:
        """Start connect() ("connect") or a reconnect attempt ("retry"); the auth frame to send.

        Raises NoLagError if that is not possible in the current state.
        """
        self._go(event)
        return protocol.encode_auth(
            self._token, self.options.protocol_version, reconnect=event == "retry"
        )

    def opened(self, auth: protocol.AuthOk, now: float, *, silent: bool = False) -> Effects:
        """A connection authenticated: resync the cache, restore lobbies, flush own presence.

        `silent` swaps connections without lifecycle events (clear_presence's reopen).
        """
        fx = Effects()
        was = self.state
        if not silent:
            self._go("authenticated")
        self.actor_id = auth.actor_token_id
        self.project_id = auth.project_id
        self.actor_type = auth.actor_type
        self._fail_pending(ConnectionClosedError("the connection was replaced"), fx)
        self._socket_room = None
        self._room_confirmed = False
        self._stale_room_leaves = 0
        self._sent_room = self._sent_project = None
        self._quiet.clear()
        self._absorb = None
        self._resync_due.clear()
        self._bucket = self._make_bucket(auth, now)
        self._last_rx = self._last_heartbeat = now
        self._connected_at = now
        self._dropping = False
        self._probe_due = None
        if self.options.sync_on_join and None not in self._oversize_rooms:
            self._sync(None, fx)
        keep = self.own_room[0] if self.own_room else None
        for stale in [r for r in self.store.rooms() if r is not None and r != keep]:
            self._emit(self.store.drop_room(stale), fx)
        for state in self.lobbies.subscribed():
            self._resubscribe(state, fx)
        self._lobby_refresh_due = self._next_lobby_refresh(now)
        if not silent:
            if was is State.REOPENING:
                self.stats.reconnects += 1
                fx.events.append(Lifecycle("reconnect"))
            else:
                fx.events.append(Lifecycle("connect"))
        self._flush(now, fx)
        return fx

    def reopened(self, now: float) -> Effects:
        """Before a silent swap: the old connection's room and project presence are gone."""
        fx = Effects()
        self._fail_pending(ConnectionClosedError("the connection was reopened"), fx)
        self._emit(self.store.drop_room(self._socket_room), fx)
        if self.own_project is None:
            self._emit(self.store.drop_room(None), fx)
        return fx

    def open_failed(self, error: BaseException, now: float) -> Effects:
        """connect() or a reconnect attempt failed before the session was authenticated.

        From connect() the caller raises `error`. A reconnect continues with backoff,
        unless the token was refused or the attempts ran out: then the session ends.
        """
        fx = Effects()
        if self.state is State.CONNECTING:
            self._go("failed")
            return fx
        if self.state is not State.REOPENING:
            return fx
        if isinstance(error, AuthenticationError):
            self._end(fx, "ended", error, report=True)
            return fx
        log.info("reconnect attempt %d failed: %s", self._attempt, error)
        self._go("failed")
        self._schedule_reconnect(fx)
        return fx

    def lost(self, error: ConnectionClosedError, now: float) -> Effects:
        """The connection ended without disconnect(): report it, reconnect or end."""
        fx = Effects()
        if self.state is not State.CONNECTED:
            return fx
        self._dropping = False
        self._fail_pending(error, fx)
        if error.code == _TOO_BIG and self._last_sync is not None:
            self._oversized(self._last_sync, fx)
        fx.events.append(Lifecycle("disconnect", (str(error) or "connection lost",)))
        up_for = now - self._connected_at if self._connected_at is not None else 0.0
        self._connected_at = None
        if up_for >= STABLE_AFTER:
            self._attempt = 0
        if not self.options.reconnect:
            self._end(fx, "ended", error)
            return fx
        self._go("lost")
        self._schedule_reconnect(fx)
        return fx

    def retry(self) -> bytes:
        """The backoff delay passed: start the next attempt; the auth frame to send."""
        return self.begin("retry")

    def disconnect(self, now: float) -> Effects:
        """disconnect(): the last own presence goes out first (past the rate budget, so the
        peers see the final value), then the session ends without events for the cache.

        Own presence is forgotten, so that a later connect() starts afresh.
        """
        fx = Effects()
        if self.state is State.CONNECTED:
            self._flush(now, fx, final=True)
        was = self.state
        self._end(fx, "disconnect", ConnectionClosedError("the client disconnected"), silent=True)
        self.own_room = self.own_project = None
        if was is not State.DISCONNECTED:
            fx.events.append(Lifecycle("disconnect", ("client disconnected",)))
        return fx

    def _end(
        self,
        fx: Effects,
        event: str,
        error: BaseException,
        *,
        silent: bool = False,
        report: bool = False,
    ) -> None:
        """The one end of a session, whichever way it ends: requests fail with `error`
        (also reported as an `error` event when `report`), the caches empty.

        Unless `silent` (disconnect()), everyone the caches held leaves with a
        presence:leave event, so nobody is shown online after the session is over.
        """
        self._go(event)
        self._fail_pending(error, fx)
        events = self.store.reset()
        for state in self.lobbies.subscribed():
            lobby_leaves = state.store.reset()
            if not silent:
                fx.events.extend(LobbyEvent(state.slug, e) for e in lobby_leaves)
        self.lobbies.forget_all()
        if not silent:
            self._emit(events, fx)
        self._sent_room = self._sent_project = None
        self._socket_room = None
        self._stale_room_leaves = 0
        self._flush_due = None
        self._resync_due.clear()
        self._lobby_refresh_due = None
        self._connected_at = None
        self._attempt = 0
        if report:
            fx.events.append(Lifecycle("error", (error,)))
        fx.ended = True

    def _schedule_reconnect(self, fx: Effects) -> None:
        opts = self.options
        self._attempt += 1
        if opts.reconnect_max_attempts is not None and self._attempt > opts.reconnect_max_attempts:
            give_up = ConnectionError(f"gave up reconnecting after {self._attempt - 1} attempts")
            self._end(fx, "ended", give_up, report=True)
            return
        cap = min(
            opts.reconnect_max_delay,
            opts.reconnect_initial_delay * opts.reconnect_factor ** (self._attempt - 1),
        )
        delay = self._rng.uniform(0, cap)  # full jitter
        log.debug("reconnect attempt %d in %.2fs (backoff cap %.2fs)", self._attempt, delay, cap)
        fx.events.append(Lifecycle("reconnecting", (self._attempt, delay)))
        fx.reconnect_in = delay

    def _make_bucket(self, auth: protocol.AuthOk, now: float) -> Optional[TokenBucket]:
        """The presence send budget: our option, under the server's rate when it says one."""
        rate = self.options.max_presence_rate
        server = auth.rate_limit
        if server is not None and server > 0:
            # leave room for list requests and lobby frames, which count on the server too
            rate = min(rate, server * 0.8) if rate is not None else server * 0.8
        if rate is None:
            return None
        return TokenBucket(rate, max(1.0, rate / 2), now)

    @property
    def bucket(self) -> Optional[TokenBucket]:
        """This connection's presence send budget (None: unlimited)."""
        return self._bucket

    # ------------------------------------------------------------ time

    def next_deadline(self) -> Optional[float]:
        """When `tick` has work next (the shell's monotonic clock), None when idle."""
        if self.state is not State.CONNECTED or self._dropping:
            return None
        interval = self.options.heartbeat_interval
        times = [self._last_heartbeat + interval]
        # while a probe is out, its answer's deadline replaces the (passed) silence one
        times.append(self._last_rx + 2 * interval if self._probe_due is None else self._probe_due)
        if self._flush_due is not None:
            times.append(self._flush_due)
        times.extend(self._resync_due.values())
        if self._lobby_refresh_due is not None:
            times.append(self._lobby_refresh_due)
        return min(times)

    def _probe_grace(self) -> float:
        """Seconds a liveness probe may go unanswered: min(5, heartbeat_interval / 2)."""
        return min(5.0, self.options.heartbeat_interval / 2)

    def tick(self, now: float) -> Effects:
        """Timed work: liveness, heartbeat, coalesced flushes, delayed resyncs, lobby keep-alive.

        Liveness: after two heartbeat intervals without a byte from the server, a heartbeat
        goes out as a probe (the server echoes it at once, PROTOCOL "Heartbeat"); if the
        probe stays unanswered for `_probe_grace`, the connection is dropped. A dead
        server is thus detected within 2 x interval + min(5, interval / 2) of its last
        frame, and a process or loop that was itself stalled is never mistaken for one:
        its probe is sent after the stall.
        """
        fx = Effects()
        if self.state is not State.CONNECTED:
            return fx
        if now - self._last_rx >= 2 * self.options.heartbeat_interval:
            if self._probe_due is None:
                self._probe_due = now + self._probe_grace()
                self._last_heartbeat = now
                fx.frames.append(protocol.HEARTBEAT)
                return fx
            if now >= self._probe_due:
                silent_for = now - self._last_rx
                log.warning("no frame from the server for %.1fs; reconnecting", silent_for)
                fx.drop = f"no frame from the server for {silent_for:.1f}s"
                self._dropping = True
                return fx
        if now - self._last_heartbeat >= self.options.heartbeat_interval:
            self._last_heartbeat = now
            fx.frames.append(protocol.HEARTBEAT)
        if self._flush_due is not None and now >= self._flush_due:
            self._flush_due = None
            self._flush(now, fx)
        for room, due in list(self._resync_due.items()):
            if now >= due:
                del self._resync_due[room]
                self.refresh(room, fx)
        if self._lobby_refresh_due is not None and now >= self._lobby_refresh_due:
            for state in self.lobbies.subscribed():
                self._resubscribe(state, fx)
            self._lobby_refresh_due = self._next_lobby_refresh(now)
        return fx

    def _next_lobby_refresh(self, now: float) -> Optional[float]:
        every = self.options.lobby_refresh_interval
        return None if every is None else now + every

    def received(self, now: float) -> None:
        """Bytes arrived (control frames too): the peer is alive."""
        self._last_rx = now
        self._dropping = False
        self._probe_due = None

    # ------------------------------------------------------------ own presence

    def set_presence(self, plain: dict[str, Any], room: Optional[str], now: float) -> Effects:
        """Want `plain` shown in `room` (None: project level); sent when connected."""
        if room is None:
            self.own_project = plain
        else:
            self.own_room = (room, plain)
        fx = Effects()
        self._flush(now, fx)
        return fx

    def clear_presence(self, room: Optional[str]) -> bool:
        """Withdraw own presence (in `room`, or everywhere); True if the connection must be
        reopened without it (the protocol has no leave frame; the broker then sends the
        leave)."""
        announced = False
        if room is None or room == self.room:
            announced |= self._sent_room is not None
            self.own_room = None
        if room is None:
            announced |= self._sent_project is not None
            self.own_project = None
        return announced and self.connected

    def own_presence(self, room: Optional[str]) -> Optional[dict[str, Any]]:
        """The presence wanted in `room` (project level when None), or None."""
        if room is None:
            return self.own_project
        own = self.own_room
        return own[1] if own is not None and own[0] == room else None

    def _flush(self, now: float, fx: Effects, final: bool = False) -> None:
        """Send the own presence that differs from what this connection sent, within budget
        (`final`: past the budget, the last chance before disconnect())."""
        if self.state is not State.CONNECTED:
            return
        for slot in ("project", "room"):
            want: Any = self.own_project if slot == "project" else self.own_room
            sent: Any = self._sent_project if slot == "project" else self._sent_room
            if want is None or want == sent:
                continue
            bucket = self._bucket
            if not final and bucket is not None and not bucket.take(now):
                self.stats.presence_coalesced += 1
                if self._flush_due is None:
                    self._flush_due = now + bucket.wait_time(now)
                break
            self.stats.presence_sent += 1
            if slot == "project":
                self._sent_project = want
                fx.frames.append(protocol.encode_presence(want, None))
                continue
            room, data = want
            self._sent_room = want
            fx.frames.append(protocol.encode_presence(data, room))
            if not final and self._enter_room(room, now, fx):
                self._sync(room, fx)

    def _enter_room(self, room: str, now: float, fx: Effects) -> bool:
        """Bookkeeping when our presence goes to `room`; True: sync its list."""
        if room == self._socket_room:
            return False
        if self._socket_room is not None:
            self._emit(self.store.drop_room(self._socket_room), fx)
            if self._room_confirmed:
                self._stale_room_leaves += 1
        log.debug("own presence moves to room %r (from %r)", room, self._socket_room)
        self._socket_room = room
        self._room_confirmed = False
        if not self.options.sync_on_join or room in self._oversize_rooms:
            return False
        if self._bucket is not None:
            self._bucket.spend(now)
        return True

    def _sync(self, room: Optional[str], fx: Effects) -> None:
        """Ask for `room`'s list to reconcile the cache from (no caller waits for it)."""
        self._pending.append(_Pending(("room", room), self.store.mark(), None))
        self._last_sync = ("room", room)
        fx.frames.append(protocol.encode_get_presence(room))

    def _oversized(self, key: RequestKey, fx: Effects) -> None:
        """A list reply was over the receive cap: stop asking for it over the socket."""
        room = key[1]
        if key[0] != "room" or room in self._oversize_rooms:
            return
        self._oversize_rooms.add(room)
        where = f"room {room!r}" if room is not None else "the project"
        error = NoLagError(
            f"the presence list of {where} is larger than max_message_bytes "
            f"({self.options.max_message_bytes} bytes): the cache of {where} is no longer "
            "synced over the socket (raise max_message_bytes, or use fetch_presence())"
        )
        log.warning("%s", error)
        fx.events.append(Lifecycle("error", (error,)))

    # ------------------------------------------------------------ requests

    def request(self, key: RequestKey, frame: bytes, fx: Effects) -> int:
        """Queue a request whose reply a caller waits for; its id (for `replies`, `abandon`).

        Raises NotConnectedError when there is no connection to send it on.
        """
        if self.state is not State.CONNECTED:
            raise NotConnectedError(f"{_what(key)} needs a connection: call connect() first")
        rid = next(self._rids)
        log.debug("request %d: %s", rid, _what(key))
        self._pending.append(_Pending(key, self.store.mark(), rid))
        fx.frames.append(frame)
        return rid

    def fetch(self, room: Optional[str], fx: Effects) -> int:
        """A getPresence for a caller (the socket path of fetch_presence)."""
        return self.request(("room", room), protocol.encode_get_presence(room), fx)

    def abandon(self, rid: int) -> None:
        """The caller of request `rid` gave up: its late reply is consumed, never reused."""
        log.debug("request %d abandoned by its caller; a late reply will be dropped", rid)
        for pending in self._pending:
            if pending.rid == rid:
                pending.abandoned = True
                return

    def refresh(self, room: Optional[str], fx: Effects) -> None:
        """Reconcile the cache of `room` from an ordered socket list (after a REST fetch)."""
        if self.state is not State.CONNECTED:
            return
        if room is not None and room != self._socket_room:
            return
        self._sync(room, fx)

    def lobby_subscribe(self, slug: str, fx: Effects) -> int:
        """Subscribe to a lobby (events are kept from now on); the request id."""
        state = self.lobbies.get(slug)
        rid = self.request(("lobby", slug), protocol.encode_lobby_subscribe(slug), fx)
        state.subscribed = True
        return rid

    def lobby_fetch(self, slug: str, fx: Effects) -> int:
        """A getLobbyPresence for a caller; the request id."""
        return self.request(("lobby", slug), protocol.encode_get_lobby_presence(slug), fx)

    def lobby_unsubscribe(self, slug: str, fx: Effects) -> Optional[int]:
        """Stop watching (the cache drops at once); the request id, None if nothing to send."""
        state = self.lobbies.get(slug)
        was = state.subscribed
        state.forget()
        if not was or self.state is not State.CONNECTED:
            return None
        return self.request(("unsubscribe", slug), protocol.encode_lobby_unsubscribe(slug), fx)

    def _resubscribe(self, state: LobbyState, fx: Effects) -> None:
        """Restore (or keep alive) a lobby subscription, and reconcile from a fresh snapshot."""
        slug = state.slug
        self._pending.append(_Pending(("lobby", slug), 0, None))
        fx.frames.append(protocol.encode_lobby_subscribe(slug))
        self._pending.append(_Pending(("lobby", slug), 0, None))
        fx.frames.append(protocol.encode_get_lobby_presence(slug))

    def _pop(self, key: RequestKey) -> Optional[_Pending]:
        """The oldest request of `key`, taken off the queue (replies come in order)."""
        for pending in self._pending:
            if pending.key == key:
                self._pending.remove(pending)
                return pending
        return None

    def _fail_pending(self, error: BaseException, fx: Effects) -> None:
        while self._pending:
            pending = self._pending.popleft()
            if pending.rid is not None and not pending.abandoned:
                fx.replies.append((pending.rid, None, error))

    @staticmethod
    def _answer(pending: _Pending, result: Any, fx: Effects) -> None:
        if pending.rid is not None and not pending.abandoned:
            fx.replies.append((pending.rid, result, None))

    # ------------------------------------------------------------ frames in

    def receive(self, payloads: list[bytes], now: float, listening: bool) -> Effects:
        """Decode and apply frames in order (the reader's hot path; never user code).

        `listening`: a presence handler is registered, so the cache's events are queued
        for the dispatcher (a cache-only client queues none).
        """
        fx = Effects()
        self._last_rx = now
        self._probe_due = None
        if not payloads:
            return fx
        stats = self.stats
        stats.frames_received += len(payloads)
        decode = protocol.decode_frames
        presence_event = protocol.PresenceEvent
        apply_event = self._apply_event
        events = fx.events
        emitted = 0
        absorbing = self._absorb is not None
        for start in range(0, len(payloads), _DECODE_SLICE):
            for frame in decode(payloads[start : start + _DECODE_SLICE]):
                if type(frame) is presence_event:
                    if absorbing:  # the frame after a refusal was not its empty list
                        self._absorb = None
                        absorbing = False
                    out = apply_event(frame, now)
                    if out:
                        emitted += len(out)
                        if listening:
                            events += out
                else:
                    self._apply(frame, now, fx, listening)
                    absorbing = self._absorb is not None
        stats.events_emitted += emitted
        unsure = self.store.take_unsure()
        if unsure:
            self._confirm_later(unsure, now)
        return fx

    def _confirm_later(self, rooms: set[Optional[str]], now: float) -> None:
        """Ask for one more list of each room once the late-broadcast window is over: an
        event in it was taken for a listed change's late broadcast, a guess that a new
        socket with the same data would fool (Kraken's events carry no connection id).
        One pending confirmation per room; it is not postponed by later guesses."""
        for room in rooms:
            if room == self._socket_room and room not in self._resync_due:
                log.debug("room %r: confirming a late-broadcast guess with a list", room)
                self._resync_due[room] = now + self.store.join_grace

    def _apply(
        self,
        frame: Union[protocol.ServerFrame, protocol.ProtocolError],
        now: float,
        fx: Effects,
        listening: bool,
    ) -> None:
        """Route one decoded frame that is not a plain presence event."""
        absorb, self._absorb = self._absorb, None
        if isinstance(frame, protocol.PresenceList):
            if absorb == ("room", frame.room) and not frame.entries:
                return  # the empty list that completes a refusal already answered
            self._apply_list(frame, now, fx, listening)
        elif isinstance(frame, protocol.LobbyPresence):
            for state in self.lobbies.route(frame.lobby_id, frame.room):
                out = state.store.apply_event(frame)
                self.stats.events_emitted += len(out)
                fx.events.extend(LobbyEvent(state.slug, e) for e in out)
        elif isinstance(frame, protocol.LobbySnapshot):
            self._apply_lobby_snapshot(frame, fx)
        elif isinstance(frame, protocol.LobbyUnsubscribed):
            pending = self._pop(("unsubscribe", frame.lobby_id))
            if pending is not None:
                self._answer(pending, frame, fx)
        elif isinstance(frame, protocol.ErrorFrame):
            self._apply_error(frame, now, fx)
        elif isinstance(frame, protocol.ProtocolError):
            self.stats.protocol_errors += 1
            log.debug("ignored a bad frame: %s", frame.reason)
        elif isinstance(frame, protocol.PresenceEvent):  # pragma: no cover - hot path above
            self._emit(self._apply_event(frame, now), fx)

    def _apply_event(self, event: protocol.PresenceEvent, now: float) -> Sequence[PublicEvent]:
        """Apply a presence event to the cache; the public events."""
        kind, actor, _, room, room_given, _, _, _ = event  # one unpack: the hot path
        if not room_given:  # the real broker: the event belongs to our socket's room
            if self._stale_room_leaves:
                # still events of a room we switched away from, until our own leave from it
                if kind == "leave" and actor == self.actor_id:
                    self._stale_room_leaves -= 1
                return ()
            room = self._socket_room
        if room is not None:
            if room != self._socket_room:
                return ()  # a room we are no longer in; its cache was dropped
            if actor == self.actor_id and kind != "leave":
                self._room_confirmed = True
        return self.store.apply_event(event, room, now)

    def _apply_list(
        self, reply: protocol.PresenceList, now: float, fx: Effects, listening: bool
    ) -> None:
        pending = self._pop(("room", reply.room))
        if pending is None:
            return  # nobody asked (or the request was failed by a reconnect)
        self._answer(pending, reply, fx)
        if reply.room is None or reply.room == self._socket_room:
            events = self.store.apply_list(reply, reply.room, pending.mark, now)
            self._emit(events, fx)

    def _apply_lobby_snapshot(self, snap: protocol.LobbySnapshot, fx: Effects) -> None:
        pending = self._pop(("lobby", snap.lobby_id))
        state = self.lobbies.lobbies.get(snap.lobby_id)
        if state is not None and state.subscribed:
            state.known_rooms.update(snap.rooms)
            out = state.store.apply_snapshot(snap)
            self.stats.events_emitted += len(out)
            fx.events.extend(LobbyEvent(state.slug, e) for e in out)
        if pending is not None:
            self._answer(pending, snap, fx)

    def _apply_error(self, frame: protocol.ErrorFrame, now: float, fx: Effects) -> None:
        self.stats.server_errors += 1
        error = server_exception(frame)
        target: Optional[RequestKey] = None
        if frame.lobby_id is not None:
            target = ("lobby", frame.lobby_id)
        elif frame.room is not None:
            target = ("room", frame.room)
        if frame.error in _REFUSALS and target is not None and target[0] == "room":
            self._absorb = target  # the local broker follows a refused list with an empty one
        if target is not None and self._quiet[target] > 0:
            # the reply to our own list request for a room whose refusal we already reported
            self._quiet[target] -= 1
            self._pop(target)
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
            log.warning(
                "the server refused this client's presence in room %r: %s",
                frame.room,
                error,
            )
        else:
            if frame.error == "rate_limit_exceeded" and frame.lobby_id is None:
                self._throttled(now)
            pending = self._pop(target) if target is not None else None
            if pending is not None and pending.rid is not None:
                if not pending.abandoned:
                    fx.replies.append((pending.rid, None, error))
            elif pending is not None and pending.key[0] == "room":
                self._resync_due[pending.key[1]] = now + 1.0  # refused over the rate: later
            elif pending is not None and pending.key[0] == "lobby" and frame.error in _REFUSALS:
                state = self.lobbies.lobbies.get(pending.key[1] or "")
                if state is not None:
                    state.forget()  # a re-subscription refused after a reconnect
            log.info("server error: %s", error)
        fx.events.append(Lifecycle("error", (error,)))

    def _refuse_room(self, room: str) -> None:
        """The server refused our presence in `room`: stop showing and re-sending it."""
        if self.own_room is not None and self.own_room[0] == room:
            self.own_room = None
        self._sent_room = None
        self._socket_room = None
        if any(p.key == ("room", room) and p.rid is None for p in self._pending):
            self._quiet[("room", room)] += 1  # its list request will be refused too

    def _throttled(self, now: float) -> None:
        """The server dropped a frame over its rate: halve our budget, resend own presence."""
        self._sent_room = self._sent_project = None
        rate = self._bucket.rate / 2 if self._bucket is not None else 5.0
        self._bucket = TokenBucket(max(0.5, rate), 1.0, now)
        self.stats.presence_coalesced += 1
        if self._flush_due is None:
            self._flush_due = now + 1.0 / self._bucket.rate

    # ------------------------------------------------------------ helpers

    def _emit(self, events: Sequence[PublicEvent], fx: Effects) -> None:
        """Count the cache's events and queue them for the dispatcher."""
        if events:
            self.stats.events_emitted += len(events)
            fx.events.extend(events)

    def snapshot(self, room: Optional[str]) -> tuple[ActorPresence, ...]:
        """The cache, all rooms or one (immutable)."""
        return self.store.snapshot(room) if room is not None else self.store.snapshot()


def _what(key: RequestKey) -> str:
    kind, name = key
    if kind == "room":
        return f"the presence list of room {name!r}" if name else "the presence list"
    if kind == "lobby":
        return f"the request for lobby {name!r}"
    return f"the unsubscription from lobby {name!r}"
