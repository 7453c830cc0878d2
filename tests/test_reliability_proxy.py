"""The fault proxy itself: each fault does what the reliability tests rely on, over real sockets."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgpack
import pytest
import websocket
from faultproxy import FaultProxy, client_messages, proxy_threads
from helpers import TOKENS, wait_until
from rawclient import Closed, RawClient

from nolag.broker import EmbeddedBroker


@pytest.fixture
def proxy(broker: EmbeddedBroker) -> Iterator[FaultProxy]:
    """A fault proxy in front of the test broker; stopped (threads joined) afterwards."""
    with FaultProxy(broker.port) as fp:
        yield fp
    assert not proxy_threads()


def _authed(url: str) -> RawClient:
    client = RawClient(url, timeout=3)
    assert client.auth(TOKENS["alice"], 2)["success"] is True
    return client


def test_forwards_both_ways_and_records_what_the_client_sent(proxy: FaultProxy) -> None:
    client = _authed(proxy.url())
    try:
        client.send_raw(b"")
        assert client.recv(2) == b""  # heartbeat echoed through the proxy
        (link,) = proxy.links
        sent = client_messages(bytes(link.c2s))
        assert msgpack.unpackb(sent[0][1])["type"] == "auth"
        assert sent[1] == (websocket.ABNF.OPCODE_BINARY, b"")
    finally:
        client.close()


def test_cut_resets_both_ends_at_once(proxy: FaultProxy, broker: EmbeddedBroker) -> None:
    client = _authed(proxy.url())
    wait_until(lambda: broker.connection_count() == 1)
    started = time.monotonic()
    assert proxy.cut() == 1
    with pytest.raises(Closed) as info:
        client.recv_frame(2)
    assert info.value.code is None  # no close frame: the TCP connection just ended
    assert time.monotonic() - started < 1.0
    wait_until(lambda: broker.connection_count() == 0, timeout=3)
    client.abort()


def test_stall_keeps_connections_open_but_silent_and_resume_delivers(
    proxy: FaultProxy, broker: EmbeddedBroker
) -> None:
    client = _authed(proxy.url())
    try:
        assert proxy.stall() == 1
        client.send_raw(b"")
        with pytest.raises(TimeoutError):
            client.recv(0.5)
        assert broker.connection_count() == 1  # nobody saw a FIN or RST
        fresh = _authed(proxy.url())  # new connections are not stalled
        fresh.close()
        proxy.resume()
        assert client.recv(2) == b""  # the held heartbeat went through and came back
    finally:
        client.close()


def test_block_refuses_new_connections_until_unblocked(proxy: FaultProxy) -> None:
    proxy.block()
    with pytest.raises((OSError, websocket.WebSocketException)):
        RawClient(proxy.url(), timeout=2)
    assert proxy.refused == 1
    proxy.unblock()
    _authed(proxy.url()).close()
    assert proxy.accepted == 1


def test_delay_adds_latency_each_way(proxy: FaultProxy) -> None:
    client = _authed(proxy.url())
    try:
        proxy.delay(0.2)
        started = time.monotonic()
        client.send_raw(b"")
        assert client.recv(3) == b""
        assert time.monotonic() - started >= 0.4
        proxy.delay(0)
    finally:
        client.close()


def test_reset_mid_frame_delivers_part_of_a_frame_then_resets(proxy: FaultProxy) -> None:
    client = _authed(proxy.url())
    done = proxy.reset_mid_frame()
    client.send({"type": "getPresence", "roomId": "general"})
    with pytest.raises(Closed):
        client.recv_frame(2)
    assert done.wait(2)
    (link,) = proxy.links
    assert link.closed.wait(2) and link.abrupt
    client.abort()


def test_stop_joins_every_thread(broker: EmbeddedBroker) -> None:
    fp = FaultProxy(broker.port).start()
    clients = [_authed(fp.url()) for _ in range(3)]
    assert len(proxy_threads()) == 1 + 2 * 3
    fp.stop()
    assert not proxy_threads()
    for client in clients:
        client.abort()
