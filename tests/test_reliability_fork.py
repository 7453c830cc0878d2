"""Fork safety with a real os.fork(): a child never writes to (or reads from) the parent's socket.

As under gunicorn --preload: the client is connected in the parent, the process forks,
and the child uses the inherited client. The parent's connection runs through a fault
proxy that records every byte the client side sends, so "the child wrote nothing on it"
is checked on the wire. With fork_policy="reconnect" (the default) the child opens its own
connection on first use; with "raise" it gets a clear NoLagError and sends nothing.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import msgpack
import pytest
from faultproxy import FaultProxy, client_messages, proxy_threads
from helpers import TOKENS, wait_until
from rawclient import RawClient

from nolag import NoLag, NoLagError
from nolag.broker import EmbeddedBroker

ROOM = "general"

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning"),
]


@pytest.fixture
def proxy(broker: EmbeddedBroker) -> Iterator[FaultProxy]:
    """A fault proxy in front of the test broker; its threads are joined afterwards."""
    with FaultProxy(broker.port) as fp:
        yield fp
    assert not proxy_threads()


def in_child(body: Callable[[], dict[str, Any]], timeout: float = 15.0) -> dict[str, Any]:
    """Run `body` in a forked child; return what it returned (or {"error": ...}).

    The child reports through a pipe and leaves with os._exit, so no test machinery of the
    parent runs in it. A child that does not finish within `timeout` is killed: a hang.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child process
        code = 1
        try:
            os.close(read_end)
            try:
                result = body()
                code = 0
            except BaseException as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([read_end], [], [], 0.1)
            if readable:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"the forked child did not finish within {timeout}s")
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    result["exit"] = os.waitstatus_to_exitcode(status)
    return result


def _extra(now: bytes | bytearray, before: bytes) -> list[tuple[int, Any]]:
    """The frames the client side sent on a connection since `before` was recorded."""
    old = len(client_messages(before))
    frames = client_messages(bytes(now))[old:]
    return [(op, msgpack.unpackb(p) if op == 2 and p else p) for op, p in frames]


def _quiet(link: Any) -> bytes:
    """What the parent sent once its own writes are done (its room list request went out)."""

    def listed() -> bool:
        sent = [f for op, f in _extra(link.c2s, b"") if op == 2 and isinstance(f, dict)]
        return {"type": "getPresence", "roomId": ROOM} in sent

    wait_until(listed)
    while True:
        before = bytes(link.c2s)
        time.sleep(0.2)
        if bytes(link.c2s) == before:
            return before


def _own_data(client: NoLag) -> Any:
    actor = client.get_presence("alice", ROOM)
    return dict(actor.presence) if actor is not None else None


def test_child_reconnects_with_its_own_socket_and_never_touches_the_parents(
    broker: EmbeddedBroker, proxy: FaultProxy
) -> None:
    parent = NoLag(TOKENS["alice"], url=proxy.url(), heartbeat_interval=30.0)
    bob = RawClient(broker.url, timeout=3)
    try:
        assert bob.auth(TOKENS["bob"], 2)["success"] is True
        bob.send({"type": "presence", "roomId": ROOM, "data": {"name": "Bob", "v": 1}})
        parent.connect(timeout=5)
        parent.set_presence({"name": "Alice", "proc": "parent"}, room=ROOM)
        wait_until(lambda: parent.get_presence("bob", ROOM) is not None)
        wait_until(lambda: _own_data(parent) == {"name": "Alice", "proc": "parent"})
        (link,) = proxy.links
        sent_before = _quiet(link)

        def child() -> dict[str, Any]:
            parent.get_all_presence(ROOM)  # first use: reconnect on a new socket
            wait_until(lambda: parent.get_presence("bob", ROOM) is not None, timeout=5)
            parent.set_presence({"name": "Alice", "proc": "child"}, room=ROOM)
            wait_until(lambda: _own_data(parent) == {"name": "Alice", "proc": "child"}, timeout=5)
            report = {
                "connected": parent.connected,
                "actor": parent.actor_id,
                "bob": dict(parent.get_presence("bob", ROOM).presence),  # type: ignore[union-attr]
            }
            parent.disconnect()
            return report

        report = in_child(child)
        assert report == {
            "connected": True,
            "actor": "alice",
            "bob": {"name": "Bob", "v": 1},
            "exit": 0,
        }
        # the child used its own connection...
        assert len(proxy.links) == 2
        child_sent = [
            msgpack.unpackb(p)
            for op, p in client_messages(bytes(proxy.links[1].c2s))
            if op == 2 and p  # binary frames; not the heartbeat or the close frame
        ]
        assert child_sent[0]["type"] == "auth"
        assert {"type": "presence", "roomId": ROOM, "data": {"name": "Alice", "proc": "child"}} in (
            child_sent
        )
        # ...and not one byte on the parent's, which still works
        assert _extra(link.c2s, sent_before) == []
        assert parent.connected and parent.stats.reconnects == 0
        bob.send({"type": "presence", "roomId": ROOM, "data": {"name": "Bob", "v": 2}})
        wait_until(lambda: parent.get_presence("bob", ROOM).presence["v"] == 2)  # type: ignore[union-attr]
        # the parent saw the child's socket as a second tab of alice, and its leave
        wait_until(lambda: parent.get_presence("alice", ROOM).connections == 1)  # type: ignore[union-attr]
        parent.set_presence({"name": "Alice", "proc": "parent", "after": True}, room=ROOM)
        wait_until(lambda: len(bytes(link.c2s)) > len(sent_before))
    finally:
        parent.disconnect()
        bob.close()


def test_child_with_fork_policy_raise_gets_a_clear_error_and_sends_nothing(
    broker: EmbeddedBroker, proxy: FaultProxy
) -> None:
    parent = NoLag(TOKENS["alice"], url=proxy.url(), heartbeat_interval=30.0, fork_policy="raise")
    try:
        parent.connect(timeout=5)
        parent.set_presence({"name": "Alice"}, room=ROOM)
        wait_until(lambda: parent.get_presence("alice", ROOM) is not None)
        (link,) = proxy.links
        sent_before = _quiet(link)

        def child() -> dict[str, Any]:
            report: dict[str, Any] = {}
            for name, call in (
                ("get_all_presence", lambda: parent.get_all_presence()),
                ("set_presence", lambda: parent.set_presence({"x": 1}, room=ROOM)),
                ("connect", lambda: parent.connect(timeout=2)),
            ):
                try:
                    call()
                    report[name] = "no error"
                except NoLagError as exc:
                    report[name] = str(exc)
            report["connected"] = parent.connected
            parent.disconnect()  # allowed: forgets the parent's connection, sends nothing
            return report

        report = in_child(child)
        assert report["exit"] == 0 and report["connected"] is False
        for name in ("get_all_presence", "set_presence", "connect"):
            assert "fork" in report[name], (name, report[name])
        time.sleep(0.2)
        assert len(proxy.links) == 1  # the child opened nothing
        assert _extra(link.c2s, sent_before) == []  # and wrote nothing on the parent's socket
        assert parent.connected and parent.get_presence("alice", ROOM) is not None
    finally:
        parent.disconnect()


def test_forking_while_the_client_is_busy_never_deadlocks_the_child(
    broker: EmbeddedBroker,
) -> None:
    parent = NoLag(TOKENS["alice"], url=broker.url, heartbeat_interval=30.0)
    sensor = RawClient(broker.url, timeout=3)
    stop = threading.Event()
    errors: list[BaseException] = []

    def stream() -> None:
        n = 0
        while not stop.wait(0.03):
            n += 1
            sensor.send({"type": "presence", "roomId": ROOM, "data": {"seq": n}})

    def busy() -> None:
        try:
            while not stop.is_set():
                handler = parent.on("presence:update", lambda actor: None)
                parent.get_all_presence(ROOM)
                parent.get_presence("sensor-1", ROOM)
                parent.off("presence:update", handler)
                time.sleep(0.001)  # leave the GIL to the broker, which runs in this process
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=stream, name="test-stream", daemon=True),
        threading.Thread(target=busy, name="test-busy", daemon=True),
    ]
    try:
        assert sensor.auth("dev-token-sensor", 2)["success"] is True
        sensor.send({"type": "presence", "roomId": ROOM, "data": {"seq": 0}})
        parent.connect(timeout=5)
        parent.set_presence({"name": "Alice"}, room=ROOM)
        wait_until(lambda: parent.get_presence("sensor-1", ROOM) is not None)
        for thread in threads:
            thread.start()
        wait_until(lambda: parent.get_presence("sensor-1", ROOM).presence["seq"] > 0)  # type: ignore[union-attr]

        def child() -> dict[str, Any]:
            wait_until(lambda: parent.get_presence("sensor-1", ROOM) is not None, timeout=8)
            seq = parent.get_presence("sensor-1", ROOM).presence["seq"]  # type: ignore[union-attr]
            parent.disconnect()
            return {"seq": seq}

        for _ in range(5):
            report = in_child(child, timeout=12)
            assert report["exit"] == 0 and report["seq"] > 0, report
        assert parent.connected and parent.stats.reconnects == 0
    finally:
        stop.set()
        for thread in threads:
            if thread.ident is not None:
                thread.join(5)
        parent.disconnect()
        sensor.close()
    assert not errors, errors
