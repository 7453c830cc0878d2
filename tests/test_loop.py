"""The process-wide loop: one thread reads and writes every connection, over real sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Callable

import msgpack
import pytest
from helpers import TOKENS, wait_until

from nolag import NoLag, protocol
from nolag._io.loop import Channel, Loop, shared_loop
from nolag._io.transport import WebSocketTransport, open_websocket
from nolag.broker import EmbeddedBroker
from nolag.errors import ConnectionClosedError


class Owner:
    """Records what the loop hands to a channel's owner, and on which thread."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.lost: list[ConnectionClosedError] = []
        self.threads: set[str] = set()
        self.fail_batches = False

    def on_frames(self, channel: Channel, payloads: list[bytes], now: float) -> None:
        self.threads.add(threading.current_thread().name)
        if payloads:
            self.batches.append(payloads)
        if self.fail_batches:
            raise RuntimeError("a bug in the owner")

    def on_lost(self, channel: Channel, error: ConnectionClosedError, now: float) -> None:
        self.threads.add(threading.current_thread().name)
        self.lost.append(error)

    def frames(self) -> list[dict[str, object]]:
        return [msgpack.unpackb(p) for batch in self.batches for p in batch if p]


def _open(loop: Loop, url: str) -> WebSocketTransport:
    def schedule(delay: float, fn: Callable[[], None]) -> Callable[[], None]:
        return loop.call_later(delay, fn).cancel

    return open_websocket(url, 5.0, schedule, 1 << 20)


def _authed(loop: Loop, url: str, owner: Owner, token: str = TOKENS["alice"]) -> Channel:
    """A channel whose auth frame is queued; the reply is for the loop to read."""
    channel = loop.add(_open(loop, url), owner)
    channel.send([protocol.encode_auth(token, 2, False)])
    return channel


@pytest.fixture
def loop() -> Iterator[Loop]:
    """A private loop (not the process's), checked to end with its last channel."""
    loop = Loop()
    yield loop
    loop.join_if_idle(5.0)
    assert loop.thread is None


def test_every_channel_is_served_by_one_thread_that_ends_with_the_last(
    broker: EmbeddedBroker, loop: Loop
) -> None:
    owners = [Owner() for _ in range(4)]
    channels = [_authed(loop, broker.url, owner) for owner in owners]
    for owner in owners:
        wait_until(lambda owner=owner: any(f.get("type") == "auth" for f in owner.frames()))
    thread = loop.thread
    assert thread is not None and thread.name.startswith("nolag-loop-") and thread.daemon
    assert {name for owner in owners for name in owner.threads} == {thread.name}
    for channel in channels:
        channel.close(2.0)
    for channel in channels:
        assert channel.ended.wait(5.0)
    loop.join_if_idle(5.0)
    assert not thread.is_alive()
    assert all(owner.lost == [] for owner in owners)  # closed by us: no loss to report


def test_a_server_that_closes_is_reported_once_and_a_reused_descriptor_works(
    broker: EmbeddedBroker, loop: Loop
) -> None:
    first, second, keeper = Owner(), Owner(), Owner()
    keep = _authed(loop, broker.url, keeper)  # keeps the loop running throughout
    old = _authed(loop, broker.url, first)
    fd = old.transport.fileno()
    wait_until(lambda: first.batches)
    old.abort("cut from another thread")  # while the loop waits on the socket
    wait_until(lambda: first.lost)
    # the kernel hands out the lowest free descriptor: fill the holes below the old one
    fillers = []
    while True:
        filler = socket.socket()
        if filler.fileno() >= fd:
            filler.close()
            break
        fillers.append(filler)
    transport = _open(loop, broker.url)
    for filler in fillers:
        filler.close()
    assert transport.fileno() == fd
    new = loop.add(transport, second)
    new.send([protocol.encode_auth(TOKENS["bob"], 2, False)])
    wait_until(lambda: any(f.get("type") == "auth" for f in second.frames()))
    assert len(first.lost) == 1 and not second.lost
    for channel in (new, keep):
        channel.close(2.0)
        assert channel.ended.wait(5.0)


def test_an_owner_that_raises_loses_its_connection_but_not_the_others(
    broker: EmbeddedBroker, loop: Loop
) -> None:
    broken, healthy = Owner(), Owner()
    broken.fail_batches = True
    bad = _authed(loop, broker.url, broken)
    good = _authed(loop, broker.url, healthy)
    wait_until(lambda: broken.lost)
    assert bad.ended.is_set()
    good.send([protocol.encode_get_presence(None)])  # the healthy one is still served
    wait_until(lambda: any(f.get("type") == "presenceList" for f in healthy.frames()))
    good.close(2.0)
    assert good.ended.wait(5.0)


def test_frames_queued_from_many_threads_go_out_whole_and_in_each_thread_s_order(
    broker: EmbeddedBroker, loop: Loop
) -> None:
    owner = Owner()
    channel = _authed(loop, broker.url, owner)
    wait_until(lambda: owner.frames())

    def ask(n: int) -> None:
        for _ in range(n):
            channel.send([protocol.encode_get_presence(None)])

    threads = [threading.Thread(target=ask, args=(25,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # one answer each (a list, or a refusal over the token's rate): none torn or lost
    wait_until(
        lambda: sum(f.get("type") in ("presenceList", "error") for f in owner.frames()) == 100
    )
    assert not owner.lost  # no frame was torn: the broker kept the connection
    channel.close(2.0)
    assert channel.ended.wait(5.0)


def test_timers_run_on_the_loop_thread_in_deadline_order(loop: Loop) -> None:
    ran: list[tuple[str, str]] = []
    loop.call_later(0.2, lambda: ran.append(("late", threading.current_thread().name)))
    loop.call_later(0.05, lambda: ran.append(("early", threading.current_thread().name)))
    cancelled = loop.call_later(0.1, lambda: ran.append(("cancelled", "")))
    cancelled.cancel()
    wait_until(lambda: len(ran) == 2)
    time.sleep(0.15)
    assert [name for name, _ in ran] == ["early", "late"]
    assert {thread for _, thread in ran} == {loop.thread.name if loop.thread else ran[0][1]}


def test_many_clients_share_one_loop_thread(make_broker: Callable[..., EmbeddedBroker]) -> None:
    """(A fork gives the child a loop of its own: see test_reliability_fork.py.)"""
    broker = make_broker(allow_all=True)
    clients = [NoLag(f"many-{i}", url=broker.url) for i in range(50)]
    try:
        for client in clients:
            client.connect(timeout=5)
        loops = [t for t in threading.enumerate() if t.name.startswith("nolag-loop-")]
        assert len(loops) == 1
        assert shared_loop().thread is loops[0]
    finally:
        for client in clients:
            client.disconnect()
    assert shared_loop().thread is None  # the last disconnect() joined it
