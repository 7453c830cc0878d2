"""Server error frames reach users as typed exceptions on the `error` event; the connection stays.

First from the real local broker, provoked the way users provoke them (a flood over the
token's rate, an oversize presence, an unknown room, a room the token may not use), then
every error shape from a real loopback server (tests/evilserver.py), including
``not_authenticated`` after auth, which the broker itself never sends to a client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from evilserver import EvilServer, evil_threads
from helpers import TOKENS, wait_until

from nolag import ForbiddenError, NoLag, RateLimitError, ServerError
from nolag.broker import EmbeddedBroker
from nolag.models import thaw

ROOM = "general"


class Errors:
    """The exceptions a client reports on its error event."""

    def __init__(self, client: NoLag) -> None:
        self.items: list[BaseException] = []
        self._lock = threading.Lock()
        client.on("error", self._add)

    def _add(self, error: BaseException) -> None:
        with self._lock:
            self.items.append(error)

    def of(self, name: str) -> list[ServerError]:
        with self._lock:
            return [e for e in self.items if isinstance(e, ServerError) and e.error == name]


def _truth(broker: EmbeddedBroker, actor: str, room: str = ROOM) -> Any:
    """The actor's presence data in `room` as the broker answers over REST (None if absent)."""
    probe = NoLag(TOKENS["bob"], url=broker.url)
    try:
        for entry in probe.fetch_presence(room, timeout=5):
            if entry.actor_token_id == actor:
                return thaw(entry.presence)
        return None
    finally:
        probe.disconnect()


@pytest.fixture
def clients() -> Iterator[Callable[..., NoLag]]:
    """Connected clients, all disconnected afterwards."""
    made: list[NoLag] = []

    def make(token: str, url: str, **options: Any) -> NoLag:
        client = NoLag(token, url=url, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.disconnect()


# ---------------------------------------------------------------- the real broker


def test_rate_limit_42910_is_a_rate_limit_error_and_the_connection_stays(
    broker: EmbeddedBroker, clients: Callable[..., NoLag]
) -> None:
    # a server without the REST endpoint (404), like Kraken: fetches go over the socket,
    # where a burst of them passes the token's rate (3 messages a second)
    client = clients("dev-token-slow", broker.url, rest_url=broker.http_url + "/no-rest")
    errors = Errors(client)
    client.connect(timeout=5)
    client.set_presence({"n": 1}, room=ROOM)
    raised: list[RateLimitError] = []
    for _ in range(6):
        try:
            client.fetch_presence(ROOM, timeout=3)
        except RateLimitError as exc:
            raised.append(exc)
    assert raised and all(e.code == 42910 for e in raised)
    wait_until(lambda: errors.of("rate_limit_exceeded"), timeout=5)
    error = errors.of("rate_limit_exceeded")[0]
    assert isinstance(error, RateLimitError) and error.code == 42910 and error.room == ROOM
    assert "rate_limit_exceeded" in str(error) and "42910" in str(error)
    assert client.connected and client.stats.reconnects == 0
    time.sleep(1.5)  # the bucket refills: the same connection serves again
    assert [a.actor_token_id for a in client.fetch_presence(ROOM, timeout=3)] == ["slow"]


def test_a_presence_flood_is_paced_under_the_advertised_rate_and_the_latest_lands(
    broker: EmbeddedBroker, clients: Callable[..., NoLag]
) -> None:
    client = clients("dev-token-slow", broker.url, max_presence_rate=None)
    errors = Errors(client)
    client.connect(timeout=5)
    for n in range(15):
        client.set_presence({"n": n}, room=ROOM)
    wait_until(lambda: _truth(broker, "slow") == {"n": 14}, timeout=10)  # latest wins
    assert not errors.of("rate_limit_exceeded")  # the client kept under the token's rate
    assert client.stats.presence_sent < 15 and client.connected


def test_message_too_large_42930_is_reported_and_the_connection_stays(
    make_broker: Callable[..., EmbeddedBroker], clients: Callable[..., NoLag]
) -> None:
    broker = make_broker(max_message_bytes=2000)
    client = clients(TOKENS["alice"], broker.url)
    errors = Errors(client)
    client.connect(timeout=5)
    client.set_presence({"blob": "x" * 5000}, room=ROOM)  # under our limit, over the server's
    wait_until(lambda: errors.of("message_too_large"), timeout=5)
    error = errors.of("message_too_large")[0]
    assert type(error) is ServerError and error.code == 42930
    assert "42930" in str(error)
    assert client.connected and client.stats.reconnects == 0
    client.set_presence({"small": True}, room=ROOM)
    wait_until(lambda: _truth(broker, "alice") == {"small": True})


def test_unknown_room_42940_carries_its_hint_and_the_connection_stays(
    broker: EmbeddedBroker, clients: Callable[..., NoLag]
) -> None:
    client = clients(TOKENS["alice"], broker.url)
    errors = Errors(client)
    client.connect(timeout=5)
    client.set_presence({"x": 1}, room="no-such-room")
    wait_until(lambda: errors.of("unknown_topic"), timeout=5)
    error = errors.of("unknown_topic")[0]
    assert error.code == 42940 and error.room == "no-such-room"
    assert error.hint and "slug" in error.hint and error.hint in str(error)
    assert client.connected
    client.set_presence({"x": 2}, room=ROOM)
    wait_until(lambda: _truth(broker, "alice") == {"x": 2})
    time.sleep(0.2)
    assert len(errors.of("unknown_topic")) == 1  # reported once, not re-sent to the bad room


def test_not_authorized_room_is_a_forbidden_error_and_the_connection_stays(
    broker: EmbeddedBroker, clients: Callable[..., NoLag]
) -> None:
    erin = clients(TOKENS["erin"], broker.url)  # may use "general" only
    errors = Errors(erin)
    erin.connect(timeout=5)
    erin.set_presence({"x": 1}, room="random")
    wait_until(lambda: errors.of("not_authorized"), timeout=5)
    error = errors.of("not_authorized")[0]
    assert isinstance(error, ForbiddenError) and isinstance(error, PermissionError)
    assert error.room == "random" and error.code is None
    assert erin.connected
    erin.set_presence({"x": 2}, room=ROOM)
    wait_until(lambda: _truth(broker, "erin") == {"x": 2})
    assert _truth(broker, "erin", "random") is None


# ---------------------------------------------------------------- every shape, from a real server


@pytest.fixture
def evil() -> Iterator[EvilServer]:
    with EvilServer() as server:
        yield server
    assert not evil_threads()


CASES = [
    # (frame, exception type, error, code, hint, attributes)
    ({"error": "rate_limit_exceeded", "code": 42910, "topic": "a/b/c"}, RateLimitError, {}),
    ({"error": "monthly_quota_exceeded", "code": 42920}, ServerError, {}),
    ({"error": "message_too_large", "code": 42930, "maxSizeBytes": 10}, ServerError, {}),
    (
        {"error": "unknown_topic", "code": 42940, "roomId": "x", "hint": "no such room"},
        ServerError,
        {"room": "x"},
    ),
    ({"error": "wake_failed", "code": 42950, "hint": "try later"}, ServerError, {}),
    ({"error": "not_authorized", "lobbyId": "main"}, ForbiddenError, {"lobby": "main"}),
    ({"error": "not_authenticated"}, ServerError, {}),
    ({"error": "something_new", "code": 99999, "hint": "from a newer server"}, ServerError, {}),
    ({"code": "not-a-number", "hint": 5}, ServerError, {}),
]


@pytest.mark.parametrize(
    ("fields", "kind", "extra"), CASES, ids=[c[0].get("error", "?") for c in CASES]
)
def test_every_error_frame_is_typed_and_the_connection_stays(
    evil: EvilServer,
    clients: Callable[..., NoLag],
    fields: dict[str, Any],
    kind: type[ServerError],
    extra: dict[str, Any],
) -> None:
    client = clients("t", evil.url, heartbeat_interval=30.0)
    errors = Errors(client)
    client.connect(timeout=5)
    evil.wait_authed()
    evil.send_map({"type": "error", **fields})
    wait_until(lambda: errors.items, timeout=5)
    (error,) = errors.items
    assert type(error) is kind
    name = fields.get("error", "unknown_error")
    code = fields.get("code") if isinstance(fields.get("code"), int) else None
    hint = fields.get("hint") if isinstance(fields.get("hint"), str) else None
    assert (error.error, error.code, error.hint) == (name, code, hint)
    for attribute, value in extra.items():
        assert getattr(error, attribute) == value
    assert name in str(error)
    if code is not None:
        assert str(code) in str(error)
    if hint is not None:
        assert hint in str(error)
    assert client.stats.server_errors == 1
    time.sleep(0.1)
    assert client.connected and client.stats.reconnects == 0
    assert len(evil.connections()) == 1


def test_error_exceptions_expose_a_message_attribute(
    evil: EvilServer, clients: Callable[..., NoLag]
) -> None:
    client = clients("t", evil.url, heartbeat_interval=30.0)
    errors = Errors(client)
    client.connect(timeout=5)
    evil.wait_authed()
    evil.send_map({"type": "error", "error": "unknown_topic", "code": 42940, "hint": "h"})
    wait_until(lambda: errors.items, timeout=5)
    assert isinstance(getattr(errors.items[0], "message", None), str)
