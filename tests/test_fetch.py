"""fetch_presence: the REST call, its error mapping, and the socket fallback on a 404."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import TOKENS, connected, wait_until

from nolag import (
    AuthenticationError,
    ForbiddenError,
    NoLag,
    PresenceTimeoutError,
    RateLimitError,
)
from nolag.broker import EmbeddedBroker

# issue 14: fetch paths against both broker modes (Kraken mode has no REST endpoint, so
# the SDK's socket fallback runs there)
pytestmark = pytest.mark.both_brokers

FIXTURES = Path(__file__).parent / "fixtures"


class _NotFound(http.server.BaseHTTPRequestHandler):
    """A real HTTP server without the presence endpoint, like the open-source broker."""

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def no_rest() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, name="test-http-404", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.local_extension("tests the REST presence endpoint, a local extension Kraken lacks")
def test_fetch_presence_over_rest_returns_one_entry_per_actor(broker: EmbeddedBroker) -> None:
    with (
        connected(broker.url, TOKENS["alice"]) as a1,
        connected(broker.url, TOKENS["alice"]) as a2,
        connected(broker.url, TOKENS["bob"]) as bob,
    ):
        a1.set_presence({"device": "phone"}, room="general")
        a2.set_presence({"device": "laptop"}, room="general")
        bob.set_presence({"name": "Bob"}, room="general")
        wait_until(lambda: len(bob.get_all_presence("general")) == 2)
        wait_until(lambda: bob.get_presence("alice").connections == 2)  # type: ignore[union-attr]
        actors = {a.actor_token_id: a for a in bob.fetch_presence("general", timeout=5)}
        assert set(actors) == {"alice", "bob"}
        assert actors["alice"].connections == 2
        assert actors["alice"].presence in ({"device": "phone"}, {"device": "laptop"})
        assert actors["bob"].joined_at is not None and actors["bob"].room == "general"
        assert bob._rest_available is True


def test_fetch_presence_needs_no_socket() -> None:
    with (
        EmbeddedBroker(tokens_path=str(FIXTURES / "tokens.json")) as b,
        connected(b.url, TOKENS["bob"]) as bob,
    ):
        bob.set_presence({"name": "Bob"}, room="general")
        wait_until(lambda: bob.get_presence("bob"))
        offline = NoLag(TOKENS["alice"], url=b.url)
        assert [a.actor_token_id for a in offline.fetch_presence("general")] == ["bob"]
        assert not offline.connected


@pytest.mark.local_extension("tests the REST presence endpoint, a local extension Kraken lacks")
def test_rest_errors_are_typed(broker: EmbeddedBroker) -> None:
    with pytest.raises(AuthenticationError):
        NoLag("not-a-real-token", url=broker.url).fetch_presence("general", timeout=5)
    with pytest.raises(ForbiddenError) as info:
        NoLag(TOKENS["erin"], url=broker.url).fetch_presence("random", timeout=5)
    assert isinstance(info.value, PermissionError)
    assert info.value.room == "random"


def test_rest_rate_limit_carries_retry_after() -> None:
    tokens = str(FIXTURES / "tokens.json")
    with EmbeddedBroker(tokens_path=tokens, rest_rate=2.0) as b:
        client = NoLag(TOKENS["alice"], url=b.url)
        with pytest.raises(RateLimitError) as info:
            for _ in range(50):
                client.fetch_presence("general", timeout=5)
        assert info.value.retry_after is not None and info.value.retry_after >= 0


def test_a_404_falls_back_to_the_socket(broker: EmbeddedBroker, no_rest: str) -> None:
    with (
        connected(broker.url, TOKENS["bob"]) as bob,
        connected(broker.url, TOKENS["alice"], rest_url=no_rest) as alice,
    ):
        bob.set_presence({"name": "Bob"}, room="general")
        wait_until(lambda: bob.get_presence("bob"))
        actors = alice.fetch_presence("general", timeout=5)
        assert [(a.actor_token_id, dict(a.presence)) for a in actors] == [("bob", {"name": "Bob"})]
        assert alice._rest_available is False


def test_socket_fallback_needs_a_connection(broker: EmbeddedBroker, no_rest: str) -> None:
    client = NoLag(TOKENS["alice"], url=broker.url, rest_url=no_rest)
    with pytest.raises(Exception, match="connect"):
        client.fetch_presence("general", timeout=2)


def test_concurrent_socket_fetches_of_different_rooms_never_cross(
    broker: EmbeddedBroker, no_rest: str
) -> None:
    with (
        connected(broker.url, TOKENS["bob"]) as bob,
        connected(broker.url, TOKENS["carol"]) as carol,
        connected(broker.url, TOKENS["dave"]) as dave,
        connected(broker.url, "dev-token-fast", rest_url=no_rest) as alice,  # no rate limit
    ):
        bob.set_presence({"r": "general"}, room="general")
        carol.set_presence({"r": "random"}, room="random")
        dave.set_presence({"r": "random"}, room="random")
        wait_until(lambda: len(dave.get_all_presence("random")) == 2)
        wait_until(lambda: bob.get_presence("bob"))
        expected = {"general": {"bob"}, "random": {"carol", "dave"}}

        def fetch(i: int) -> tuple[str, set[str], set[object]]:
            room = "general" if i % 2 else "random"
            actors = alice.fetch_presence(room, timeout=10)
            return room, {a.actor_token_id for a in actors}, {a.presence["r"] for a in actors}

        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="fetcher") as pool:
            results = list(pool.map(fetch, range(200)))
        assert len(results) == 200
        for room, actors, rooms in results:
            assert actors == expected[room]
            assert rooms == {room}


def test_socket_fetch_times_out_with_a_typed_error(no_rest: str) -> None:
    tokens = str(FIXTURES / "tokens.json")
    with (
        EmbeddedBroker(tokens_path=tokens) as b,
        connected(b.url, TOKENS["alice"], rest_url=no_rest) as alice,
    ):
        # the request is answered after the deadline only if the broker is stalled;
        # a tiny timeout makes the wait run out before any reply can be processed
        with pytest.raises(PresenceTimeoutError):
            alice.fetch_presence("general", timeout=1e-6)
        assert alice.connected
