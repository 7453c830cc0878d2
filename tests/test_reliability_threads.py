"""Thread safety under load, and listeners that raise, against the real broker.

Sixteen threads call set_presence, get_all_presence, get_presence, on and off for a
bounded time while four streamers send numbered presence updates. Every streamer event
must reach a permanent listener exactly once and in order (counted), every snapshot must
be internally consistent and never older than one seen before, no call may raise, and a
listener that raises on every event keeps its subscription.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from helpers import wait_until
from rawclient import RawClient

from nolag import ActorPresence, NoLag
from nolag.broker import EmbeddedBroker

ROOM = "general"
STREAMERS = [(f"tok-actor-02{n}", f"actor-02{n}") for n in range(4)]
RUN_FOR = 3.0  # seconds of concurrent load


class Streamer:
    """A raw socket that sends {"seq": n, "check": "<actor>:<n>"} every 25 ms, then leaves."""

    def __init__(self, url: str, token: str, actor: str) -> None:
        self.actor = actor
        self.tab = RawClient(url, timeout=3)
        assert self.tab.auth(token, 2)["success"] is True
        self.sent = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"test-stream-{actor}", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            n = self.sent
            data = {"seq": n, "check": f"{self.actor}:{n}"}
            self.tab.send({"type": "presence", "roomId": ROOM, "data": data})
            self.sent += 1
            self._stop.wait(0.025)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(Exception):
            self.tab.close()


def _consistent(actor: ActorPresence) -> int:
    """A streamer's entry is whole: its check matches its seq; returns the seq."""
    data = actor.presence
    seq = data["seq"]
    assert data["check"] == f"{actor.actor_token_id}:{seq}", data
    assert actor.room == ROOM and actor.connections == 1
    return int(seq)


def _hammer(stop: threading.Event, errors: list[BaseException], body: Callable[[], None]) -> None:
    try:
        while not stop.is_set():
            body()
    except BaseException as exc:
        errors.append(exc)


def test_sixteen_threads_while_events_stream_lose_and_duplicate_nothing(
    broker: EmbeddedBroker,
) -> None:
    client = NoLag("dev-token-fast", url=broker.url, heartbeat_interval=5.0)
    streamed = {actor for _, actor in STREAMERS}
    log: dict[str, list[tuple[str, int]]] = {actor: [] for actor in streamed}
    stale: list[str] = []
    gone_before: set[tuple[str, int]] = set()  # events handled after the actor's leave
    raised_on: list[str] = []
    errors: list[BaseException] = []

    def record(name: str) -> Callable[[ActorPresence], None]:
        def handler(actor: ActorPresence) -> None:
            if actor.actor_token_id not in streamed:
                return
            seq = _consistent(actor)
            log[actor.actor_token_id].append((name, seq))
            cached = client.get_presence(actor.actor_token_id, ROOM)
            # a callback sees a cache at least as new as the event it handles: the same
            # or a later seq, or none at all once the actor's leave was applied
            if name == "presence:leave":
                if cached is not None:
                    stale.append(f"{actor.actor_token_id} still cached at its leave")
            elif cached is None:
                gone_before.add((actor.actor_token_id, seq))
            elif _consistent(cached) < seq:
                stale.append(f"cache older than {name} {actor.actor_token_id}#{seq}")

        return handler

    def always_raises(actor: ActorPresence) -> None:
        if actor.actor_token_id in streamed:
            raised_on.append(actor.actor_token_id)
        raise RuntimeError("a listener bug")

    for name in ("presence:join", "presence:update", "presence:leave"):
        client.on(name, record(name))
        client.on(name, always_raises)
    callback_errors: list[BaseException] = []
    client.on("error", callback_errors.append)

    streamers = [Streamer(broker.url, token, actor) for token, actor in STREAMERS]
    stop = threading.Event()
    counter = iter(range(10**9))

    def set_own() -> None:
        client.set_presence({"writer": threading.current_thread().name, "n": next(counter)}, ROOM)
        time.sleep(0.002)

    def snapshots() -> None:
        last: dict[str, int] = {}
        while not stop.is_set():
            snap = client.get_all_presence(ROOM)
            assert isinstance(snap, tuple)
            ids = [a.actor_token_id for a in snap]
            assert len(ids) == len(set(ids)), ids  # one entry per actor
            for actor in snap:
                if actor.actor_token_id in streamed:
                    seq = _consistent(actor)
                    assert seq >= last.get(actor.actor_token_id, -1), "snapshot went back"
                    last[actor.actor_token_id] = seq

    def lookups() -> None:
        last: dict[str, int] = {}
        while not stop.is_set():
            for _, actor_id in STREAMERS:
                actor = client.get_presence(actor_id, ROOM)
                if actor is not None:
                    seq = _consistent(actor)
                    assert seq >= last.get(actor_id, -1), "lookup went back"
                    last[actor_id] = seq

    def churn_handlers() -> None:
        def transient(actor: ActorPresence) -> None:
            pass

        client.on("presence:update", transient)
        client.on("presence:join", transient)
        client.off("presence:update", transient)
        client.off("presence:join", transient)

    bodies: list[Callable[[], None]] = (
        [set_own] * 4 + [lambda: snapshots()] * 4 + [lambda: lookups()] * 4 + [churn_handlers] * 4
    )
    threads = [
        threading.Thread(
            target=_hammer, args=(stop, errors, body), name=f"test-hammer-{i}", daemon=True
        )
        for i, body in enumerate(bodies)
    ]
    try:
        client.connect(timeout=5)
        client.set_presence({"writer": "main"}, ROOM)
        wait_until(lambda: client.get_presence("fast", ROOM) is not None)
        for thread in threads:
            thread.start()
        for streamer in streamers:
            streamer.thread.start()
        time.sleep(RUN_FOR)
        for streamer in streamers:
            streamer.stop()
        stop.set()
        for thread in threads:
            thread.join(5)
        assert not [t.name for t in threads if t.is_alive()]
        assert not errors, errors
        for streamer in streamers:
            streamer.close()  # a leave each
        wait_until(
            lambda: all(log[s.actor][-1:] == [("presence:leave", s.sent - 1)] for s in streamers),
            timeout=10,
        )
    finally:
        stop.set()
        for streamer in streamers:
            streamer.close()
        client.disconnect()

    assert not stale, stale[:5]
    total = 0
    for streamer in streamers:
        events = log[streamer.actor]
        n = streamer.sent
        assert n >= 10, f"{streamer.actor} sent only {n} updates"
        expected = (
            [("presence:join", 0)]
            + [("presence:update", k) for k in range(1, n)]
            + [("presence:leave", n - 1)]
        )
        assert events == expected, f"{streamer.actor}: {len(events)} events for {n + 1}"
        # an event that found the actor gone came after the last update was sent, i.e.
        # its leave was already applied: only the tail of the stream may be like that
        gone = sorted(seq for actor, seq in gone_before if actor == streamer.actor)
        assert gone == list(range(n - len(gone), n)), (streamer.actor, gone, n)
        total += len(events)
    # the listener that raised on every event was called for every one of them, and
    # each raise was reported on the error event; the subscription never died
    assert len(raised_on) == total
    runtime_errors = [e for e in callback_errors if isinstance(e, RuntimeError)]
    assert len(runtime_errors) >= total


@pytest.fixture
def quiet_client(broker: EmbeddedBroker) -> Iterator[NoLag]:
    client = NoLag("dev-token-fast", url=broker.url)
    yield client
    client.disconnect()


def test_handlers_added_and_removed_from_inside_callbacks(
    broker: EmbeddedBroker, quiet_client: NoLag
) -> None:
    """Callbacks that register and unregister callbacks (re-entrancy) neither deadlock nor miss."""
    client = quiet_client
    calls: list[str] = []

    def late(actor: ActorPresence) -> None:
        calls.append(f"late:{actor.presence['n']}")

    def first(actor: Any) -> None:
        calls.append(f"first:{actor.presence['n']}")
        if actor.presence["n"] == 1:
            client.on("presence:update", late)
        if actor.presence["n"] == 3:
            client.off("presence:update", late)

    client.on("presence:update", first)
    client.connect(timeout=5)
    tab = RawClient(broker.url, timeout=3)
    try:
        assert tab.auth("tok-actor-024", 2)["success"] is True
        client.set_presence({"me": 1}, ROOM)
        wait_until(lambda: client.get_presence("fast", ROOM) is not None)
        tab.send({"type": "presence", "roomId": ROOM, "data": {"n": 0}})
        for n in range(1, 5):
            time.sleep(0.05)
            tab.send({"type": "presence", "roomId": ROOM, "data": {"n": n}})
        wait_until(lambda: "first:4" in calls)
        # a callback added during an event runs from the next event on; one removed during
        # an event still runs for that event (each event runs the handlers it was queued with)
        assert calls == ["first:1", "first:2", "late:2", "first:3", "late:3", "first:4"]
    finally:
        tab.close()
