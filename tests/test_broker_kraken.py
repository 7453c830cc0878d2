"""The local broker's Kraken mode (``compat="kraken"``, issue 14): Kraken's frames exactly.

Raw-socket tests pin each Kraken behaviour the mode reproduces (PROTOCOL.md and the
transcripts); the SDK tests at the end show the two SDK defects of issue 14 against it
(two lobbies sharing a room; a lobby the broker forgot) and are ``xfail(strict=True)``
until the SDK copes with them.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from helpers import connected, wait_until
from rawclient import RawClient

from nolag import ActorPresence
from nolag.broker import EmbeddedBroker
from nolag.broker.tokens import parse_tokens
from nolag.testing import token_document

Connect = Callable[..., RawClient]
FORGET = 1.0
"""The lobby forget delay of these tests (Kraken: about 300 s)."""


@pytest.fixture
def broker_compat() -> str:
    """Every broker of this module runs in Kraken mode."""
    return "kraken"


def presence(client: RawClient, room: Any, data: Any) -> None:
    """Send a presence frame (``room`` None leaves ``roomId`` out)."""
    frame: dict[str, Any] = {"type": "presence", "data": data}
    if room is not None:
        frame["roomId"] = room
    client.send(frame)


def take(client: RawClient, n: int) -> list[Any]:
    """The next ``n`` frames."""
    return [client.recv() for _ in range(n)]


# -- frames without extensions ------------------------------------------------------------


def test_frames_carry_no_local_extension(connect: Connect) -> None:
    a = connect()
    reply = a.auth("dev-token-alice", 2)
    assert reply == {
        "type": "auth",
        "success": True,
        "actorTokenId": "alice",
        "actorType": "user",
        "projectId": "demo-project",
        "protocolVersion": 2,
        "restoredSubscriptions": [],
    }
    presence(a, "general", {"n": 1})
    join, update = take(a, 2)
    assert join == {
        "type": "presence",
        "event": "join",
        "data": {"actor_token_id": "alice", "presence": {"n": 1}},
    }
    assert update == dict(join, event="update")
    a.send({"type": "getPresence", "roomId": "general"})
    [entry] = a.recv()["data"]
    assert set(entry) == {"actorTokenId", "joinedAt", "presence", "status"}
    a.send({"type": "getPresence"})  # no room: always empty, and no roomId key
    assert a.recv() == {"type": "presenceList", "data": []}


def test_silent_where_kraken_is_silent(connect: Connect) -> None:
    watcher = connect("dev-token-bob", 2)
    presence(watcher, "general", {"w": 1})
    take(watcher, 2)
    a = connect("dev-token-erin", 2)  # erin may use 'general' only
    presence(a, None, {"roomless": True})  # project-level presence: ignored
    presence(a, "nosuch", {"x": 1})  # unknown room, even on protocol 2
    presence(a, "random", {"x": 1})  # a room the token may not use
    a.send({"type": "presence", "roomId": "general"})  # no data
    a.send({"type": "presence", "roomId": None, "data": {"x": 1}})
    a.send_raw(b"\xc1")  # garbage
    a.send([1, 2, 3])  # not a map
    a.send({"type": "frobnicate"})  # unknown type
    a.send({"hello": "world"})  # no type
    a.send({"type": "getPresence", "roomId": "nosuch"})
    assert a.recv() == {"type": "presenceList", "roomId": "nosuch", "data": []}
    a.expect_silence(0.2)
    watcher.expect_silence(0.1)


def test_nil_and_non_map_data_are_broadcast_as_is(connect: Connect) -> None:
    watcher = connect("dev-token-bob")
    presence(watcher, "general", {"w": 1})
    take(watcher, 2)
    a = connect("dev-token-alice")
    presence(a, "general", {"n": 1})
    take(a, 2)
    take(watcher, 2)
    for data in ("online", 7, ["a", 1], None):
        a.send({"type": "presence", "roomId": "general", "data": data})
        want = {
            "type": "presence",
            "event": "update",
            "data": {"actor_token_id": "alice", "presence": data},
        }
        assert watcher.recv() == want
        assert a.recv() == want
    a.send({"type": "getPresence", "roomId": "general"})
    listed = {e["actorTokenId"]: e["presence"] for e in a.recv()["data"]}
    assert listed == {"alice": None, "bob": {"w": 1}}  # nil data: still listed
    # a Kraken defect stays refused: binary presence crashed every receiver there
    a.send({"type": "presence", "roomId": "general", "data": {"b": b"\x00\xff"}})
    assert a.recv()["error"] == "invalid_presence"
    watcher.expect_silence(0.1)


# -- lobbies ------------------------------------------------------------------------------

SHARED = token_document(lobbies={"main": ["general", "random"], "side": ["general"]})


@pytest.fixture
def shared_broker(make_broker: Callable[..., EmbeddedBroker]) -> EmbeddedBroker:
    """Kraken mode with lobbies 'main' and 'side' sharing 'general', forgotten after 1 s."""
    return make_broker(tokens=parse_tokens(SHARED), lobby_forget_after=FORGET)


@pytest.fixture
def raw(shared_broker: EmbeddedBroker) -> Iterator[Callable[[str], RawClient]]:
    """Authenticated raw clients on `shared_broker`: ``raw("alice")``."""
    clients: list[RawClient] = []

    def make(actor: str) -> RawClient:
        client = RawClient(shared_broker.url)
        clients.append(client)
        assert client.auth(f"test-token-{actor}")["success"] is True
        return client

    yield make
    for client in clients:
        client.close()


def test_lobby_events_carry_the_internal_id_and_the_first_snapshot_is_empty(
    raw: Callable[[str], RawClient],
) -> None:
    x = raw("bob")
    presence(x, "general", {"name": "X"})
    take(x, 2)
    watcher = raw("carol")
    watcher.send({"type": "lobbySubscribe", "lobbyId": "main"})
    assert watcher.recv() == {"type": "lobbySubscribed", "lobbyId": "main", "presence": {}}
    watcher.send({"type": "getLobbyPresence", "lobbyId": "main"})
    snapshot = watcher.recv()
    assert snapshot["type"] == "lobbyPresenceList" and snapshot["lobbyId"] == "main"
    assert set(snapshot["presence"]) == {"general", "random"}
    assert set(snapshot["presence"]["general"]) == {"bob"}
    y = raw("dave")
    presence(y, "random", {"name": "Y"})
    assert take(watcher, 2) == [
        {
            "type": "lobbyPresence",
            "event": kind,
            "lobbyId": "lobby-main",
            "roomId": "random",
            "actorId": "dave",
            "data": {"name": "Y"},
        }
        for kind in ("join", "update")
    ]
    y.close()
    leave = watcher.recv()
    assert (leave["event"], leave["lobbyId"], leave["data"]) == ("leave", "lobby-main", {})


def test_a_lobbys_rooms_come_from_the_subscribers_token(raw: Callable[[str], RawClient]) -> None:
    # the token file maps 'side' to 'general' only; Kraken uses the token's rooms
    watcher = raw("carol")
    watcher.send({"type": "lobbySubscribe", "lobbyId": "side"})
    watcher.recv()
    watcher.send({"type": "getLobbyPresence", "lobbyId": "side"})
    assert set(watcher.recv()["presence"]) == {"general", "random"}


def test_only_the_last_subscribed_lobby_sharing_a_room_gets_its_events(
    raw: Callable[[str], RawClient],
) -> None:
    watcher = raw("carol")
    for slug in ("main", "side"):
        watcher.send({"type": "lobbySubscribe", "lobbyId": slug})
        watcher.recv()
    bob = raw("bob")
    presence(bob, "general", {"b": 1})
    events = take(watcher, 2)
    assert {e["lobbyId"] for e in events} == {"lobby-side"}
    watcher.expect_silence(0.2)  # nothing for 'main'
    watcher.send({"type": "lobbySubscribe", "lobbyId": "main"})  # now main is last
    watcher.recv()
    presence(bob, "general", {"b": 2})
    assert watcher.recv()["lobbyId"] == "lobby-main"
    watcher.expect_silence(0.2)


def test_the_broker_forgets_a_lobby_after_its_last_subscribe(
    raw: Callable[[str], RawClient],
) -> None:
    bob = raw("bob")
    presence(bob, "general", {"b": 1})
    take(bob, 2)
    watcher = raw("carol")
    watcher.send({"type": "lobbySubscribe", "lobbyId": "main"})
    watcher.recv()
    time.sleep(FORGET + 0.3)
    watcher.send({"type": "getLobbyPresence", "lobbyId": "main"})
    assert watcher.recv() == {"type": "lobbyPresenceList", "lobbyId": "main", "presence": {}}
    presence(bob, "general", {"b": 2})
    watcher.expect_silence(0.3)  # events stopped although still subscribed
    watcher.send({"type": "lobbySubscribe", "lobbyId": "main"})  # re-subscribing revives it
    assert watcher.recv()["presence"] == {}  # asynchronously filled again: empty first
    presence(bob, "general", {"b": 3})
    assert watcher.recv()["data"] == {"b": 3}
    watcher.send({"type": "getLobbyPresence", "lobbyId": "main"})
    assert watcher.recv()["presence"]["general"]["bob"]["presence"] == {"b": 3}


# -- the SDK against Kraken's lobby quirks (issue 14, defects 1 and 2, fixed in nolag.lobby) --


@pytest.mark.parametrize("broker_compat", ["kraken"], indirect=True)
def test_sdk_two_lobbies_sharing_a_room_both_see_the_events(
    shared_broker: EmbeddedBroker,
) -> None:
    with (
        connected(shared_broker.url, "test-token-bob") as bob,
        connected(shared_broker.url, "test-token-carol") as watcher,
    ):
        main = watcher.set_lobby("main")
        side = watcher.set_lobby("side")
        main.subscribe(timeout=5)
        side.subscribe(timeout=5)
        bob.set_presence({"b": 1}, room="general")
        wait_until(lambda: main.get_presence("bob") and side.get_presence("bob"), timeout=3)


@pytest.mark.parametrize("broker_compat", ["kraken"], indirect=True)
def test_sdk_a_forgotten_lobby_does_not_make_everyone_leave(
    shared_broker: EmbeddedBroker,
) -> None:
    with (
        connected(shared_broker.url, "test-token-bob") as bob,
        connected(shared_broker.url, "test-token-carol") as watcher,
    ):
        lobby = watcher.set_lobby("main")
        left: list[str] = []
        lobby.on("presence:leave", lambda a: left.append(a.actor_token_id))
        bob.set_presence({"b": 1}, room="general")
        wait_until(lambda: bob.get_presence("bob", room="general"))
        lobby.subscribe(timeout=5)
        wait_until(lambda: lobby.get_presence("bob"), timeout=3)
        time.sleep(FORGET + 0.3)
        lobby.fetch_presence(timeout=5)  # the broker answers {} now
        time.sleep(0.2)
        assert lobby.get_presence("bob") is not None
        assert left == []


@pytest.mark.parametrize("broker_compat", ["kraken"], indirect=True)
def test_sdk_lobby_keep_alive_keeps_events_coming_past_the_forget_delay(
    shared_broker: EmbeddedBroker,
) -> None:
    """Kraken forgets a lobby's rooms a while after the last subscribe (here FORGET s):
    the client re-subscribes every lobby_refresh_interval, so events keep coming."""
    with (
        connected(shared_broker.url, "test-token-bob") as bob,
        connected(
            shared_broker.url, "test-token-carol", lobby_refresh_interval=FORGET / 3
        ) as watcher,
    ):
        lobby = watcher.set_lobby("main")
        lobby.subscribe(timeout=5)
        bob.set_presence({"b": 1}, room="general")
        wait_until(lambda: lobby.get_presence("bob"), timeout=3)
        time.sleep(FORGET * 2.5)  # without the keep-alive the broker forgot the rooms
        bob.set_presence({"b": 2}, room="general")
        wait_until(
            lambda: (lobby.get_presence("bob") or ActorPresence("x")).presence == {"b": 2},
            timeout=3,
        )


def test_sdk_local_mode_reference_for_the_two_defects(make_broker: Any) -> None:
    """The same two scenarios pass on the local broker (which has neither quirk)."""
    broker = make_broker(tokens=parse_tokens(SHARED), compat="local")
    with (
        connected(broker.url, "test-token-bob") as bob,
        connected(broker.url, "test-token-carol") as watcher,
    ):
        main, side = watcher.set_lobby("main"), watcher.set_lobby("side")
        main.subscribe(timeout=5)
        side.subscribe(timeout=5)
        bob.set_presence({"b": 1}, room="general")
        wait_until(lambda: main.get_presence("bob") and side.get_presence("bob"), timeout=3)


def test_no_rest_presence_endpoint_in_kraken_mode(broker: EmbeddedBroker) -> None:
    request = urllib.request.Request(
        broker.http_url + "/v1/presence?roomId=general",
        headers={"Authorization": "Bearer dev-token-alice"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 404
    caught.value.close()
    with urllib.request.urlopen(broker.http_url + "/health", timeout=5) as health:
        assert health.status == 200
