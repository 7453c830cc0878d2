"""One loop thread per process: every client's socket reads and writes, and every timer.

A thread per connection is fine for one client, but a process holding hundreds (a load
generator, a fan-in service, a big test suite) then has hundreds of runnable threads
contending for the GIL; measured here, 500 clients converged a join storm in 13 s and
1,000 never did. So every connection is a `Channel` of the process's `Loop`, whose one
thread (``nolag-loop-<k>``) waits on every socket at once.

The loop never blocks on a peer: sockets are non-blocking, a channel's frames wait in
its outbox until the socket is writable, and a peer that stops reading is cut once its
outbox has made no progress for `write_timeout` seconds or holds more than `max_outbox`
bytes. Any thread may queue frames (`send`), close or abort a channel, or set a timer:
it only enqueues and wakes the loop. The loop runs SDK code only (decoding, the cache,
timers' bookkeeping), never user callbacks, and no lock it takes is held by code that
waits on a peer.

The thread starts with the first channel or timer and ends once none is left, so a
process without connections runs no nolag thread. After a fork the child starts with
an empty loop of its own and never touches the parent's selector.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
import weakref
from typing import Any, Callable, Optional, Protocol

from nolag._io.perprocess import PerProcess
from nolag._io.transport import Transport
from nolag.errors import ConnectionClosedError

__all__ = ["Channel", "Loop", "Sink", "TimerHandle", "shared_loop"]

log = logging.getLogger("nolag")

#: how long the loop waits when it has no timer due, before re-checking
_IDLE_WAIT = 1.0
#: seconds at most to wait for the server's close frame after ours (Kraken answers in
#: about a millisecond in every transcript); the socket closes when it comes, or then
CLOSE_REPLY_WAIT = 2.0
#: bytes joined into one socket write
_WRITE_CHUNK = 256 * 1024


class Sink(Protocol):
    """A channel's owner; both calls run on the loop thread and must not block."""

    def on_frames(self, channel: Channel, payloads: list[bytes], now: float) -> None:
        """Bytes arrived (`payloads`: the complete data messages, maybe none)."""

    def on_lost(self, channel: Channel, error: ConnectionClosedError, now: float) -> None:
        """The connection ended without the owner closing it."""


class TimerHandle:
    """A call scheduled on the loop; `cancel()` stops it (idempotent, any thread)."""

    __slots__ = ("args", "cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Channel:
    """One connection in the loop: its transport, its owner and its bounded outbox."""

    def __init__(
        self,
        loop: Loop,
        transport: Transport,
        owner: Sink,
        write_timeout: float,
        max_outbox: int,
    ) -> None:
        self.loop = loop
        self.transport = transport
        self._owner = weakref.ref(owner)
        self.write_timeout = write_timeout
        self.max_outbox = max_outbox
        self._lock = threading.Lock()
        self._out: collections.deque[bytes] = collections.deque()
        self._out_bytes = 0
        self._wbuf: Optional[memoryview] = None
        self._closing_at: Optional[float] = None  # close frame queued: end once drained
        #: our close frame is written: wait for the server's (until then), reading nothing
        self._reply_by: Optional[float] = None
        self._stalled_since: Optional[float] = None
        self._writing = False  # EVENT_WRITE is registered
        self.ended = threading.Event()  # no longer in the loop, socket closed
        self.error: Optional[ConnectionClosedError] = None
        self.registered = False

    def owner(self) -> Optional[Sink]:
        """The owner, unless it was garbage-collected."""
        return self._owner()

    @property
    def pending_output(self) -> int:
        """Bytes queued and not yet written."""
        return self._out_bytes + (len(self._wbuf) if self._wbuf is not None else 0)

    def send(self, payloads: list[bytes]) -> bool:
        """Queue binary messages (any thread); False if the channel is closing or gone."""
        if not payloads:
            return True
        frame = self.transport.frame
        framed = [frame(p) for p in payloads]
        with self._lock:
            if self._closing_at is not None or self.ended.is_set():
                return False
            self._out.extend(framed)
            self._out_bytes += sum(len(f) for f in framed)
        self.loop._want_write(self)
        return True

    def close(self, timeout: float, code: int = 1000) -> None:
        """Write what is queued, then a close frame, then end (any thread; no wait).

        Past `timeout` seconds the connection is cut anyway. `ended` is set either way.
        """
        with self._lock:
            if self._closing_at is not None or self.ended.is_set():
                return
            close = self.transport.close_frame(code)
            self._out.append(close)
            self._out_bytes += len(close)
            self._closing_at = time.monotonic() + timeout
        self.loop._want_write(self)

    def abort(self, reason: str, report: bool = True) -> None:
        """Cut the connection now (any thread); `report`: tell the owner through on_lost."""
        self.loop._call_soon(self.loop._end, self, ConnectionClosedError(reason), report)

    # ---------------------------------------------------------------- loop thread only

    def _next_chunk(self) -> Optional[memoryview]:
        control = getattr(self.transport, "control", None)
        parts: list[bytes] = []
        size = 0
        if control:
            parts.extend(control)
            size += sum(len(c) for c in control)
            control.clear()
        with self._lock:
            while self._out and size < _WRITE_CHUNK:
                item = self._out.popleft()
                self._out_bytes -= len(item)
                parts.append(item)
                size += len(item)
        if not parts:
            return None
        return memoryview(parts[0] if len(parts) == 1 else b"".join(parts))

    def _flush(self, now: float) -> bool:
        """Write what the socket takes; True when everything queued is written."""
        transport = self.transport
        while True:
            if self._wbuf is None or not len(self._wbuf):
                self._wbuf = self._next_chunk()
                if self._wbuf is None:
                    self._stalled_since = None
                    return True
            written = transport.send_some(self._wbuf)
            if written:
                self._wbuf = self._wbuf[written:]
                self._stalled_since = None
            if not written or len(self._wbuf):
                if self._stalled_since is None:
                    self._stalled_since = now
                return False


class Loop:
    """Reads and writes every registered channel and runs timers, on one daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._channels: set[Channel] = set()
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._writes: set[Channel] = set()  # asked to write (any thread, under the lock)
        self._blocked: set[Channel] = set()  # waiting for writability (loop thread only)
        self._closing: set[Channel] = set()  # close written, awaiting the server's close
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._order = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._numbers = itertools.count(1)
        self._woken = False

    @property
    def thread(self) -> Optional[threading.Thread]:
        """The loop's thread while it runs, else None."""
        return self._thread

    @property
    def on_loop_thread(self) -> bool:
        return self._thread is threading.current_thread()

    # ---------------------------------------------------------------- any thread

    def add(
        self,
        transport: Transport,
        owner: Sink,
        write_timeout: float = 10.0,
        max_outbox: int = 8 * 1024 * 1024,
    ) -> Channel:
        """Read and write `transport` from now on; messages and its loss go to `owner`."""
        channel = Channel(self, transport, owner, write_timeout, max_outbox)
        self._call_soon(self._register, channel)
        return channel

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run fn(*args) on the loop thread `delay` seconds from now (SDK code only)."""
        return self.call_at(time.monotonic() + max(0.0, delay), fn, *args)

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run fn(*args) on the loop thread at monotonic time `when`."""
        handle = TimerHandle(when, fn, args)
        with self._lock:
            earliest = self._timers[0][0] if self._timers else None
            heapq.heappush(self._timers, (when, next(self._order), handle))
            self._ensure_thread()
        if earliest is None or when < earliest:
            self._wake()
        return handle

    def join_if_idle(self, timeout: float) -> None:
        """Wait (bounded) for the thread to end while it has no channel and no timer."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                thread = self._thread
                if thread is None or thread is threading.current_thread():
                    return
                if self._still_needed():
                    return  # other clients still need it
            self._wake()
            thread.join(min(0.05, max(0.0, deadline - time.monotonic())))
            if not thread.is_alive() or time.monotonic() >= deadline:
                return

    def _still_needed(self) -> bool:
        """Live work (lock held): an open channel, one about to be registered, or a timer.

        Channels that are closing and calls that finish them are not: the thread is
        only winding down.
        """
        if any(c._closing_at is None for c in self._channels):
            return True
        if any(fn == self._register for fn, _ in self._calls):
            return True
        return self._live_timers()

    def abandon(self) -> None:
        """In a forked child: forget the parent's loop without touching its selector."""
        self._thread = None
        self._calls.clear()
        self._timers = []
        for channel in self._channels:
            channel.transport.discard()
            channel.ended.set()
        self._channels = set()
        for sock in (self._wake_r, self._wake_w):
            sock.close()  # this process's copies only
        # the epoll instance is shared with the parent: close our descriptor only
        self._selector.close()

    # ---------------------------------------------------------------- internals

    def _live_timers(self) -> bool:
        if any(entry[2].cancelled for entry in self._timers):
            self._timers = [entry for entry in self._timers if not entry[2].cancelled]
            heapq.heapify(self._timers)
        return bool(self._timers)

    def _ensure_thread(self) -> None:
        """Start the thread if it is not running (lock held)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"nolag-loop-{next(self._numbers)}", daemon=True
            )
            self._thread.start()

    def _call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            self._calls.append((fn, args))
            self._ensure_thread()
        self._wake()

    def _want_write(self, channel: Channel) -> None:
        with self._lock:
            if channel in self._writes:
                return
            self._writes.add(channel)
        self._wake()

    def _wake(self) -> None:
        if self.on_loop_thread:
            return
        with contextlib.suppress(OSError):  # a full wake pipe is awake enough
            self._wake_w.send(b"\0")

    def _register(self, channel: Channel) -> None:
        try:
            self._selector.register(channel.transport.fileno(), selectors.EVENT_READ, channel)
        except (ValueError, OSError, KeyError):
            self._end(channel, ConnectionClosedError("the connection closed before use"), True)
            return
        channel.registered = True
        self._channels.add(channel)
        if channel.transport.has_buffered():
            self._read(channel, time.monotonic())

    def _interest(self, channel: Channel, write: bool) -> None:
        if channel._writing == write or not channel.registered:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
        try:
            self._selector.modify(channel.transport.fileno(), events, channel)
        except (ValueError, OSError, KeyError):
            return
        channel._writing = write

    def _end(self, channel: Channel, error: ConnectionClosedError, report: bool) -> None:
        """Take a channel out of the loop and close its socket; tell the owner if `report`."""
        if channel.ended.is_set():
            return
        if channel.registered:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(channel.transport.fileno())
            channel.registered = False
        self._channels.discard(channel)
        self._blocked.discard(channel)
        self._closing.discard(channel)
        control = getattr(channel.transport, "control", None)
        if control:  # a close reply or a pong: one last try, never a wait
            with contextlib.suppress(Exception):
                channel.transport.send_some(memoryview(b"".join(control)))
            control.clear()
        channel.transport.abort_now()
        channel.error = error
        channel.ended.set()
        if report:
            owner = channel.owner()
            if owner is not None:
                try:
                    owner.on_lost(channel, error, time.monotonic())
                except Exception:
                    log.exception("unexpected error handling a lost connection")

    def _read(self, channel: Channel, now: float) -> None:
        if channel._reply_by is not None:
            self._read_after_close(channel)
            return
        try:
            batch = channel.transport.read()
        except ConnectionClosedError as exc:
            self._end(channel, exc, channel._closing_at is None)
            return
        except Exception as exc:  # never let one connection stop the others
            log.exception("unexpected error reading the socket")
            self._end(channel, ConnectionClosedError(str(exc) or type(exc).__name__), True)
            return
        if getattr(channel.transport, "control", None):
            self._write(channel, now)  # a pong or a close reply
        owner = channel.owner()
        if owner is None:  # the client was garbage-collected without disconnect()
            self._end(channel, ConnectionClosedError("the client was garbage-collected"), False)
            return
        try:
            owner.on_frames(channel, batch, now)
        except Exception:
            log.exception("unexpected error applying frames; dropping the connection")
            self._end(channel, ConnectionClosedError("internal error applying frames"), True)

    def _write(self, channel: Channel, now: float) -> None:
        if channel.ended.is_set():
            return
        try:
            done = channel._flush(now)
        except ConnectionClosedError as exc:
            self._end(channel, exc, channel._closing_at is None)
            return
        if done and channel._closing_at is not None:
            self._await_close_reply(channel, now)
            return
        self._interest(channel, not done)
        if done:
            self._blocked.discard(channel)
        else:
            self._blocked.add(channel)

    def _await_close_reply(self, channel: Channel, now: float) -> None:
        """Our close frame is out: keep the socket open until the server's close frame or
        its EOF (RFC 6455 section 7.1.1, the server closes TCP first), at most
        CLOSE_REPLY_WAIT seconds and never past the caller's deadline. Closing at once
        could reset the connection while unread bytes wait, and a reset can destroy
        frames of ours the server has not read yet: the last presence among them."""
        assert channel._closing_at is not None
        channel._reply_by = min(channel._closing_at, now + CLOSE_REPLY_WAIT)
        self._interest(channel, False)
        self._blocked.discard(channel)
        self._closing.add(channel)

    def _read_after_close(self, channel: Channel) -> None:
        """Read and drop what arrives after our close frame, until the server's close."""
        transport = channel.transport
        try:
            transport.read()
            ended = False
        except Exception:  # the server's close, its EOF, or anything: the end either way
            ended = True
        control = getattr(transport, "control", None)
        if control:
            control.clear()  # no pong, and no second close, after our close frame
        if ended:
            self._end(channel, ConnectionClosedError("closed by the client"), False)

    def _check_closing(self, now: float) -> None:
        """End the channels whose close reply did not come in time."""
        for channel in list(self._closing):
            if channel._reply_by is not None and now >= channel._reply_by:
                self._end(channel, ConnectionClosedError("closed by the client"), False)

    def _check_stalls(self, now: float) -> None:
        """Cut channels whose peer stopped reading, or whose close took too long."""
        for channel in list(self._blocked):
            if channel._closing_at is not None and now >= channel._closing_at:
                self._end(channel, ConnectionClosedError("close timed out"), False)
                continue
            since = channel._stalled_since
            if since is not None and now - since >= channel.write_timeout:
                log.warning(
                    "the server has read nothing for %.1fs; dropping the connection",
                    now - since,
                )
                self._end(
                    channel,
                    ConnectionClosedError(
                        f"the server read nothing for {now - since:.1f}s (outbox full)"
                    ),
                    True,
                )
            elif channel.pending_output > channel.max_outbox:
                self._end(
                    channel,
                    ConnectionClosedError(
                        f"over {channel.max_outbox} bytes wait unsent: the server does not read"
                    ),
                    True,
                )

    def _run(self) -> None:
        """The loop: calls, writes, reads, timers; ends when nothing is left to serve."""
        while True:
            with self._lock:
                calls = list(self._calls)
                self._calls.clear()
                writes = self._writes
                self._writes = set()
                if not calls and not writes and not self._channels and not self._live_timers():
                    self._thread = None
                    return
            now = time.monotonic()
            for fn, args in calls:
                try:
                    fn(*args)
                except Exception:
                    log.exception("a loop call failed")
            for channel in writes:
                self._write(channel, now)
            with self._lock:
                if self._calls or self._writes or not (self._channels or self._live_timers()):
                    timeout = 0.0  # more to do, or maybe nothing left: back to the top
                else:
                    timeout = _IDLE_WAIT if not self._blocked else 0.25  # stall checks
                    if self._timers:
                        timeout = min(timeout, max(0.0, self._timers[0][0] - time.monotonic()))
                    for channel in self._closing:
                        assert channel._reply_by is not None
                        timeout = min(timeout, max(0.0, channel._reply_by - time.monotonic()))
            try:
                ready = self._selector.select(timeout)
            except (OSError, ValueError):  # pragma: no cover - a closed fd slipped in
                log.exception("the loop's select failed")
                continue
            now = time.monotonic()
            again: list[Channel] = []
            for key, mask in ready:
                channel = key.data
                if channel is None:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                if mask & selectors.EVENT_WRITE:
                    self._write(channel, now)
                if mask & selectors.EVENT_READ and not channel.ended.is_set():
                    self._read(channel, now)
                    if not channel.ended.is_set() and channel.transport.has_buffered():
                        again.append(channel)
            for channel in again:  # decrypted TLS bytes held back by the SSL layer
                self._read(channel, now)
            self._run_timers(time.monotonic())
            if self._blocked:
                self._check_stalls(time.monotonic())
            if self._closing:
                self._check_closing(time.monotonic())

    def _run_timers(self, now: float) -> None:
        """Run the timers due at `now`; one set again for now waits for the next pass."""
        with self._lock:
            due = sum(1 for entry in self._timers if entry[0] <= now)
        for _ in range(due):
            with self._lock:
                if not self._timers or self._timers[0][0] > now:
                    return
                _, _, handle = heapq.heappop(self._timers)
            if handle.cancelled:
                continue
            try:
                handle.fn(*handle.args)
            except Exception:
                log.exception("a timed task failed")


_loop = PerProcess(Loop, Loop.abandon)


def shared_loop() -> Loop:
    """The process's loop (created on first use, replaced in a forked child)."""
    return _loop.get()
