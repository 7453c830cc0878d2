"""Lobbies over real sockets: snapshot, events, unsubscribe, authorisation, isolation."""

from __future__ import annotations

from typing import Any, Callable

from rawclient import RawClient

Connect = Callable[..., RawClient]


def enter(client: RawClient, room: str, data: dict[str, Any]) -> None:
    """Set presence in a room and consume the sender's own events."""
    before = client.drain(0.05)
    assert all(f.get("type") in ("presence", "lobbyPresence") for f in before), before
    client.send({"type": "presence", "roomId": room, "data": data})
    client.recv_until(
        lambda f: f.get("type") == "presence" and f["event"] == "update" and f["roomId"] == room
    )


def lobby_events(client: RawClient, n: int) -> list[tuple[str, str, str, Any]]:
    """The next ``n`` lobbyPresence events as (event, roomId, actorId, data)."""
    out = []
    for _ in range(n):
        frame = client.recv_type("lobbyPresence")
        assert frame["lobbyId"] == "main"
        out.append((frame["event"], frame["roomId"], frame["actorId"], frame["data"]))
    return out


def test_first_snapshot_is_correct_and_lists_every_room(connect: Connect) -> None:
    x = connect("dev-token-bob")
    enter(x, "general", {"name": "X"})
    watcher = connect("dev-token-alice")
    watcher.send({"type": "lobbySubscribe", "lobbyId": "main"})
    snap = watcher.recv()
    joined = snap["presence"]["general"]["bob"]["joinedAt"]
    assert isinstance(joined, int)
    assert snap == {
        "type": "lobbySubscribed",
        "lobbyId": "main",
        "presence": {
            "general": {
                "bob": {"actorTokenId": "bob", "joinedAt": joined, "presence": {"name": "X"}}
            },
            "random": {},
        },
    }
    watcher.send({"type": "getLobbyPresence", "lobbyId": "main"})
    assert watcher.recv() == dict(snap, type="lobbyPresenceList")


def test_events_follow_joins_updates_switches_and_leaves(connect: Connect) -> None:
    watcher = connect("dev-token-alice")
    watcher.send({"type": "lobbySubscribe", "lobbyId": "main"})
    assert watcher.recv()["presence"] == {"general": {}, "random": {}}
    y = connect("dev-token-carol")
    enter(y, "general", {"name": "Y"})
    assert lobby_events(watcher, 2) == [
        ("join", "general", "carol", {"name": "Y"}),
        ("update", "general", "carol", {"name": "Y"}),
    ]
    enter(y, "general", {"name": "Y", "status": "away"})
    assert lobby_events(watcher, 1) == [
        ("update", "general", "carol", {"name": "Y", "status": "away"})
    ]
    enter(y, "random", {"name": "Y"})
    assert lobby_events(watcher, 3) == [
        ("leave", "general", "carol", {}),
        ("join", "random", "carol", {"name": "Y"}),
        ("update", "random", "carol", {"name": "Y"}),
    ]
    y.abort()
    assert lobby_events(watcher, 1) == [("leave", "random", "carol", {})]
    watcher.send({"type": "lobbyUnsubscribe", "lobbyId": "main"})
    assert watcher.recv() == {"type": "lobbyUnsubscribed", "lobbyId": "main"}
    z = connect("dev-token-dave")
    enter(z, "random", {"name": "Z"})
    watcher.expect_silence(0.3)


def test_unsubscribe_without_subscription_and_not_allowed_lobbies(connect: Connect) -> None:
    erin = connect("dev-token-erin")
    erin.send({"type": "lobbyUnsubscribe", "lobbyId": "main"})
    assert erin.recv() == {"type": "lobbyUnsubscribed", "lobbyId": "main"}
    for kind in ("lobbySubscribe", "getLobbyPresence"):
        erin.send({"type": kind, "lobbyId": "main"})
        assert erin.recv() == {"type": "error", "error": "not_authorized", "lobbyId": "main"}
    alice = connect("dev-token-alice")
    alice.send({"type": "lobbySubscribe", "lobbyId": "nosuch"})
    assert alice.recv() == {"type": "error", "error": "not_authorized", "lobbyId": "nosuch"}
    alice.send({"type": "lobbySubscribe", "lobbyId": 7})
    assert alice.recv()["error"] == "invalid_message"


def test_one_entry_per_actor_with_several_sockets(connect: Connect) -> None:
    watcher = connect("dev-token-alice")
    watcher.send({"type": "lobbySubscribe", "lobbyId": "main"})
    watcher.recv()
    phone, laptop = connect("dev-token-bob"), connect("dev-token-bob")
    enter(phone, "general", {"device": "phone"})
    assert [e[0] for e in lobby_events(watcher, 2)] == ["join", "update"]
    enter(laptop, "general", {"device": "laptop"})
    assert lobby_events(watcher, 1) == [("update", "general", "bob", {"device": "laptop"})]
    watcher.send({"type": "getLobbyPresence", "lobbyId": "main"})
    view = watcher.recv_type("lobbyPresenceList")["presence"]["general"]
    assert list(view) == ["bob"] and view["bob"]["presence"] == {"device": "laptop"}
    laptop.close()  # the view falls back to the phone's presence; bob stays
    assert lobby_events(watcher, 1) == [("update", "general", "bob", {"device": "phone"})]
    phone.close()
    assert lobby_events(watcher, 1) == [("leave", "general", "bob", {})]


def test_lobbies_are_isolated_between_projects(connect: Connect) -> None:
    oscar = connect("dev-token-oscar")  # other project, its own lobby with slug 'main'
    oscar.send({"type": "lobbySubscribe", "lobbyId": "main"})
    assert oscar.recv() == {
        "type": "lobbySubscribed",
        "lobbyId": "main",
        "presence": {"general": {}},
    }
    alice = connect("dev-token-alice")
    alice.send({"type": "lobbySubscribe", "lobbyId": "main"})
    alice.recv()
    bob = connect("dev-token-bob")
    enter(bob, "general", {"p": "demo"})
    assert [e[2] for e in lobby_events(alice, 2)] == ["bob", "bob"]
    oscar.expect_silence(0.2)
    mallory = connect("dev-token-mallory")
    enter(mallory, "general", {"p": "other"})
    assert [e[:3] for e in lobby_events(oscar, 2)] == [
        ("join", "general", "mallory"),
        ("update", "general", "mallory"),
    ]
    alice.expect_silence(0.2)
