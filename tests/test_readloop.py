"""The process-wide read loop: one reader thread for every connection, over real sockets."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Callable

import msgpack
import pytest
from helpers import TOKENS, wait_until

from nolag import NoLag, protocol
from nolag.broker import EmbeddedBroker
from nolag.errors import ConnectionClosedError
from nolag.readloop import ReadLoop, read_loop
from nolag.transport import Transport


class Owner:
    """Records what the loop hands to a transport's owner, and on which thread."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.lost: list[ConnectionClosedError] = []
        self.threads: set[str] = set()
        self.fail_batches = False

    def on_batch(self, transport: Transport, batch: list[bytes]) -> None:
        self.threads.add(threading.current_thread().name)
        self.batches.append(batch)
        if self.fail_batches:
            raise RuntimeError("a bug in the owner")

    def on_lost(self, transport: Transport, error: ConnectionClosedError) -> None:
        self.threads.add(threading.current_thread().name)
        self.lost.append(error)

    def frames(self) -> list[dict[str, object]]:
        return [msgpack.unpackb(p) for batch in self.batches for p in batch]


def _authed(url: str, token: str = TOKENS["alice"]) -> Transport:
    """A transport whose auth frame is sent; the reply is left for the loop to read."""
    transport = Transport(url, 5.0)
    transport.send(protocol.encode_auth(token, 2, False))
    return transport


@pytest.fixture
def loop() -> Iterator[ReadLoop]:
    """A private loop (not the process's), checked to end with its last transport."""
    loop = ReadLoop()
    yield loop
    loop.join_if_idle(5.0)
    assert loop.thread is None


def test_every_transport_is_read_by_one_thread_that_ends_with_the_last(
    broker: EmbeddedBroker, loop: ReadLoop
) -> None:
    owners = [Owner() for _ in range(4)]
    transports = [_authed(broker.url) for _ in owners]
    for transport, owner in zip(transports, owners):
        loop.add(transport, owner.on_batch, owner.on_lost)
    for owner in owners:
        wait_until(lambda owner=owner: any(f.get("type") == "auth" for f in owner.frames()))
    thread = loop.thread
    assert thread is not None and thread.name.startswith("nolag-reader-") and thread.daemon
    assert {name for owner in owners for name in owner.threads} == {thread.name}
    for transport in transports:
        transport.close()
    loop.join_if_idle(5.0)
    assert not thread.is_alive()
    assert all(len(owner.lost) == 1 for owner in owners)  # each told once, even after close


def test_a_transport_aborted_elsewhere_is_reported_once_and_its_descriptor_can_be_reused(
    broker: EmbeddedBroker, loop: ReadLoop
) -> None:
    first, second = Owner(), Owner()
    keep = _authed(broker.url)  # keeps the loop running throughout
    keeper = Owner()
    loop.add(keep, keeper.on_batch, keeper.on_lost)
    old = _authed(broker.url)
    fd = old.socket.fileno()
    loop.add(old, first.on_batch, first.on_lost)
    wait_until(lambda: first.batches)
    old.abort()  # from this thread, while the loop waits on the socket
    wait_until(lambda: first.lost)
    # the kernel hands out the lowest free descriptor: fill the holes below the old one
    fillers = []
    while True:
        filler = socket.socket()
        if filler.fileno() >= fd:
            filler.close()
            break
        fillers.append(filler)
    new = _authed(broker.url)
    for filler in fillers:
        filler.close()
    assert new.socket.fileno() == fd
    loop.add(new, second.on_batch, second.on_lost)
    wait_until(lambda: any(f.get("type") == "auth" for f in second.frames()))
    assert len(first.lost) == 1 and not second.lost
    new.close()
    keep.close()
    wait_until(lambda: second.lost and keeper.lost)


def test_messages_put_back_before_adding_are_delivered_without_new_bytes(
    broker: EmbeddedBroker, loop: ReadLoop
) -> None:
    owner = Owner()
    transport = _authed(broker.url)
    reply = wait_until(transport.recv_batch)  # read the auth reply here, then put it back
    transport.unread([b"\x81\xa4type\xa5first", *reply])
    loop.add(transport, owner.on_batch, owner.on_lost)
    wait_until(lambda: owner.batches)
    assert owner.frames()[0] == {"type": "first"}
    assert owner.frames()[1]["type"] == "auth"
    transport.close()


def test_an_owner_that_raises_loses_its_connection_but_not_the_others(
    broker: EmbeddedBroker, loop: ReadLoop
) -> None:
    broken, healthy = Owner(), Owner()
    broken.fail_batches = True
    bad, good = _authed(broker.url), _authed(broker.url)
    loop.add(bad, broken.on_batch, broken.on_lost)
    loop.add(good, healthy.on_batch, healthy.on_lost)
    wait_until(lambda: broken.lost)
    assert bad.closed
    good.send(protocol.encode_get_presence(None))  # the healthy one is still read
    wait_until(lambda: any(f.get("type") == "presenceList" for f in healthy.frames()))
    good.close()


def test_a_closed_transport_added_late_is_reported_not_read(
    broker: EmbeddedBroker, loop: ReadLoop
) -> None:
    owner = Owner()
    transport = _authed(broker.url)
    transport.close()
    loop.add(transport, owner.on_batch, owner.on_lost)
    wait_until(lambda: owner.lost)
    assert not owner.batches


def test_many_clients_hold_one_reader_thread(make_broker: Callable[..., EmbeddedBroker]) -> None:
    """(A fork gives the child a loop of its own: see test_reliability_fork.py.)"""
    broker = make_broker(allow_all=True)
    clients = [NoLag(f"many-{i}", url=broker.url) for i in range(50)]
    try:
        for client in clients:
            client.connect(timeout=5)
        readers = [t for t in threading.enumerate() if t.name.startswith("nolag-reader-")]
        assert len(readers) == 1
        assert read_loop().thread is readers[0]
    finally:
        for client in clients:
            client.disconnect()
    assert read_loop().thread is None  # the last disconnect() joined it
