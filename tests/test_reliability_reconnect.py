"""Unexpected connection loss: reconnecting state, backoff with full jitter, giving up, stopping.

Every fault is real: the client talks to the local broker through a loopback fault proxy
that resets (RST) or refuses connections, or the broker is replaced on the same port.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy, proxy_threads
from helpers import TOKENS, nolag_threads, wait_until

import nolag
from nolag import AuthenticationError, ConnectionState, NoLag, NoLagOptions
from nolag.broker import EmbeddedBroker

# issue 14: presence, lobby and reconnect paths run against both broker modes
pytestmark = pytest.mark.both_brokers

TESTS = Path(__file__).resolve().parent
LIFECYCLE = ("connect", "disconnect", "reconnecting", "reconnect", "error")


@pytest.fixture
def proxy(broker: EmbeddedBroker) -> Iterator[FaultProxy]:
    """A fault proxy in front of the test broker; its threads are joined afterwards."""
    with FaultProxy(broker.port) as fp:
        yield fp
    assert not proxy_threads()


class Lifecycle:
    """The lifecycle events one client emits, in callback order, with their arrival times."""

    def __init__(self, client: NoLag) -> None:
        self.items: list[tuple[float, str, tuple[Any, ...]]] = []
        self._lock = threading.Lock()
        for name in LIFECYCLE:
            client.on(name, self._handler(name))

    def _handler(self, name: str) -> Any:
        def handle(*args: Any) -> None:
            with self._lock:
                self.items.append((time.monotonic(), name, args))

        return handle

    def names(self) -> list[str]:
        with self._lock:
            return [name for _, name, _ in self.items]

    def args(self, name: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return [args for _, n, args in self.items if n == name]

    def times(self, name: str) -> list[float]:
        with self._lock:
            return [t for t, n, _ in self.items if n == name]


def _client(url: str, **options: Any) -> NoLag:
    settings: dict[str, Any] = {
        "reconnect_initial_delay": 0.05,
        "reconnect_max_delay": 0.2,
        "heartbeat_interval": 5.0,
        "connect_timeout": 3.0,
    }
    settings.update(options)
    return NoLag(TOKENS["alice"], url=url, **settings)


def test_loss_goes_reconnecting_with_events_then_reconnects(proxy: FaultProxy) -> None:
    client = _client(proxy.url())
    events = Lifecycle(client)
    try:
        client.connect(timeout=5)
        proxy.block()  # keep it reconnecting long enough to look at it
        proxy.cut()
        wait_until(lambda: client.status is ConnectionState.RECONNECTING, timeout=3)
        assert not client.connected
        wait_until(lambda: len(events.args("reconnecting")) >= 2, timeout=5)
        proxy.unblock()
        wait_until(lambda: client.connected, timeout=5)
        wait_until(lambda: "reconnect" in events.names(), timeout=2)
        names = events.names()
        assert names[:3] == ["connect", "disconnect", "reconnecting"]
        assert names[-1] == "reconnect" and names.count("reconnect") == 1
        assert set(names[2:-1]) == {"reconnecting"}
        attempts = [args[0] for args in events.args("reconnecting")]
        assert attempts == list(range(1, len(attempts) + 1))
        assert client.stats.reconnects == 1
        assert client.status is ConnectionState.CONNECTED
    finally:
        client.disconnect()


def test_backoff_is_exponential_capped_with_full_jitter(proxy: FaultProxy) -> None:
    initial, factor, cap = 0.005, 2.0, 0.04
    client = _client(
        proxy.url(),
        reconnect_initial_delay=initial,
        reconnect_factor=factor,
        reconnect_max_delay=cap,
    )
    events = Lifecycle(client)
    try:
        client.connect(timeout=5)
        proxy.block()
        proxy.cut()
        wait_until(lambda: len(events.args("reconnecting")) >= 30, timeout=10)
        proxy.unblock()
        wait_until(lambda: client.connected, timeout=5)
        tries = events.args("reconnecting")
        starts = events.times("reconnecting")
        assert [a for a, _ in tries] == list(range(1, len(tries) + 1))
        for attempt, delay in tries:
            bound = min(cap, initial * factor ** (attempt - 1))
            assert 0.0 <= delay <= bound, (attempt, delay, bound)
        # each attempt really waited its delay before the next one was announced
        for (_, delay), t0, t1 in zip(tries, starts, starts[1:]):
            assert t1 - t0 >= delay - 0.005
        # full jitter: once capped, delays spread over [0, cap], not bunched at the cap
        capped = [d for a, d in tries if initial * factor ** (a - 1) >= cap]
        assert len(capped) >= 20
        assert min(capped) < cap / 2 < max(capped)
        assert len(set(capped)) == len(capped)
    finally:
        client.disconnect()


def test_reconnect_options_have_the_documented_defaults() -> None:
    opts = NoLagOptions()
    assert opts.reconnect is True
    assert opts.reconnect_initial_delay == 0.5
    assert opts.reconnect_max_delay == 30.0
    assert opts.reconnect_factor == 2.0
    assert opts.reconnect_max_attempts is None
    readme = (TESTS.parent / "docs" / "api.md").read_text(encoding="utf-8")  # NoLagOptions
    for name in (
        "reconnect_initial_delay",
        "reconnect_max_delay",
        "reconnect_factor",
        "reconnect_max_attempts",
    ):
        row = re.search(rf"^\| `{name}` \| `([^`]+)` \|", readme, re.MULTILINE)
        assert row, f"{name} is not in the option table of docs/api.md"
        assert row.group(1) == repr(getattr(opts, name)), name


def test_max_attempts_gives_up_with_an_error_and_stops_trying(proxy: FaultProxy) -> None:
    client = _client(proxy.url(), reconnect_initial_delay=0.01, reconnect_max_attempts=3)
    events = Lifecycle(client)
    try:
        client.connect(timeout=5)
        proxy.block()
        proxy.cut()
        wait_until(lambda: events.args("error"), timeout=5)
        (error,) = events.args("error")[0]
        assert isinstance(error, nolag.ConnectionError)
        assert "3 attempts" in str(error)
        assert [a for a, _ in events.args("reconnecting")] == [1, 2, 3]
        assert client.status is ConnectionState.DISCONNECTED
        tried = proxy.refused
        assert tried == 3
        time.sleep(0.3)
        assert proxy.refused == tried and proxy.accepted == 1  # nothing more
        # the connection threads ended on their own; the dispatcher waits for disconnect()
        wait_until(lambda: not [n for n in nolag_threads() if "reader" in n], timeout=3)
    finally:
        client.disconnect()


def test_unlimited_attempts_keep_trying_until_the_server_is_back(proxy: FaultProxy) -> None:
    client = _client(proxy.url(), reconnect_initial_delay=0.002, reconnect_max_delay=0.004)
    events = Lifecycle(client)
    try:
        client.connect(timeout=5)
        assert client.options.reconnect_max_attempts is None
        proxy.block()
        proxy.cut()
        wait_until(lambda: proxy.refused >= 40, timeout=10)
        assert not events.args("error")
        proxy.unblock()
        wait_until(lambda: client.connected, timeout=5)
        assert len(events.args("reconnecting")) >= 40
    finally:
        client.disconnect()


@pytest.mark.parametrize("caller", ["main thread", "reconnecting callback"])
def test_disconnect_during_backoff_stops_it_at_once(proxy: FaultProxy, caller: str) -> None:
    client = _client(proxy.url(), reconnect_initial_delay=20.0, reconnect_max_delay=20.0)
    events = Lifecycle(client)
    stopped = threading.Event()
    took: list[float] = []

    def stop_now(attempt: int, delay: float) -> None:
        started = time.monotonic()
        client.disconnect()
        took.append(time.monotonic() - started)
        stopped.set()

    try:
        client.connect(timeout=5)
        if caller == "reconnecting callback":
            client.on("reconnecting", stop_now)
        proxy.block()
        proxy.cut()
        wait_until(lambda: events.args("reconnecting"), timeout=3)
        if caller == "main thread":
            time.sleep(0.1)
            started = time.monotonic()
            client.disconnect()
            took.append(time.monotonic() - started)
        else:
            assert stopped.wait(5)
        assert took[0] < 1.0, f"disconnect() took {took[0]:.2f}s during a backoff"
        assert client.status is ConnectionState.DISCONNECTED
        attempts = proxy.accepted + proxy.refused
        time.sleep(0.5)
        assert proxy.accepted + proxy.refused == attempts  # no attempt after disconnect()
        assert "reconnect" not in events.names()
    finally:
        client.disconnect()


def test_auth_refused_on_reconnect_stops_retrying_and_reports_it(
    make_broker: Any, tokens_path: Path, tmp_path: Path
) -> None:
    first = make_broker()
    document = json.loads(tokens_path.read_text(encoding="utf-8"))
    del document["tokens"][TOKENS["alice"]]  # the token was revoked while we were away
    revoked = tmp_path / "tokens.json"
    revoked.write_text(json.dumps(document), encoding="utf-8")
    with FaultProxy(first.port) as fp:
        client = _client(fp.url(), reconnect_initial_delay=0.02)
        events = Lifecycle(client)
        second = EmbeddedBroker(tokens_path=revoked, port=first.port)
        try:
            client.connect(timeout=5)
            first.stop()
            second.start()
            wait_until(lambda: events.args("error"), timeout=10)
            (error,) = events.args("error")[0]
            assert isinstance(error, AuthenticationError)
            assert error.reason == "access_denied"
            wait_until(lambda: client.status is ConnectionState.DISCONNECTED, timeout=2)
            tried = fp.accepted + fp.refused
            time.sleep(0.5)
            assert fp.accepted + fp.refused == tried  # no retry after the refusal
            assert "reconnect" not in events.names()
            wait_until(lambda: second.connection_count() == 0, timeout=3)  # refused socket closed
        finally:
            client.disconnect()
            second.stop()
    assert not proxy_threads()
