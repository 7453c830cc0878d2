"""One reader thread per process: a selector over every connected client's socket.

A reader thread per connection is fine for one client, but a process holding hundreds
of them (a load generator, a fan-in service, a big test suite) then has hundreds of
runnable threads contending for the GIL, and throughput collapses: measured here, 500
clients converged a join storm in 13 s and 1,000 never did. So each connected
`Transport` registers with the process's `ReadLoop` instead; its one thread waits on
every socket at once, reads each ready socket in one large chunk and hands the messages
to the owner, which decodes and applies them (SDK code only, never user callbacks).

The thread starts with the first registration and ends once the last transport is gone,
so a process without connections runs no reader. A transport leaves the loop when it is
aborted or closed, by anyone; its owner is told once, on the loop thread (`on_lost`),
and must not block there. After a fork the child starts with an empty loop of its own
and never touches the parent's selector.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import selectors
import socket
import threading
import time
from typing import Callable, Optional

from nolag.errors import ConnectionClosedError
from nolag.perprocess import PerProcess
from nolag.transport import Transport

__all__ = ["ReadLoop", "Registration", "read_loop"]

log = logging.getLogger("nolag")

BatchHandler = Callable[[Transport, "list[bytes]"], None]
LossHandler = Callable[[Transport, ConnectionClosedError], None]

#: how long the loop waits on its sockets before re-checking whether it still has any
_IDLE_WAIT = 1.0


class Registration:
    """A transport's place in the loop, with the owner's two callbacks."""

    __slots__ = ("active", "error", "on_batch", "on_lost", "reported", "transport")

    def __init__(self, transport: Transport, on_batch: BatchHandler, on_lost: LossHandler) -> None:
        self.transport = transport
        self.on_batch = on_batch
        self.on_lost = on_lost
        self.active = True  # still in the selector
        self.reported = False  # on_lost has been called
        self.error: Optional[ConnectionClosedError] = None


class ReadLoop:
    """Reads every registered transport on one named daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._count = 0  # active registrations
        self._due: list[Registration] = []  # to service without waiting on the socket
        self._thread: Optional[threading.Thread] = None
        self._numbers = itertools.count(1)

    @property
    def thread(self) -> Optional[threading.Thread]:
        """The loop's thread while it runs, else None."""
        return self._thread

    def add(
        self, transport: Transport, on_batch: BatchHandler, on_lost: LossHandler
    ) -> Registration:
        """Read `transport` from now on; messages go to on_batch, its end to on_lost."""
        reg = Registration(transport, on_batch, on_lost)
        with self._lock:
            # the hook first: an abort from now on waits for this lock, then detaches
            transport.on_abort = lambda: self._detach(reg, None)
            try:
                if transport.closed:
                    raise ValueError("closed")
                self._selector.register(transport.socket, selectors.EVENT_READ, reg)
            except (ValueError, OSError):  # closed before it could be added
                reg.active = False
                reg.error = transport.close_error()
                self._due.append(reg)
            else:
                self._count += 1
                if transport.has_buffered():
                    self._due.append(reg)  # messages read with the auth reply, or TLS bytes
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"nolag-reader-{next(self._numbers)}", daemon=True
                )
                self._thread.start()
        self._wake()
        return reg

    def join_if_idle(self, timeout: float) -> None:
        """Wait (bounded) for the thread to end while nothing is registered any more."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                thread = self._thread
                if thread is None or self._count or thread is threading.current_thread():
                    return  # no thread, or another connection still needs it
            self._wake()
            thread.join(min(0.05, max(0.0, deadline - time.monotonic())))
            if not thread.is_alive() or time.monotonic() >= deadline:
                return

    def _detach(self, reg: Registration, error: Optional[ConnectionClosedError]) -> None:
        """Take a transport out of the selector (before its socket closes); report it later."""
        with self._lock:
            if not reg.active:
                return
            reg.active = False
            reg.error = error
            self._count -= 1
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(reg.transport.socket)
            reg.transport.on_abort = None
            self._due.append(reg)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a full wake pipe is awake enough
            self._wake_w.send(b"\0")

    def _run(self) -> None:
        """The loop: wait for ready sockets, read each once, repeat until none is left."""
        while True:
            with self._lock:
                due, self._due = self._due, []
                if not due and self._count == 0:
                    self._thread = None
                    return
            for reg in due:
                self._service(reg)
            try:  # without waiting while some transport is due again (more buffered bytes)
                ready = self._selector.select(0 if self._due else _IDLE_WAIT)
            except (OSError, ValueError):  # pragma: no cover - a closed fd slipped in
                log.exception("nolag: the read loop's select failed")
                continue
            for key, _ in ready:
                reg = key.data
                if reg is None:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                self._service(reg)

    def _service(self, reg: Registration) -> None:
        """Read one chunk of `reg`'s socket (or report its loss) and hand over the messages."""
        transport = reg.transport
        if not reg.active:
            self._report(reg, reg.error or transport.close_error())
            return
        try:
            batch = transport.recv_batch()
        except ConnectionClosedError as exc:
            self._detach(reg, exc)
            self._report(reg, exc)
            return
        except Exception as exc:  # never let one connection stop the others' reads
            log.exception("nolag: unexpected error reading the socket")
            transport.abort()
            self._report(reg, ConnectionClosedError(str(exc) or type(exc).__name__))
            return
        if batch:
            try:
                reg.on_batch(transport, batch)
            except Exception:
                log.exception("nolag: unexpected error applying frames; dropping the connection")
                transport.abort()
        if reg.active and transport.has_buffered():
            with self._lock:
                self._due.append(reg)

    def _report(self, reg: Registration, error: ConnectionClosedError) -> None:
        if reg.reported:
            return
        reg.reported = True
        try:
            reg.on_lost(reg.transport, error)
        except Exception:
            log.exception("nolag: unexpected error handling a lost connection")

    def abandon(self) -> None:
        """In a forked child: forget the parent's loop without touching its selector."""
        self._thread = None
        self._due = []
        self._count = 0
        for sock in (self._wake_r, self._wake_w):
            sock.close()  # this process's copies only
        # the epoll instance is shared with the parent: close our descriptor, unregister nothing
        self._selector.close()


_loop = PerProcess(ReadLoop, ReadLoop.abandon)


def read_loop() -> ReadLoop:
    """The process's read loop (created on first use, replaced in a forked child)."""
    return _loop.get()
