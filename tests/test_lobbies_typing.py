"""Lobby contexts and the typing indicator, against the real local broker."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from helpers import TOKENS, connected, wait_until

from nolag import ActorPresence, ForbiddenError, NoLag, TypingIndicator
from nolag.broker import EmbeddedBroker

# issue 14: presence, lobby and reconnect paths run against both broker modes
pytestmark = pytest.mark.both_brokers


def _view(snapshot: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """A grouped view ({room: {actor: ActorPresence}}) as plain data."""
    return {
        room: {actor: dict(p.presence) for actor, p in members.items()}
        for room, members in snapshot.items()
    }


def _flat(people: Any) -> list[tuple[str | None, str, dict[str, Any]]]:
    """A tuple of ActorPresence as plain data, in its order."""
    assert isinstance(people, tuple), type(people)
    assert all(isinstance(p, ActorPresence) for p in people)
    return [(p.room, p.actor_token_id, dict(p.presence)) for p in people]


def _grouped(people: tuple[ActorPresence, ...]) -> dict[str, dict[str, ActorPresence]]:
    """The grouping of a flat tuple by room, as by_room() should give it."""
    rooms: dict[str, dict[str, ActorPresence]] = {}
    for p in people:
        assert p.room is not None
        rooms.setdefault(p.room, {})[p.actor_token_id] = p
    return rooms


def test_lobby_subscribe_returns_a_correct_snapshot(broker: EmbeddedBroker) -> None:
    with (
        connected(broker.url, TOKENS["bob"]) as bob,
        connected(broker.url, TOKENS["alice"]) as alice_general,
        connected(broker.url, TOKENS["alice"]) as alice_random,
        connected(broker.url, TOKENS["carol"]) as watcher,
    ):
        bob.set_presence({"name": "Bob"}, room="general")
        alice_general.set_presence({"name": "Alice"}, room="general")
        alice_random.set_presence({"name": "Alice"}, room="random")
        wait_until(lambda: bob.presence_count("general") == 2)
        wait_until(lambda: alice_random.get_presence("alice", room="random"))
        lobby = watcher.set_app("demo").set_lobby("main")
        assert lobby is watcher.set_lobby("main")
        snapshot = lobby.subscribe(timeout=5)
        # one tuple, rooms by slug; the same actor in two rooms is two memberships
        assert sorted(_flat(snapshot)) == [
            ("general", "alice", {"name": "Alice"}),
            ("general", "bob", {"name": "Bob"}),
            ("random", "alice", {"name": "Alice"}),
        ]
        assert [p.room for p in snapshot] == ["general", "general", "random"]
        assert lobby.get_all_presence() is snapshot  # cached while nothing changed
        assert _view(lobby.by_room()) == {
            "general": {"bob": {"name": "Bob"}, "alice": {"name": "Alice"}},
            "random": {"alice": {"name": "Alice"}},
        }
        assert lobby.by_room() == _grouped(snapshot)
        assert lobby.get_presence("alice", room="random") is not None
        assert lobby.presence_count() == 2 and lobby.presence_count("general") == 2
        assert _flat(lobby.fetch_presence(timeout=5)) == _flat(snapshot)
        assert watcher.get_all_presence() == ()  # watching a lobby is not being in its rooms


def test_lobby_get_all_presence_filters_by_room_and_is_cached(broker: EmbeddedBroker) -> None:
    with (
        connected(broker.url, TOKENS["bob"]) as bob,
        connected(broker.url, TOKENS["alice"]) as alice,
        connected(broker.url, TOKENS["carol"]) as watcher,
    ):
        lobby = watcher.set_lobby("main")
        lobby.subscribe(timeout=5)
        bob.set_presence({"name": "Bob"}, room="random")
        alice.set_presence({"name": "Alice"}, room="general")
        wait_until(lambda: len(lobby.get_all_presence()) == 2)
        everyone = lobby.get_all_presence()
        # rooms by slug, whatever order the joins came in
        assert _flat(everyone) == [
            ("general", "alice", {"name": "Alice"}),
            ("random", "bob", {"name": "Bob"}),
        ]
        assert _flat(lobby.get_all_presence("random")) == [("random", "bob", {"name": "Bob"})]
        assert lobby.get_all_presence(room_id="random") is lobby.get_all_presence("random")
        assert lobby.get_all_presence("nosuch") == ()
        with pytest.raises(TypeError, match="room or room_id"):
            lobby.get_all_presence("general", room_id="random")
        assert lobby.get_all_presence() is everyone
        assert lobby.by_room() == _grouped(everyone)
        bob.set_presence({"name": "Bob", "away": True}, room="random")
        wait_until(lambda: lobby.get_all_presence() is not everyone)
        changed = lobby.get_all_presence()
        assert _flat(changed)[1] == ("random", "bob", {"name": "Bob", "away": True})
        assert lobby.by_room() == _grouped(changed)


def test_an_unsubscribed_lobby_fetch_returns_the_servers_answer_as_a_tuple(
    broker: EmbeddedBroker, broker_compat: str
) -> None:
    with (
        connected(broker.url, TOKENS["bob"]) as bob,
        connected(broker.url, TOKENS["alice"]) as alice,
        connected(broker.url, TOKENS["carol"]) as watcher,
    ):
        bob.set_presence({"name": "Bob"}, room="random")
        alice.set_presence({"name": "Alice"}, room="general")
        wait_until(lambda: bob.get_presence("bob", "random"))
        wait_until(lambda: alice.get_presence("alice", "general"))
        lobby = watcher.set_lobby("main")
        fetched = lobby.fetch_presence(timeout=5)
        assert not lobby.subscribed
        if broker_compat == "kraken":
            # like Kraken, kraken mode answers {} for a lobby no one subscribed to yet
            assert fetched == ()
        else:
            assert _flat(fetched) == [
                ("general", "alice", {"name": "Alice"}),
                ("random", "bob", {"name": "Bob"}),
            ]
        assert lobby.get_all_presence() == ()  # no cache without a subscription


def test_lobby_events_carry_the_room_and_stop_after_unsubscribe(
    broker: EmbeddedBroker,
) -> None:
    with (
        connected(broker.url, TOKENS["bob"]) as bob,
        connected(broker.url, TOKENS["carol"]) as watcher,
    ):
        lobby = watcher.set_lobby("main")
        log: list[tuple[str, str, str | None, dict[str, Any]]] = []
        for name in ("presence:join", "presence:update", "presence:leave"):
            lobby.on(
                name, lambda a, n=name: log.append((n, a.actor_token_id, a.room, dict(a.presence)))
            )
        assert lobby.subscribe(timeout=5) == ()
        assert _view(lobby.by_room()) == {"general": {}, "random": {}}  # known, empty rooms
        bob.set_presence({"s": 1}, room="general")
        bob.set_presence({"s": 2}, room="general")
        wait_until(lambda: len(log) == 2)
        bob.set_presence({"s": 2}, room="random")
        wait_until(lambda: len(log) == 4)
        assert log == [
            ("presence:join", "bob", "general", {"s": 1}),
            ("presence:update", "bob", "general", {"s": 2}),
            ("presence:leave", "bob", "general", {"s": 2}),
            ("presence:join", "bob", "random", {"s": 2}),
        ]
        lobby.unsubscribe(timeout=5)
        assert lobby.get_all_presence() == () and lobby.by_room() == {}
        bob.set_presence({"s": 3}, room="random")
        time.sleep(0.3)
        assert len(log) == 4


def test_a_lobby_the_token_may_not_use_is_refused(broker: EmbeddedBroker) -> None:
    with connected(broker.url, TOKENS["erin"]) as erin:
        lobby = erin.set_lobby("main")
        with pytest.raises(ForbiddenError):
            lobby.subscribe(timeout=5)
        assert not lobby.subscribed
        assert erin.connected


def test_lobby_subscription_and_cache_are_restored_after_a_reconnect() -> None:
    broker = EmbeddedBroker(tokens_path="tests/fixtures/tokens.json").start()
    fast = {"reconnect_initial_delay": 0.05, "reconnect_max_delay": 0.2}
    try:
        with (
            connected(broker.url, TOKENS["bob"], **fast) as bob,
            connected(broker.url, TOKENS["carol"], **fast) as watcher,
        ):
            lobby = watcher.set_lobby("main")
            lobby.subscribe(timeout=5)
            bob.set_presence({"v": 1}, room="general")
            wait_until(lambda: lobby.get_presence("bob"))
            reconnected = threading.Event()
            watcher.on("reconnect", reconnected.set)
            broker.stop()
            broker.start()
            assert reconnected.wait(10)
            wait_until(lambda: bob.connected)
            bob.set_presence({"v": 2}, room="general")
            wait_until(
                lambda: (lobby.get_presence("bob") or ActorPresence("x")).presence == {"v": 2}
            )
            assert lobby.subscribed
    finally:
        broker.stop()


def test_typing_indicator_debounces_clears_and_keeps_base_fields(
    broker: EmbeddedBroker,
) -> None:
    with (
        connected(broker.url, TOKENS["alice"]) as alice,
        connected(broker.url, TOKENS["bob"]) as bob,
    ):
        room = alice.set_room("general")
        room.set_presence({"username": "Alice", "status": "online"})
        bob.set_presence({"watching": True}, room="general")
        wait_until(lambda: bob.get_presence("alice"))
        states: list[Any] = []
        bob.on(
            "presence:update",
            lambda a: (
                states.append(a.presence.get("isTyping")) if a.actor_token_id == "alice" else None
            ),
        )
        typing = TypingIndicator(room, idle=0.4, min_interval=5.0)
        workers = [
            threading.Thread(target=lambda: [typing.keystroke() for _ in range(50)])
            for _ in range(4)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(5)
        assert typing.typing
        wait_until(lambda: states == [True, False], timeout=5)  # one true, then idle → false
        assert not typing.typing
        final = bob.get_presence("alice")
        assert final is not None
        assert dict(final.presence) == {"username": "Alice", "status": "online", "isTyping": False}
        with TypingIndicator(alice, idle=10) as quick:  # the client's default room: project
            quick.keystroke()
        assert not quick.typing  # leaving the block stops it


def test_typing_indicator_validates_its_arguments() -> None:
    client = NoLag("t", url="ws://127.0.0.1:1/ws")
    with pytest.raises(ValueError, match="idle"):
        TypingIndicator(client, idle=0)
    with pytest.raises(ValueError, match="min_interval"):
        TypingIndicator(client, min_interval=-1)
    with pytest.raises(ValueError, match="key"):
        TypingIndicator(client, key="")
