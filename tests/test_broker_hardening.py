"""Local broker hardening found by probing (issue 14), each with its flag and close code.

- a second ``auth`` neither refills the rate bucket nor re-broadcasts presence;
- ``upgrade_timeout``: TCP connections that send no complete HTTP request are closed;
- ``auth_timeout``: WebSockets that never authenticate are closed with 1008, heartbeats
  before auth do not extend the deadline;
- ``max_connections`` / ``max_connections_per_address``: HTTP 503
  ``connection_limit_reached``; ``max_connections_per_token``: auth refused and close 4002;
- ``max_auth_failures``: refused auths per address are limited, then close 1008.

Everything runs over real loopback sockets against a real broker; the limits are set low
so that the tests stay short.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest
from helpers import TOKENS, wait_until
from rawclient import Closed, RawClient

from nolag.broker import BrokerConfig, EmbeddedBroker

MakeBroker = Callable[..., EmbeddedBroker]


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Raw TCP sockets opened by a test, all closed afterwards."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def tcp(broker: EmbeddedBroker, opened: list[socket.socket], data: bytes = b"") -> socket.socket:
    """A plain TCP connection to the broker that sends ``data`` (maybe nothing)."""
    sock = socket.create_connection((broker.host, broker.port), timeout=5)
    opened.append(sock)
    if data:
        sock.sendall(data)
    return sock


def read_until_eof(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (TimeoutError if not)."""
    sock.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not close the connection")
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            raise TimeoutError("the server did not close the connection") from None
        except ConnectionResetError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def close_of(client: RawClient, timeout: float = 5.0) -> tuple[Optional[int], str]:
    """Read until the server closes; its (code, reason)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("connection still open")
        try:
            client.recv_frame(left)
        except Closed as exc:
            return exc.code, exc.reason


def refused_503(response: bytes) -> dict[str, Any]:
    """The JSON body of an HTTP 503 connection_limit_reached answer."""
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), response[:200]
    decoded: dict[str, Any] = json.loads(body)
    assert decoded["error"] == "connection_limit_reached"
    return decoded


# -- a second auth ------------------------------------------------------------------------


def test_resending_auth_does_not_refill_the_rate_bucket_or_rebroadcast(
    make_broker: MakeBroker,
) -> None:
    # the probe: auth + presence in a loop on a 3 frames/s token
    broker = make_broker()
    with RawClient(broker.url) as watcher, RawClient(broker.url) as slow:
        watcher.auth(TOKENS["bob"])
        watcher.send({"type": "presence", "roomId": "general", "data": {"w": 1}})
        watcher.drain(0.2)
        assert slow.auth("dev-token-slow")["success"] is True
        started = time.monotonic()
        for n in range(20):
            slow.send({"type": "auth", "token": "dev-token-slow"})
            slow.send({"type": "presence", "roomId": "general", "data": {"n": n}})
        elapsed = time.monotonic() - started
        replies = slow.drain(0.5)
        seen = watcher.drain(0.3)
    limited = [f for f in replies if f.get("error") == "rate_limit_exceeded"]
    assert limited, "the bucket was refilled by the auths"
    kinds = [f["event"] for f in seen]
    assert "leave" not in kinds  # no session was ended and restarted
    assert kinds.count("join") == 1  # the first presence only
    # each frame (auths included) costs a token: at most burst + rate * time got through
    accepted = sum(1 for f in seen if f["event"] == "update")
    assert accepted <= 3 + 3 * (elapsed + 0.5) + 1


# -- the upgrade deadline -----------------------------------------------------------------


def test_silent_and_slow_tcp_connections_are_closed_by_the_upgrade_deadline(
    make_broker: MakeBroker, sockets: list[socket.socket]
) -> None:
    broker = make_broker(upgrade_timeout=0.5)
    silent = [tcp(broker, sockets) for _ in range(20)]
    slow = tcp(broker, sockets, b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # headers never end
    for sock in [*silent, slow]:
        assert read_until_eof(sock, 5.0) == b""
    with RawClient(broker.url) as client:  # real clients are served, past the deadline too
        assert client.auth(TOKENS["alice"])["success"] is True
        time.sleep(0.8)
        client.send_raw(b"")
        assert client.recv_frame(2) == (0x2, b"")


def test_without_the_upgrade_deadline_a_silent_connection_stays(
    make_broker: MakeBroker, sockets: list[socket.socket]
) -> None:
    broker = make_broker(upgrade_timeout=0)
    sock = tcp(broker, sockets)
    with pytest.raises(TimeoutError):
        read_until_eof(sock, 1.0)


def test_silent_sockets_cannot_lock_real_clients_out_for_long(
    make_broker: MakeBroker, sockets: list[socket.socket]
) -> None:
    # 150 idle sockets used to exhaust the descriptors; now the limit answers 503 at once,
    # and the upgrade deadline frees the slots
    broker = make_broker(upgrade_timeout=1.0, max_connections=40)
    idle = [tcp(broker, sockets) for _ in range(40)]
    refused_503(read_until_eof(tcp(broker, sockets), 5.0))
    for sock in idle:
        read_until_eof(sock, 5.0)

    def served() -> bool:
        try:
            with RawClient(broker.url) as client:
                return client.auth(TOKENS["alice"])["success"] is True
        except Exception:
            return False

    wait_until(served, timeout=5)


# -- the auth deadline --------------------------------------------------------------------


def test_an_unauthenticated_socket_is_closed_although_it_heartbeats(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(auth_timeout=0.6, idle_timeout=5)
    with RawClient(broker.url) as client:
        code: Optional[int] = None
        reason = ""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                client.send_raw(b"")  # a heartbeat before auth: ignored, extends nothing
                client.recv_frame(0.1)
            except TimeoutError:
                continue
            except (Closed, OSError) as exc:
                if isinstance(exc, Closed):
                    code, reason = exc.code, exc.reason
                break
        if code is None:
            code, reason = close_of(client)
    assert code == 1008
    assert reason == "auth_timeout: no successful auth within 0.6 s"


def test_refused_auths_do_not_extend_the_deadline_but_a_good_one_ends_it(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(auth_timeout=0.6)
    with RawClient(broker.url) as refused, RawClient(broker.url) as good:
        assert refused.auth("nope")["success"] is False
        assert good.auth(TOKENS["alice"])["success"] is True
        code, reason = close_of(refused)
        assert (code, reason.split(":")[0]) == (1008, "auth_timeout")
        time.sleep(0.3)  # past the deadline: an authenticated socket stays
        good.send_raw(b"")
        assert good.recv_frame(2) == (0x2, b"")


# -- connection limits --------------------------------------------------------------------


def test_connections_over_the_per_address_limit_get_http_503(
    make_broker: MakeBroker, sockets: list[socket.socket]
) -> None:
    broker = make_broker(max_connections_per_address=2)
    first, second = RawClient(broker.url), RawClient(broker.url)
    try:
        body = refused_503(read_until_eof(tcp(broker, sockets), 5.0))
        assert "max_connections_per_address" in body["hint"]
        second.close()
        wait_until(lambda: broker.connection_count() == 1)

        def served() -> bool:
            try:
                RawClient(broker.url).close()
                return True
            except Exception:
                return False

        wait_until(served, timeout=5)  # a freed slot is usable again
    finally:
        first.close()
        second.close()


def test_connections_over_the_total_limit_get_http_503(
    make_broker: MakeBroker, sockets: list[socket.socket]
) -> None:
    broker = make_broker(max_connections=1)
    with RawClient(broker.url):
        body = refused_503(read_until_eof(tcp(broker, sockets, b"GET /health HTTP/1.1\r\n"), 5))
        assert "max_connections" in body["hint"]


def test_a_token_over_its_connection_limit_is_refused_and_closed_with_4002(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(max_connections_per_token=2)
    with (
        RawClient(broker.url) as one,
        RawClient(broker.url) as two,
        RawClient(broker.url) as three,
        RawClient(broker.url) as other,
    ):
        assert one.auth(TOKENS["alice"])["success"] is True
        assert two.auth(TOKENS["alice"])["success"] is True
        assert three.auth(TOKENS["alice"]) == {
            "type": "auth",
            "success": False,
            "error": "connection_limit_reached",
        }
        code, reason = close_of(three)
        assert code == 4002
        assert reason.startswith("connection_limit_reached: this token already has 2")
        assert other.auth(TOKENS["bob"])["success"] is True  # other tokens are unaffected
        one.close()
        with RawClient(broker.url) as again:
            wait_until(lambda: again.auth(TOKENS["alice"])["success"] is True, timeout=5)


# -- failed logins ------------------------------------------------------------------------


def test_refused_auths_are_rate_limited_per_address(make_broker: MakeBroker) -> None:
    broker = make_broker(max_auth_failures=3, auth_failure_window=60)
    with RawClient(broker.url) as guesser:
        for n in range(3):
            assert guesser.auth(f"guess-{n}") == {
                "type": "auth",
                "success": False,
                "error": "access_denied",
            }
        guesser.send({"type": "auth", "token": "guess-3"})
        refusal = guesser.recv()
        assert (refusal["error"], refusal["code"]) == ("rate_limit_exceeded", 42910)
        code, reason = close_of(guesser)
        assert (code, reason) == (
            1008,
            "auth_rate_limited: over 3 refused auths in 60 s from this address",
        )
    with RawClient(broker.url) as again:  # the address stays blocked, even with a good token
        again.send({"type": "auth", "token": TOKENS["alice"]})
        assert again.recv()["error"] == "rate_limit_exceeded"
        assert close_of(again)[0] == 1008


def test_failed_logins_are_unlimited_with_zero(make_broker: MakeBroker) -> None:
    broker = make_broker(max_auth_failures=0)
    with RawClient(broker.url) as guesser:
        for n in range(30):
            assert guesser.auth(f"guess-{n}")["error"] == "access_denied"
        assert guesser.auth(TOKENS["alice"])["success"] is True


def test_the_limits_are_validated_with_the_field_named() -> None:
    for field, value in (
        ("upgrade_timeout", -1),
        ("auth_timeout", -1),
        ("max_connections", -1),
        ("max_connections_per_address", -1),
        ("max_connections_per_token", -1),
        ("max_auth_failures", -1),
        ("auth_failure_window", 0),
        ("lobby_forget_after", 0),
    ):
        with pytest.raises(ValueError, match=field):
            BrokerConfig(**{field: value})
    with pytest.raises(ValueError, match="compat must be one of local, kraken"):
        BrokerConfig(compat="krakn")
