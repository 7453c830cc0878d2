"""Room contexts, occupancy, script helpers, coalescing and observers, on the real broker."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest
from helpers import TOKENS, Recorder, connected, wait_until

import nolag
from nolag import ActorPresence, NoLag, NoLagError, PresenceTimeoutError
from nolag.broker import EmbeddedBroker

# issue 14: presence, lobby and reconnect paths run against both broker modes
pytestmark = pytest.mark.both_brokers


def test_set_app_set_room_is_a_cached_context(broker: EmbeddedBroker) -> None:
    client = NoLag(TOKENS["alice"], url=broker.url)
    room = client.set_app("demo").set_room("general")
    assert isinstance(room, nolag.Room)
    assert room is client.set_room("general")
    assert room.slug == "general"
    with pytest.raises(ValueError, match="room"):
        client.set_room("")
    with pytest.raises(ValueError, match="app"):
        client.set_app("")


@pytest.mark.local_extension(
    "mixes room and project-level (roomless) presence, a local extension; Kraken "
    "ignores roomless presence"
)
def test_room_context_sees_only_its_room(broker: EmbeddedBroker) -> None:
    with (
        connected(broker.url, TOKENS["alice"]) as alice,
        connected(broker.url, TOKENS["bob"]) as bob,
        connected(broker.url, TOKENS["dave"]) as dave,
    ):
        general = alice.set_app("demo").set_room("general")
        in_room: list[tuple[str, str | None]] = []
        everywhere: list[tuple[str, str | None]] = []
        general.on("presence:join", lambda a: in_room.append((a.actor_token_id, a.room)))
        alice.on("presence:join", lambda a: everywhere.append((a.actor_token_id, a.room)))
        general.set_presence({"name": "Alice"})
        alice.set_presence({"name": "Alice (project)"})  # project level: a second membership
        bob.set_presence({"name": "Bob"}, room="general")
        dave.set_presence({"name": "Dave"})  # project level only
        wait_until(lambda: ("dave", None) in everywhere and ("bob", "general") in everywhere)
        wait_until(lambda: sorted(in_room) == [("alice", "general"), ("bob", "general")])
        assert sorted(a.actor_token_id for a in general.get_all_presence()) == ["alice", "bob"]
        assert {(a.actor_token_id, a.room) for a in alice.get_all_presence()} >= {
            ("alice", "general"),
            ("alice", None),  # the same actor in two places is two memberships
            ("dave", None),
        }
        me = general.get_presence("alice")
        assert me is not None and me.presence == {"name": "Alice"}
        assert general.own_presence() == {"name": "Alice"}
        assert {a.actor_token_id for a in general.fetch_presence(timeout=5)} == {"alice", "bob"}
        assert general.presence_count() == 2
        assert alice.presence_count() == 3  # alice, bob, dave: actors, not memberships


def test_every_set_of_presences_is_a_tuple_of_actor_presence_with_its_room(
    broker: EmbeddedBroker,
) -> None:
    """Issue 15: client, room and (in test_lobbies_typing) lobby calls share one shape."""
    with (
        connected(broker.url, TOKENS["carol"]) as carol,
        connected(broker.url, TOKENS["bob"]) as bob,
        connected(broker.url, TOKENS["alice"]) as alice,
    ):
        general = carol.set_room("general")
        general.set_presence({"name": "Carol"})
        wait_until(lambda: carol.get_presence("carol", "general"))
        bob.set_presence({"name": "Bob"}, room="general")
        wait_until(lambda: carol.get_presence("bob", "general"))
        alice.set_presence({"name": "Alice"}, room="general")
        wait_until(lambda: carol.get_presence("alice", "general"))

        def shape(people: object) -> list[tuple[str, str | None]]:
            assert isinstance(people, tuple), type(people)
            assert all(isinstance(p, ActorPresence) for p in people)
            return [(p.actor_token_id, p.room) for p in people]

        in_order = [("carol", "general"), ("bob", "general"), ("alice", "general")]
        assert shape(carol.get_all_presence()) == in_order  # the order they appeared
        assert shape(carol.get_all_presence("general")) == in_order
        assert shape(general.get_all_presence()) == in_order
        assert general.get_all_presence() is carol.get_all_presence("general")  # cached
        assert shape(carol.get_all_presence("random")) == []
        # the server's list: REST on the local broker, the socket in kraken mode
        assert sorted(shape(carol.fetch_presence("general", timeout=5))) == sorted(in_order)
        assert sorted(shape(general.fetch_presence(timeout=5))) == sorted(in_order)
        assert sorted(shape(bob.fetch_presence(room_id="general", timeout=5))) == sorted(in_order)


def test_switching_rooms_moves_the_presence(broker: EmbeddedBroker) -> None:
    with (
        connected(broker.url, TOKENS["alice"]) as alice,
        connected(broker.url, TOKENS["bob"]) as bob,
    ):
        seen = Recorder(bob)
        bob.set_presence({"b": 1}, room="general")
        alice.set_presence({"a": 1}, room="general")
        wait_until(lambda: alice.get_presence("bob", room="general"))
        alice.set_presence({"a": 2}, room="random")
        wait_until(lambda: seen.names("alice") == ["presence:join", "presence:leave"])
        wait_until(lambda: alice.get_presence("alice", room="random"))
        assert alice.room == "random"
        assert alice.get_all_presence("general") == ()  # not in general any more
        assert alice.get_presence("alice", room="random").presence == {"a": 2}  # type: ignore[union-attr]


def test_presence_count_counts_actors_not_sockets(broker: EmbeddedBroker) -> None:
    with (
        connected(broker.url, TOKENS["alice"]) as tab1,
        connected(broker.url, TOKENS["alice"]) as tab2,
        connected(broker.url, TOKENS["bob"]) as bob,
    ):
        tab1.set_presence({"tab": 1}, room="general")
        tab2.set_presence({"tab": 2}, room="general")
        bob.set_presence({"b": 1}, room="general")
        wait_until(lambda: (bob.get_presence("alice") or ActorPresence("x")).connections == 2)
        assert bob.presence_count("general") == 2
        assert bob.presence_count() == 2


def test_wait_for_presence_by_id_and_predicate(broker: EmbeddedBroker) -> None:
    with (
        connected(broker.url, TOKENS["alice"]) as alice,
        connected(broker.url, TOKENS["bob"]) as bob,
    ):
        alice.set_presence({"status": "online"}, room="general")
        threading.Timer(0.2, bob.set_presence, ({"status": "away"},), {"room": "general"}).start()
        found = alice.wait_for_presence("bob", timeout=5)
        assert found.actor_token_id == "bob"
        away = alice.wait_for_presence(lambda a: a.presence.get("status") == "away", timeout=5)
        assert away.actor_token_id == "bob"
        with pytest.raises(PresenceTimeoutError):
            alice.wait_for_presence("nobody", timeout=0.3)
        with pytest.raises(TypeError, match="predicate"):
            alice.wait_for_presence(42, timeout=1)  # type: ignore[arg-type]


def test_wait_returns_when_disconnected_or_on_timeout(broker: EmbeddedBroker) -> None:
    client = NoLag(TOKENS["alice"], url=broker.url)
    assert client.wait(timeout=0.1) is True  # never connected: nothing to wait for
    client.connect(timeout=5)
    assert client.wait(timeout=0.3) is False
    threading.Timer(0.3, client.disconnect).start()
    assert client.wait(timeout=10) is True


def test_wait_is_interrupted_by_ctrl_c_without_a_signal_handler(
    broker: EmbeddedBroker,
) -> None:
    script = textwrap.dedent(
        f"""
        import signal, sys
        from nolag import NoLag
        client = NoLag({TOKENS["alice"]!r}, url={broker.url!r})
        client.connect(timeout=5)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        print("waiting", flush=True)
        try:
            client.wait()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        finally:
            client.disconnect()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "waiting"
        time.sleep(0.2)
        proc.send_signal(subprocess.signal.SIGINT)  # type: ignore[attr-defined]
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait(5)
    assert proc.returncode == 0, err
    assert out.strip() == "interrupted"


def test_a_burst_of_set_presence_is_coalesced(broker: EmbeddedBroker) -> None:
    with (
        connected(broker.url, TOKENS["alice"]) as alice,
        connected(broker.url, TOKENS["bob"]) as bob,
        connected(broker.url, TOKENS["carol"]) as carol,
    ):
        bob.set_presence({"watching": True}, room="general")
        carol.set_presence({"watching": True}, room="general")
        errors: list[Exception] = []
        alice.on("error", errors.append)
        started = time.monotonic()
        for i in range(1000):
            alice.set_presence({"n": i}, room="general")
        elapsed = time.monotonic() - started
        for watcher in (bob, carol):
            wait_until(
                lambda w=watcher: (
                    (w.get_presence("alice") or ActorPresence("x")).presence == {"n": 999}
                ),
                timeout=10,
            )
        sent = alice.stats.presence_sent
        rate = alice._session.bucket.rate if alice._session.bucket else 0.0
        # the token allows 50 frames/s (80% of it is 40); max_presence_rate is lower: 20
        assert rate == pytest.approx(20.0)
        assert sent <= rate / 2 + rate * (elapsed + 1.0) + 2
        assert sent < 100
        assert alice.stats.presence_coalesced > 0
        assert errors == []


@pytest.mark.local_extension(
    "the SDK paces itself by the auth reply's rateLimit key, a local extension "
    "(Kraken sends none and does not limit presence)"
)
def test_a_slow_token_is_never_pushed_over_its_rate(broker: EmbeddedBroker) -> None:
    with (
        connected(broker.url, "dev-token-slow") as slow,
        connected(broker.url, TOKENS["bob"]) as bob,
    ):
        errors: list[Exception] = []
        slow.on("error", errors.append)
        bob.set_presence({"watching": True}, room="general")
        for i in range(50):
            slow.set_presence({"n": i}, room="general")
            time.sleep(0.01)
        wait_until(
            lambda: (bob.get_presence("slow") or ActorPresence("x")).presence == {"n": 49},
            timeout=10,
        )
        assert errors == []  # the broker never had to refuse a frame


def test_observer_never_announces_presence(broker: EmbeddedBroker) -> None:
    with (
        connected(broker.url, TOKENS["bob"]) as bob,
        connected(broker.url, TOKENS["alice"], observer=True) as watcher,
    ):
        bob.set_presence({"b": 1}, room="general")
        with pytest.raises(NoLagError, match="observer"):
            watcher.set_presence({"hidden": False}, room="general")
        lobby = watcher.set_app("demo").set_lobby("main")
        snapshot = lobby.subscribe(timeout=5)
        assert [(a.room, a.actor_token_id) for a in snapshot] == [("general", "bob")]
        assert [a.actor_token_id for a in bob.fetch_presence("general")] == ["bob"]
        assert bob.get_presence("alice") is None


def test_joined_at_and_actor_type_do_not_depend_on_how_the_cache_learned(
    broker: EmbeddedBroker, broker_compat: str
) -> None:
    """Bob learns Alice from her join event, Alice learns Bob from her join list: both see
    a `joined_at`, and a later list neither moves it nor fires an update. `actor_type` is
    the broker's: the local broker reports it everywhere, Kraken nowhere."""
    expected_type = None if broker_compat == "kraken" else "user"
    with (
        connected(broker.url, TOKENS["bob"]) as bob,
        connected(broker.url, TOKENS["alice"]) as alice,
    ):
        events = Recorder(bob)
        bob.set_presence({"name": "Bob"}, room="general")
        wait_until(lambda: bob.get_presence("bob", "general"))
        before = time.time()
        alice.set_presence({"name": "Alice"}, room="general")
        from_event = wait_until(lambda: bob.get_presence("alice", "general"))
        from_list = wait_until(lambda: alice.get_presence("bob", "general"))
        after = time.time()
        assert from_event.joined_at is not None and from_list.joined_at is not None
        assert before - 1.0 <= from_event.joined_at <= after + 1.0  # seconds, not ms
        assert from_list.joined_at <= after + 1.0
        assert from_event.actor_type == expected_type == from_list.actor_type
        # a list reconciles bob's cache: alice's record is unchanged, no update fires
        listed = bob.fetch_presence("general", timeout=5)
        assert {a.actor_token_id for a in listed} == {"alice", "bob"}
        # (over REST, the fetch asks for a socket list too: bob's next own update is
        # echoed after that list's reply, on the same socket)
        bob.set_presence({"name": "Bob", "n": 1}, room="general")
        wait_until(lambda: (bob.get_presence("bob", "general") or from_event).presence.get("n"))
        assert bob.get_presence("alice", "general") == from_event
        assert events.of("alice") == [("presence:join", {"name": "Alice"})]
