"""The I/O shell of one client: it drives a pure `Session` with real sockets, threads and time.

`Driver` feeds the session, under the client's lock, what happened -- frames read by the
process's loop, a lost connection, timer ticks -- and carries out the `Effects` it
returns without ever blocking: frames go to the connection's outbox in the loop, events
to the dispatcher, answers to the callers waiting on them, a reconnect to a
``nolag-connect-<n>`` thread of its own. Nothing here runs user code under the lock, and
nothing the loop thread calls waits on a peer. The facade (`nolag.client.NoLag`) owns
one and keeps the public API; this module keeps the wiring.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Optional, TypeVar

from nolag import protocol
from nolag._io.loop import Channel, TimerHandle, shared_loop
from nolag._io.transport import open_websocket
from nolag.errors import (
    AuthenticationError,
    ConnectionClosedError,
    ConnectionError,
    NoLagError,
    PresenceTimeoutError,
)
from nolag.events import PRESENCE_EVENTS, Dispatcher, Lifecycle, Registry
from nolag.lobby import LobbyState
from nolag.models import NoLagOptions, check_timeout
from nolag.presence import PublicEvent
from nolag.session import Effects, Session

__all__ = ["Driver", "DriverLobbyPort", "release", "schedule"]

log = logging.getLogger("nolag")

T = TypeVar("T")


def schedule(delay: float, fn: Callable[[], None]) -> Callable[[], None]:
    """Run fn after `delay` seconds on the loop thread; returns its cancel function."""
    return shared_loop().call_later(delay, fn).cancel


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


def release(resources: _Resources, number: int) -> None:
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


def _tick(ref: weakref.ref[Driver]) -> None:
    """The loop's timer for one client (weakly held, so a dropped client can be collected)."""
    driver = ref()
    if driver is not None:
        driver._on_timer()


class Driver:
    """One client's session, run: its lock, its connection in the loop, its waiters.

    `events` and `room_events` are the client's and its room contexts' registries (read
    to know whether anyone listens to presence events).
    """

    def __init__(
        self,
        options: NoLagOptions,
        token: str,
        number: int,
        dispatcher: Dispatcher,
        events: Registry,
        room_events: dict[str, Registry],
    ) -> None:
        self.options = options
        self._token = token
        self.number = number
        self.dispatcher = dispatcher
        self._events = events
        self._room_events = room_events
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # notified when the cache changes
        self.session = Session(options, token)
        self.res = _Resources(dispatcher)
        self._opening: Optional[_Opening] = None
        self._replies: dict[int, _Reply] = {}
        self._timer_at: Optional[float] = None
        self.closing = threading.Event()
        self.disconnected = threading.Event()
        self.disconnected.set()
        self._connector: Optional[threading.Thread] = None

    def connect(self, deadline: float) -> None:
        """connect(): open and authenticate by `deadline`, or raise (nothing left open)."""
        with self.lock:
            if self.session.connected:
                return
            if not self.session.can("connect"):
                raise NoLagError(f"connect() while {self.session.status.value}")
            auth = self.session.begin("connect")
            self.closing.clear()
            self.disconnected.clear()
        self.dispatcher.start()
        try:
            opening = self._open(deadline, auth)
        except BaseException as exc:
            with self.lock:
                self.carry(self.session.open_failed(exc, time.monotonic()))
                self.disconnected.set()
            self.dispatcher.stop(max(0.1, deadline - time.monotonic()))
            shared_loop().join_if_idle(max(0.1, deadline - time.monotonic()))
            raise
        self._adopt(opening, silent=False)

    def disconnect(self, deadline: float) -> None:
        """disconnect(): the last presence goes out, the connection closes, threads end."""
        self.closing.set()
        with self.lock:
            channel = self.res.channel
            self.carry(self.session.disconnect(time.monotonic()))
            self.res.channel = None
            opening, self._opening = self._opening, None
            self.cancel_timer()
            for reply in self._replies.values():
                reply.resolve(None, ConnectionClosedError("the client disconnected"))
            self._replies.clear()
            self.changed.notify_all()
        if opening is not None and opening.channel is not None:
            opening.channel.abort("the client disconnected", report=False)
        if channel is not None:
            channel.close(max(0.0, deadline - time.monotonic()))
            channel.ended.wait(max(0.0, deadline - time.monotonic()))
        connector, self._connector = self._connector, None
        if connector is not None and connector is not threading.current_thread():
            connector.join(max(0.0, deadline - time.monotonic()))
        self.dispatcher.stop(max(0.1, deadline - time.monotonic()))
        shared_loop().join_if_idle(max(0.0, deadline - time.monotonic()))
        self.disconnected.set()

    # ------------------------------------------------------------ the loop's side

    def on_frames(self, channel: Channel, payloads: list[bytes], now: float) -> None:
        """Frames read from a connection (on the loop thread; never blocks, no user code)."""
        with self.changed:
            if channel is not self.res.channel:
                opening = self._opening
                if opening is not None and opening.channel is channel and payloads:
                    opening.feed(payloads)
                return
            session = self.session
            if not payloads:
                session.received(now)
                return
            version = session.store.version
            fx = session.receive(payloads, now, self.listening())
            self.carry(fx)
            if session.store.version != version:
                self.changed.notify_all()

    def on_lost(self, channel: Channel, error: ConnectionClosedError, now: float) -> None:
        """A connection ended (on the loop thread, which must not block)."""
        with self.changed:
            opening = self._opening
            if opening is not None and opening.channel is channel:
                opening.reply.resolve(None, error)
                return
            if channel is not self.res.channel or self.closing.is_set():
                return
            log.debug("client #%d: connection lost: %s", self.number, error)
            self.res.channel = None
            self.cancel_timer()
            self.carry(self.session.lost(error, now))
            self.changed.notify_all()

    def _on_timer(self) -> None:
        with self.lock:
            self._timer_at = None
            self.res.timer = None
            channel = self.res.channel
            if channel is None:
                return
            now = time.monotonic()
            fx = self.session.tick(now)
            if fx.drop is not None and channel.transport.input_pending():
                # bytes wait in the socket: the server is alive, the loop was only behind
                # (a starved process, or this client's lock held for a while)
                self.session.received(now)
                fx = self.session.tick(now)
            self.carry(fx)

    def carry(self, fx: Effects) -> None:
        """Do what the session asked, without blocking (lock held, so order is kept)."""
        session = self.session
        channel = self.res.channel
        if fx.frames and channel is not None:
            session.stats.frames_sent += len(fx.frames)
            channel.send(fx.frames)
        events = fx.events
        if events and not self.listening():  # a cache-only client: only the rare kinds
            events = [item for item in events if type(item) is not PublicEvent]
        if events:
            self.dispatcher.emit_many(events)
        for rid, result, error in fx.replies:
            reply = self._replies.pop(rid, None)
            if reply is not None:
                reply.resolve(result, error)
        if fx.drop is not None and channel is not None:
            log.debug("client #%d: dropping the connection: %s", self.number, fx.drop)
            channel.abort(fx.drop)
        if fx.ended:
            self.cancel_timer()
            if not self.closing.is_set():  # disconnect() sets it once its threads are gone
                self.disconnected.set()
            self.changed.notify_all()
        if fx.reconnect_in is not None and threading.current_thread() is not self._connector:
            self._connector = threading.Thread(
                target=self._reconnect,
                args=(fx.reconnect_in,),
                name=f"nolag-connect-{self.number}",
                daemon=True,
            )
            self._connector.start()
        self._arm_timer()

    def _arm_timer(self) -> None:
        """Keep one loop timer per client at the session's next deadline (lock held).

        A deadline that moved later (new bytes pushed liveness back) keeps the earlier
        timer; it fires, finds nothing due and re-arms: no timer churn per batch.
        """
        when = self.session.next_deadline()
        if when is None:
            self.cancel_timer()
            return
        if self._timer_at is not None and self._timer_at <= when:
            return
        self.cancel_timer()
        self._timer_at = when
        self.res.timer = shared_loop().call_at(when, _tick, weakref.ref(self))

    def cancel_timer(self) -> None:
        timer, self.res.timer = self.res.timer, None
        self._timer_at = None
        if timer is not None:
            timer.cancel()

    def listening(self) -> bool:
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
        log.debug("client #%d: opening %s (%.1fs left)", self.number, opts.url, remaining)
        transport = open_websocket(opts.url, remaining, schedule, opts.max_message_bytes)
        log.debug("client #%d: WebSocket open; authenticating", self.number)
        opening = _Opening()
        with self.lock:
            self._opening = opening
        channel = shared_loop().add(transport, self, write_timeout=opts.send_timeout)
        opening.channel = channel
        channel.send([auth])
        error: Optional[BaseException]
        if not opening.reply.wait(deadline - time.monotonic()):
            error = ConnectionError(f"no auth reply from {opts.url} within {remaining:.1f}s")
        else:
            error = opening.reply.error
        if error is not None or self.closing.is_set():
            with self.lock:
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
        with self.changed:
            if self._opening is opening:
                self._opening = None
            if self.closing.is_set():
                opening.channel.close(1.0)  # disconnect() won the race
                return
            now = time.monotonic()
            if silent:
                old = self.res.channel
                self.carry(self.session.reopened(now))
            self.res.channel = opening.channel
            log.debug(
                "client #%d: authenticated as %r (project %r, protocol %d)%s",
                self.number,
                auth.actor_token_id,
                auth.project_id,
                auth.protocol_version,
                "; connection swapped" if silent else "",
            )
            self.carry(self.session.opened(auth, now, silent=silent))
            if opening.leftover:
                self.carry(self.session.receive(opening.leftover, now, self.listening()))
            self.changed.notify_all()
        if old is not None:
            old.close(1.0)

    def _reconnect(self, delay: float) -> None:
        """After an unexpected loss: wait, try, back off, until it works or the session ends."""
        while not self.closing.wait(delay):
            with self.lock:
                if not self.session.can("retry"):
                    return
                auth = self.session.retry()
            try:
                opening = self._open(time.monotonic() + self.options.connect_timeout, auth)
            except (NoLagError, OSError) as exc:
                with self.lock:
                    fx = self.session.open_failed(exc, time.monotonic())
                    self.carry(fx)
                if fx.reconnect_in is None:
                    return
                delay = fx.reconnect_in
                continue
            self._adopt(opening, silent=False)
            return

    def reopen(self) -> None:
        """Replace the connection with a fresh one (the broker sends our leaves for the old)."""
        with self.lock:
            auth = protocol.encode_auth(self._token, self.options.protocol_version, True)
            old = self.res.channel
        try:
            opening = self._open(time.monotonic() + self.options.connect_timeout, auth)
        except AuthenticationError as err:
            with self.lock:
                self.dispatcher.emit_many([Lifecycle("error", (err,))])
            if old is not None:
                old.abort("the token was refused on a reopen")  # the loss ends the session
            return
        except (NoLagError, OSError) as err:
            log.info("could not reopen the connection: %s", err)
            if old is not None:
                old.abort(f"could not reopen: {err}")  # reconnects without the presence
            return
        self._adopt(opening, silent=True)

    def request(self, send: Callable[[Effects], int], deadline: float, timeout: float) -> Any:
        """Send one request on the socket and block for its ordered reply, by `deadline`."""
        reply = _Reply()
        with self.lock:
            fx = Effects()
            rid = send(fx)
            self._replies[rid] = reply
            self.carry(fx)
        if not reply.wait(deadline - time.monotonic()):
            with self.lock:
                self._replies.pop(rid, None)
                self.session.abandon(rid)
            raise PresenceTimeoutError(f"no answer from the server within {timeout:.1f}s")
        if reply.error is not None:
            raise reply.error
        return reply.result


class DriverLobbyPort:
    """A client's lobby calls, as its `Lobby` contexts use them (nolag.lobby.LobbyPort)."""

    __slots__ = ("_driver",)

    def __init__(self, driver: Driver) -> None:
        self._driver = driver

    def lobby_subscribe(self, slug: str, timeout: Optional[float]) -> None:
        driver = self._driver
        session = driver.session
        timeout = check_timeout(timeout, driver.options.request_timeout, "timeout")
        deadline = time.monotonic() + timeout  # one deadline for both round trips
        try:
            driver.request(lambda fx: session.lobby_subscribe(slug, fx), deadline, timeout)
            driver.request(lambda fx: session.lobby_fetch(slug, fx), deadline, timeout)
        except BaseException:
            with driver.lock:
                session.lobbies.get(slug).forget()
            raise

    def lobby_fetch(self, slug: str, timeout: Optional[float]) -> protocol.LobbySnapshot:
        driver = self._driver
        session = driver.session
        timeout = check_timeout(timeout, driver.options.request_timeout, "timeout")
        deadline = time.monotonic() + timeout
        reply = driver.request(lambda fx: session.lobby_fetch(slug, fx), deadline, timeout)
        assert isinstance(reply, protocol.LobbySnapshot)
        return reply

    def lobby_unsubscribe(self, slug: str, timeout: Optional[float]) -> None:
        client = self._driver
        session = client.session
        timeout = check_timeout(timeout, client.options.request_timeout, "timeout")
        deadline = time.monotonic() + timeout
        with client.lock:
            fx = Effects()
            rid = session.lobby_unsubscribe(slug, fx)
            if rid is None:
                client.carry(fx)
                return
            reply = _Reply()
            client._replies[rid] = reply
            client.carry(fx)
        # nothing depends on the server's confirmation, so a late one is no error
        if not reply.wait(deadline - time.monotonic()):
            with client.lock:
                client._replies.pop(rid, None)
                session.abandon(rid)

    def lobby_read(self, slug: str, read: Callable[[LobbyState], T]) -> T:
        client = self._driver
        with client.lock:
            return read(client.session.lobbies.get(slug))
