"""A tiny scheduler: one named daemon thread runs the SDK's timed work in deadline order.

The client's heartbeat, coalesced presence flushes and typing-indicator timeouts all run
here, so timers cost no thread each. Callbacks are SDK code, never user callbacks.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Any, Callable, Optional

__all__ = ["Scheduler", "TimerHandle", "TokenBucket"]

log = logging.getLogger("nolag")


class TimerHandle:
    """A scheduled call; cancel() stops it from running (and from repeating)."""

    __slots__ = ("args", "cancelled", "fn", "interval", "when")

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
    """Runs callbacks at monotonic deadlines on one thread, started on first use."""

    def __init__(self, thread_name: str) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._order = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._thread_name = thread_name
        self._thread: Optional[threading.Thread] = None
        self._stopping = False

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run fn(*args) once, `delay` seconds from now."""
        return self._push(TimerHandle(time.monotonic() + max(0.0, delay), fn, args, None))

    def call_every(self, interval: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run fn(*args) every `interval` seconds until cancelled or the scheduler stops."""
        return self._push(TimerHandle(time.monotonic() + interval, fn, args, interval))

    def stop(self, timeout: float) -> None:
        """Drop every pending call and join the thread (unless called from it)."""
        with self._cond:
            self._stopping = True
            self._heap.clear()
            thread, self._thread = self._thread, None
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        """True while the scheduler thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _push(self, handle: TimerHandle) -> TimerHandle:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._run, name=self._thread_name, daemon=True
                )
                self._thread.start()
            heapq.heappush(self._heap, (handle.when, next(self._order), handle))
            self._cond.notify()
        return handle

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        _, _, handle = heapq.heappop(self._heap)
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
            if handle.cancelled:
                continue
            try:
                handle.fn(*handle.args)
            except Exception:
                log.exception("nolag: a timed task failed")
            if handle.interval is not None and not handle.cancelled:
                handle.when = max(handle.when + handle.interval, time.monotonic())
                with self._cond:
                    if not self._stopping:
                        heapq.heappush(self._heap, (handle.when, next(self._order), handle))


class TokenBucket:
    """Allows `rate` sends per second with bursts of `burst`; the caller passes the time."""

    __slots__ = ("_burst", "_last", "_level", "_rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._level = burst
        self._last = now

    @property
    def rate(self) -> float:
        """Sends per second allowed on average."""
        return self._rate

    def spend(self, now: float) -> None:
        """Spend one token even if none is there (a frame that must go now): later ones wait."""
        self._level = min(self._burst, self._level + (now - self._last) * self._rate) - 1.0
        self._last = now

    def take(self, now: float) -> bool:
        """Spend one token if one is there."""
        self._level = min(self._burst, self._level + (now - self._last) * self._rate)
        self._last = now
        if self._level >= 1.0:
            self._level -= 1.0
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until a token will be there."""
        level = min(self._burst, self._level + (now - self._last) * self._rate)
        return 0.0 if level >= 1.0 else (1.0 - level) / self._rate
