"""A tiny scheduler: one named daemon thread runs the SDK's timed work in deadline order.

Every client's heartbeat, coalesced presence flushes and typing-indicator timeouts run
on the process's one shared `Scheduler` (`shared_scheduler()`), each client through a
`TimerGroup` of its own that it can cancel at once. A thread per client would leave a
thousand clients with a thousand timer threads waking every second and queueing for the
GIL behind the reader. The thread starts with the first timer and ends when none is
left. Callbacks are SDK code, never user callbacks, and must not block for long.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import weakref
from typing import Any, Callable, Optional

from nolag.perprocess import PerProcess
from nolag.ratelimit import TokenBucket

__all__ = ["Scheduler", "TimerGroup", "TimerHandle", "TokenBucket", "shared_scheduler"]

log = logging.getLogger("nolag")


class TimerHandle:
    """A scheduled call; cancel() stops it from running (and from repeating)."""

    __slots__ = ("__weakref__", "args", "cancelled", "fn", "interval", "when")

    def __init__(
        self, when: float, fn: Callable[..., Any], args: tuple[Any, ...], interval: Optional[float]
    ) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.interval = interval
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run this call (idempotent)."""
        self.cancelled = True


class Scheduler:
    """Runs callbacks at monotonic deadlines on one thread, started on first use.

    The thread ends as soon as no call is pending, so that a process whose clients all
    disconnected runs no nolag thread; the next call starts a new one.
    """

    def __init__(self, thread_name: str) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._order = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._thread_name = thread_name
        self._thread: Optional[threading.Thread] = None

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run fn(*args) once, `delay` seconds from now."""
        return self._push(TimerHandle(time.monotonic() + max(0.0, delay), fn, args, None))

    def call_every(self, interval: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run fn(*args) every `interval` seconds until cancelled."""
        return self._push(TimerHandle(time.monotonic() + interval, fn, args, interval))

    def cancel(self, handles: list[TimerHandle]) -> None:
        """Cancel these calls and take them out of the queue now (not at their deadline)."""
        with self._cond:
            for handle in handles:
                handle.cancelled = True
            self._heap = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cond.notify_all()

    def join_if_idle(self, timeout: float) -> None:
        """Wait (bounded) for the thread to end, unless calls are pending."""
        deadline = time.monotonic() + timeout
        with self._cond:
            thread = self._thread
            if thread is None or thread is threading.current_thread():
                return
            self._cond.notify_all()
            while self._thread is thread and not self._heap:  # a call may be running
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)
            if self._thread is thread:
                return  # still has calls to run (other clients'): it stays
        thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def thread(self) -> Optional[threading.Thread]:
        """The scheduler's thread while it runs, else None."""
        return self._thread

    def _push(self, handle: TimerHandle) -> TimerHandle:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name=self._thread_name, daemon=True
                )
                self._thread.start()
            heapq.heappush(self._heap, (handle.when, next(self._order), handle))
            self._cond.notify_all()  # the thread, and anyone in join_if_idle
        return handle

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        _, _, handle = heapq.heappop(self._heap)
                        break
                    if not self._heap:
                        self._thread = None
                        self._cond.notify_all()  # anyone in join_if_idle
                        return
                    self._cond.wait(self._heap[0][0] - now)
            if handle.cancelled:
                continue
            try:
                handle.fn(*handle.args)
            except Exception:
                log.exception("nolag: a timed task failed")
            if handle.interval is not None and not handle.cancelled:
                handle.when = max(handle.when + handle.interval, time.monotonic())
                with self._cond:
                    heapq.heappush(self._heap, (handle.when, next(self._order), handle))
                    self._cond.notify_all()


class TimerGroup:
    """One owner's calls on the shared scheduler: `stop()` cancels them, and only them."""

    def __init__(self) -> None:
        self._handles: weakref.WeakSet[TimerHandle] = weakref.WeakSet()
        self._lock = threading.Lock()

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run fn(*args) once, `delay` seconds from now, on the shared scheduler thread."""
        return self._track(shared_scheduler().call_later(delay, fn, *args))

    def call_every(self, interval: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run fn(*args) every `interval` seconds until cancelled or stop()."""
        return self._track(shared_scheduler().call_every(interval, fn, *args))

    def stop(self, timeout: float) -> None:
        """Cancel every call of this group; wait for the shared thread if it is now idle."""
        with self._lock:
            handles = list(self._handles)
            self._handles = weakref.WeakSet()
        scheduler = shared_scheduler()
        scheduler.cancel(handles)
        scheduler.join_if_idle(timeout)

    def _track(self, handle: TimerHandle) -> TimerHandle:
        with self._lock:
            self._handles.add(handle)
        return handle


_shared_numbers = itertools.count(1)
_shared = PerProcess(lambda: Scheduler(f"nolag-timer-{next(_shared_numbers)}"))


def shared_scheduler() -> Scheduler:
    """The process's scheduler (created on first use, replaced in a forked child)."""
    return _shared.get()
