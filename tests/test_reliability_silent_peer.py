"""A peer that goes silent (no FIN, no data) is detected in time and replaced by a reconnect.

The fault proxy stalls the connection: both TCP connections stay open, nothing moves. The
client must notice within 2 x heartbeat_interval + min(5, interval / 2) and reconnect;
a slow but live connection must not be dropped; a frame cut in the middle by a reset must
cost a reconnect, never a misread frame.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from faultproxy import FaultProxy, proxy_threads
from helpers import TOKENS, wait_until
from rawclient import RawClient

from nolag import ConnectionState, NoLag
from nolag.broker import EmbeddedBroker
from nolag.models import thaw

ROOM = "general"


@pytest.fixture
def proxy(broker: EmbeddedBroker) -> Iterator[FaultProxy]:
    """A fault proxy in front of the test broker; its threads are joined afterwards."""
    with FaultProxy(broker.port) as fp:
        yield fp
    assert not proxy_threads()


class Marks:
    """Arrival times of lifecycle events."""

    def __init__(self, client: NoLag) -> None:
        self.at: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        for name in ("disconnect", "reconnecting", "reconnect"):
            client.on(name, self._handler(name))

    def _handler(self, name: str) -> Any:
        def handle(*args: Any) -> None:
            with self._lock:
                self.at.setdefault(name, []).append(time.monotonic())

        return handle

    def first(self, name: str) -> float:
        with self._lock:
            return self.at.get(name, [0.0])[0]

    def count(self, name: str) -> int:
        with self._lock:
            return len(self.at.get(name, ()))


def _client(url: str, interval: float, **options: Any) -> NoLag:
    settings: dict[str, Any] = {
        "heartbeat_interval": interval,
        "reconnect_initial_delay": 0.02,
        "reconnect_max_delay": 0.1,
        "connect_timeout": 2.0,
    }
    settings.update(options)
    return NoLag(TOKENS["alice"], url=url, **settings)


@pytest.mark.parametrize("interval", [0.4, 1.0])
def test_silent_peer_is_detected_within_two_intervals_and_reconnects(
    proxy: FaultProxy, interval: float
) -> None:
    limit = 2 * interval + min(5.0, interval / 2)
    client = _client(proxy.url(), interval)
    marks = Marks(client)
    try:
        client.connect(timeout=5)
        client.set_presence({"name": "Alice"}, room=ROOM)
        wait_until(lambda: client.get_presence("alice", ROOM) is not None)
        time.sleep(interval * 1.5)  # heartbeats flow
        assert proxy.stall() == 1
        stalled_at = time.monotonic()
        wait_until(lambda: marks.count("disconnect"), timeout=limit + 3)
        took = marks.first("disconnect") - stalled_at
        # the last frame came at most one interval before the stall
        assert limit - interval - 0.2 <= took <= limit + 0.5, (took, limit)
        wait_until(lambda: marks.count("reconnect") == 1, timeout=5)
        assert client.connected and client.stats.reconnects == 1
        assert len(proxy.live_links()) == 2  # the stalled one is still open: no FIN was seen
        wait_until(lambda: client.get_presence("alice", ROOM) is not None)
    finally:
        client.disconnect()
        proxy.resume()


def test_slow_but_live_connection_is_not_dropped(proxy: FaultProxy) -> None:
    interval = 0.4
    client = _client(proxy.url(), interval)
    marks = Marks(client)
    try:
        client.connect(timeout=5)
        # a round trip as long as the heartbeat interval: echoes come late but steadily (the
        # first one comes interval + round trip after connect, inside the silence limit)
        proxy.delay(interval / 2)
        received = client.stats.frames_received
        time.sleep(3.0)
        assert client.stats.frames_received >= received + 4  # echoes kept coming, late
        assert marks.count("disconnect") == 0
        assert client.connected and client.stats.reconnects == 0
    finally:
        proxy.delay(0)
        client.disconnect()


def test_reconnect_to_a_server_that_accepts_but_never_answers_is_bounded(
    proxy: FaultProxy,
) -> None:
    client = _client(proxy.url(), 5.0, connect_timeout=0.5)
    marks = Marks(client)
    try:
        client.connect(timeout=5)
        proxy.stall(new_links=True)  # every new connection is accepted, then silent
        proxy.cut()
        wait_until(lambda: marks.count("reconnecting") >= 3, timeout=5)
        assert client.status is ConnectionState.RECONNECTING
        # each attempt gave up after connect_timeout instead of hanging
        stalled = [link for link in proxy.links[1:] if link.stalled.is_set()]
        assert len(stalled) >= 2
        proxy.resume()
        wait_until(lambda: client.connected, timeout=5)
    finally:
        client.disconnect()


def test_frame_reset_in_the_middle_costs_a_reconnect_not_a_misread(
    broker: EmbeddedBroker, proxy: FaultProxy
) -> None:
    client = _client(proxy.url(), 5.0)
    bob = RawClient(broker.url, timeout=3)
    try:
        assert bob.auth(TOKENS["bob"], 2)["success"] is True
        bob.send({"type": "presence", "roomId": ROOM, "data": {"v": 0}})
        client.connect(timeout=5)
        client.set_presence({"name": "Alice"}, room=ROOM)
        wait_until(lambda: client.get_presence("bob", ROOM) is not None)
        done = proxy.reset_mid_frame()
        big = {"v": 1, "blob": "x" * 20_000}  # a frame large enough to be cut in two
        bob.send({"type": "presence", "roomId": ROOM, "data": big})
        assert done.wait(3)
        wait_until(lambda: client.stats.reconnects == 1, timeout=5)
        wait_until(lambda: client.connected, timeout=5)
        # the update lost in the cut frame came back with the list
        wait_until(lambda: _data(client, "bob") == big, timeout=5)
        assert client.stats.protocol_errors == 0  # the half frame was never decoded
    finally:
        client.disconnect()
        bob.close()


def _data(client: NoLag, actor: str) -> Any:
    """The actor's presence data in ROOM as the client's cache has it (None if absent)."""
    found = client.get_presence(actor, ROOM)
    return thaw(found.presence) if found is not None else None
