"""The shared timer thread: every client's timed work on one thread, cancelled per client."""

from __future__ import annotations

import threading
import time

from helpers import wait_until

from nolag.timers import TimerGroup, shared_scheduler


def _timer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("nolag-timer-")]


def test_groups_share_one_thread_and_stop_only_their_own_calls() -> None:
    ran: list[str] = []
    first, second = TimerGroup(), TimerGroup()
    first.call_every(0.01, ran.append, "first")
    second.call_every(0.01, ran.append, "second")
    wait_until(lambda: "first" in ran and "second" in ran)
    assert len(_timer_threads()) == 1 and _timer_threads()[0].daemon
    started = time.monotonic()
    first.stop(5.0)
    assert time.monotonic() - started < 1.0  # the other group's calls keep the thread: no wait
    ran.clear()
    wait_until(lambda: ran.count("second") >= 3)
    assert "first" not in ran
    thread = shared_scheduler().thread
    second.stop(5.0)
    assert thread is not None and not thread.is_alive()  # the last group's stop joined it
    assert not _timer_threads()


def test_stop_takes_calls_out_at_once_not_at_their_deadline() -> None:
    ran: list[int] = []
    group = TimerGroup()
    group.call_later(3600.0, ran.append, 1)  # would keep the thread alive for an hour
    assert _timer_threads()
    group.stop(5.0)
    assert not _timer_threads() and not ran


def test_a_call_that_raises_does_not_stop_the_others() -> None:
    ran: list[str] = []
    group = TimerGroup()

    def boom() -> None:
        raise RuntimeError("a bug in a timed task")

    group.call_later(0.0, boom)
    group.call_later(0.01, ran.append, "after")
    wait_until(lambda: ran == ["after"])
    group.stop(5.0)
    assert not _timer_threads()
