"""The /ws endpoint over real loopback sockets: auth, heartbeats, idle timeout, presence."""

from __future__ import annotations

import time
from typing import Any, Callable

import msgpack
import pytest
import requests
from helpers import EVENT_DATA_EXTENSIONS
from rawclient import Closed, RawClient

from nolag.broker import EmbeddedBroker

Connect = Callable[..., RawClient]
Records = list[dict[str, Any]]


def presence(
    client: RawClient, data: dict[str, Any], room: str | None = "general", **extra: Any
) -> None:
    """Send a presence frame (``room`` None: no roomId key at all)."""
    frame: dict[str, Any] = {"type": "presence", "data": data, **extra}
    if room is not None:
        frame["roomId"] = room
    client.send(frame)


def take(client: RawClient, n: int) -> list[Any]:
    """Exactly the next ``n`` frames."""
    return [client.recv() for _ in range(n)]


def kraken_view(frame: dict[str, Any]) -> dict[str, Any]:
    """A presence event without the local broker's extension keys."""
    data = {k: v for k, v in frame["data"].items() if k not in EVENT_DATA_EXTENSIONS}
    return {"type": frame["type"], "event": frame["event"], "data": data}


def recv_frames(records: Records, label: str, seqs: range) -> list[Any]:
    """The frames a transcript connection received within a seq range."""
    return [
        r["decoded"]
        for r in records
        if r["dir"] == "recv" and r["conn"].startswith(label) and r["seq"] in seqs
    ]


# -- auth -----------------------------------------------------------------------------


def test_auth_success_shape_and_refusal_keeps_the_socket_open(connect: Connect) -> None:
    client = connect()
    assert client.auth("not-a-real-token", 2) == {
        "type": "auth",
        "success": False,
        "error": "access_denied",
    }
    client.send_raw(b"")  # heartbeat before auth: ignored
    client.send({"type": "getPresence", "roomId": "general"})
    assert client.recv() == {"type": "error", "error": "not_authenticated"}
    assert client.auth("dev-token-sensor", 2) == {
        "type": "auth",
        "success": True,
        "actorTokenId": "sensor-1",
        "actorType": "device",
        "projectId": "demo-project",
        "protocolVersion": 2,
        "restoredSubscriptions": [],
        "rateLimit": 50.0,  # the local broker's extension
    }


@pytest.mark.parametrize(
    "frame",
    [
        [1, 2, 3],
        "hello",
        42,
        None,
        {"hello": "world"},
        {"type": "frobnicate"},
        {"type": "presence", "roomId": "general", "data": {}},
        {"type": "lobbySubscribe"},
    ],
)
def test_frames_before_auth_get_not_authenticated(connect: Connect, frame: Any) -> None:
    client = connect()
    client.send(frame)
    assert client.recv() == {"type": "error", "error": "not_authenticated"}
    client.send_raw(b"\xc1\xff")
    assert client.recv() == {"type": "error", "error": "not_authenticated"}
    client.send_text("{not json")
    assert client.recv() == {"type": "error", "error": "not_authenticated"}
    assert client.auth("dev-token-bob")["success"] is True


def test_auth_over_json_text_is_accepted_and_answered_in_binary(connect: Connect) -> None:
    client = connect()
    client.send_text('{"type": "auth", "token": "dev-token-bob", "protocolVersion": 2}')
    opcode, raw = client.recv_frame()
    assert opcode == 0x2
    assert msgpack.unpackb(raw)["actorTokenId"] == "bob"


def test_second_auth_keeps_the_session(connect: Connect) -> None:
    observer = connect("dev-token-bob")
    presence(observer, {"n": "bob"})
    take(observer, 2)
    client = connect("dev-token-alice")
    presence(client, {"n": "alice"})
    take(observer, 2)
    take(client, 2)
    assert client.auth("dev-token-alice")["actorTokenId"] == "alice"
    refused = client.auth("dev-token-carol")
    assert (refused["success"], refused["error"]) == (False, "already_authenticated")
    observer.expect_silence(0.2)  # no leave, join or update
    client.send({"type": "getPresence", "roomId": "general"})
    assert sorted(e["actorTokenId"] for e in client.recv()["data"]) == ["alice", "bob"]


# -- heartbeat, ping, idle ----------------------------------------------------------------


def test_heartbeat_is_echoed_after_auth_only(connect: Connect) -> None:
    client = connect()
    client.send_raw(b"")
    client.expect_silence(0.2)
    client.auth("dev-token-bob")
    for _ in range(3):
        client.send_raw(b"")
        assert client.recv_frame() == (0x2, b"")


def test_ping_is_answered_with_pong(connect: Connect) -> None:
    client = connect("dev-token-bob")
    client.ping(b"hb")
    assert client.recv_frame() == (0xA, b"hb")


def test_idle_socket_is_closed_with_1000_and_leaves(
    make_broker: Callable[..., EmbeddedBroker],
) -> None:
    broker = make_broker(idle_timeout=0.6)
    idle, busy, pinger, unauth = (RawClient(broker.url) for _ in range(4))
    try:
        idle.auth("dev-token-alice")
        busy.auth("dev-token-bob")
        pinger.auth("dev-token-carol")
        presence(idle, {})
        take(idle, 2)
        presence(busy, {})
        take(busy, 2)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            busy.send_raw(b"")
            pinger.ping(b"p")
            time.sleep(0.15)
        assert idle.wait_closed(2.0) == 1000
        assert unauth.wait_closed(2.0) == 1000  # before auth too
        frames = [f for f in busy.drain(0.3) if f != b""]
        assert [(f["event"], f["data"]["actor_token_id"]) for f in frames] == [("leave", "alice")]
        busy.send({"type": "getPresence", "roomId": "general"})
        assert busy.recv_type("presenceList")["data"][0]["actorTokenId"] == "bob"
        pinger.send_raw(b"")
        assert pinger.recv_frame()[1] in (b"", b"p")  # still open
    finally:
        for client in (idle, busy, pinger, unauth):
            client.close()


# -- presence -----------------------------------------------------------------------------


def test_join_update_leave_carry_room_and_connection_ids(connect: Connect) -> None:
    a = connect("dev-token-alice")
    b = connect("dev-token-bob")
    presence(a, {"name": "A"})
    join, update = take(a, 2)
    conn_a = join["data"]["connectionId"]
    joined_at = join["data"]["joinedAt"]
    assert isinstance(joined_at, int) and abs(joined_at - time.time()) < 60  # Unix seconds
    assert join == {
        "type": "presence",
        "event": "join",
        "roomId": "general",
        "data": {
            "actor_token_id": "alice",
            "connectionId": conn_a,
            "presence": {"name": "A"},
            "actorType": "user",
            "joinedAt": joined_at,
        },
    }
    assert update == dict(join, event="update")
    presence(b, {"name": "B"})
    b_events = take(b, 2)
    a_events = take(a, 2)
    assert a_events == b_events
    conn_b = b_events[0]["data"]["connectionId"]
    assert isinstance(conn_b, str) and conn_b != conn_a
    b.abort()
    leave = a.recv()
    assert leave == {
        "type": "presence",
        "event": "leave",
        "roomId": "general",
        "data": {"actor_token_id": "bob", "connectionId": conn_b},
    }


def test_room_switch_matches_transcript_04(
    connect: Connect, transcript: Callable[[str], Records]
) -> None:
    records = transcript("04")
    observer = connect("tok-actor-014")
    presence(observer, {"name": "observer"})
    take(observer, 2)
    mover = connect("tok-actor-015")
    presence(mover, {"status": "online"})
    assert [kraken_view(f) for f in take(mover, 2)] == recv_frames(records, "A", range(25, 28))
    assert [kraken_view(f) for f in take(observer, 2)] == recv_frames(records, "O", range(25, 29))
    presence(mover, {"status": "online", "room": "random"}, room="random")
    mover_frames = take(mover, 3)
    assert [kraken_view(f) for f in mover_frames] == recv_frames(records, "A", range(30, 33))
    assert [f["roomId"] for f in mover_frames] == ["general", "random", "random"]
    leave = observer.recv()
    assert [kraken_view(leave)] == recv_frames(records, "O", range(33, 34))
    observer.expect_silence(0.2)
    for client, room, actor in ((observer, "general", "actor-014"), (mover, "random", "actor-015")):
        client.send({"type": "getPresence", "roomId": room})
        assert [e["actorTokenId"] for e in client.recv()["data"]] == [actor]
    mover.send({"type": "getPresence", "roomId": "general"})
    assert [e["actorTokenId"] for e in mover.recv()["data"]] == ["actor-014"]


def test_two_sockets_of_one_actor_each_leave_once(connect: Connect) -> None:
    observer = connect("dev-token-carol")
    presence(observer, {"name": "observer"})
    take(observer, 2)
    phone, laptop = connect("dev-token-bob"), connect("dev-token-bob")
    presence(phone, {"device": "phone"})
    take(phone, 2)
    presence(laptop, {"device": "laptop"})
    take(laptop, 2)
    observer.drain(0.2)
    phone.drain(0.1)
    observer.send({"type": "getPresence", "roomId": "general"})
    entries = observer.recv()["data"]
    assert [(e["actorTokenId"], e["presence"]) for e in entries] == [
        ("carol", {"name": "observer"}),
        ("bob", {"device": "phone"}),
        ("bob", {"device": "laptop"}),
    ]
    assert len({e["connectionId"] for e in entries}) == 3
    phone.close()
    leave = observer.recv()
    assert leave["event"] == "leave" and leave["data"]["actor_token_id"] == "bob"
    assert laptop.recv() == leave  # the actor's other socket hears it too, as on Kraken
    laptop.abort()
    second = observer.recv()
    assert (
        second["event"] == "leave"
        and second["data"]["connectionId"] != leave["data"]["connectionId"]
    )
    observer.expect_silence(0.2)


def test_get_presence_entries_and_joined_at(connect: Connect) -> None:
    client = connect("dev-token-sensor")
    before = int(time.time())
    presence(client, {"v": 1})
    join, _ = take(client, 2)
    client.send({"type": "getPresence", "roomId": "general"})
    reply = client.recv()
    [entry] = reply["data"]
    assert reply["type"] == "presenceList" and reply["roomId"] == "general"
    assert entry == {
        "actorTokenId": "sensor-1",
        "actorType": "device",
        "connectionId": join["data"]["connectionId"],
        "joinedAt": entry["joinedAt"],
        "presence": {"v": 1},
        "status": "online",
        "updateSeq": entry["updateSeq"],
    }
    joined, first_seq = entry["joinedAt"], entry["updateSeq"]
    assert isinstance(joined, int) and before <= joined <= int(time.time())
    while int(time.time()) == joined:  # let the clock pass a second boundary
        time.sleep(0.05)
    presence(client, {"v": 2})
    client.recv()
    client.send({"type": "getPresence", "roomId": "general"})
    [entry] = client.recv()["data"]
    assert entry["joinedAt"] == joined and entry["presence"] == {"v": 2}
    assert entry["updateSeq"] > first_seq  # the order of the last change moved on
    client.send({"type": "getPresence", "roomId": "random"})
    assert client.recv() == {"type": "presenceList", "roomId": "random", "data": []}


def test_project_level_presence(connect: Connect) -> None:
    alice = connect("dev-token-alice")
    bob = connect("dev-token-bob")  # no presence of its own
    mallory = connect("dev-token-mallory")
    presence(alice, {"status": "online"}, room=None)
    for client in (alice, bob):
        join, update = take(client, 2)
        assert join["roomId"] is None and "roomId" in join
        assert (join["event"], update["event"]) == ("join", "update")
        assert join["data"]["presence"] == {"status": "online"}
    presence(alice, {"status": "away"}, room=None, roomId=None)  # explicit nil is the same
    assert bob.recv()["event"] == "update"
    alice.recv()
    presence(alice, {"in": "room"})  # a room presence besides the project-level one
    take(alice, 2)
    bob.expect_silence(0.2)  # not in the room
    bob.send({"type": "getPresence"})
    reply = bob.recv()
    assert reply["roomId"] is None and "roomId" in reply
    assert [(e["actorTokenId"], e["presence"]) for e in reply["data"]] == [
        ("alice", {"status": "away"})
    ]
    mallory.expect_silence(0.1)
    mallory.send({"type": "getPresence"})
    assert mallory.recv() == {"type": "presenceList", "roomId": None, "data": []}
    alice.close()
    leave = bob.recv()
    assert leave["event"] == "leave" and leave["roomId"] is None
    assert leave["data"]["actor_token_id"] == "alice"


def test_projects_are_isolated(connect: Connect) -> None:
    alice = connect("dev-token-alice")
    mallory = connect("dev-token-mallory")
    presence(alice, {"who": "alice"})
    take(alice, 2)
    presence(mallory, {"who": "mallory"})  # room 'general' of another project
    take(mallory, 2)
    alice.expect_silence(0.2)
    for client, who in ((alice, "alice"), (mallory, "mallory")):
        client.send({"type": "getPresence", "roomId": "general"})
        assert [e["actorTokenId"] for e in client.recv()["data"]] == [who]
    mallory.send({"type": "getPresence", "roomId": "room-general"})
    assert mallory.recv()["data"] == []
    mallory.send({"type": "lobbySubscribe", "lobbyId": "main"})
    assert mallory.recv() == {"type": "error", "error": "not_authorized", "lobbyId": "main"}
    alice.close()
    mallory.expect_silence(0.2)


@pytest.mark.parametrize("pv", [1, 2])
def test_rooms_the_token_may_not_use(connect: Connect, pv: int) -> None:
    bob = connect("dev-token-bob")
    presence(bob, {"who": "bob"}, room="random")
    take(bob, 2)
    erin = connect("dev-token-erin", pv)
    presence(erin, {"sneaky": True}, room="random")
    presence(erin, {"sneaky": True}, room="nosuch")
    erin.send({"type": "getPresence", "roomId": "random"})
    if pv == 1:  # Kraken's silence, and never another room's members
        assert erin.recv() == {"type": "presenceList", "roomId": "random", "data": []}
    else:
        assert erin.recv() == {"type": "error", "error": "not_authorized", "roomId": "random"}
        err = erin.recv()
        assert err["error"] == "unknown_topic" and err["code"] == 42940
        assert err["roomId"] == "nosuch" and err["hint"]
        assert erin.recv() == {"type": "error", "error": "not_authorized", "roomId": "random"}
    bob.expect_silence(0.2)
    bob.send({"type": "getPresence", "roomId": "random"})
    assert [e["actorTokenId"] for e in bob.recv()["data"]] == ["bob"]


@pytest.mark.parametrize("pv", [1, 2])
def test_internal_room_id_does_not_bypass_the_check(connect: Connect, pv: int) -> None:
    bob = connect("dev-token-bob")
    presence(bob, {"who": "bob"})
    take(bob, 2)
    alice = connect("dev-token-alice", pv)
    alice.send({"type": "getPresence", "roomId": "room-general"})
    reply = alice.recv()
    if pv == 1:
        assert reply == {"type": "presenceList", "roomId": "room-general", "data": []}
    else:
        assert reply["error"] == "unknown_topic" and reply["roomId"] == "room-general"
        assert alice.recv() == {"type": "presenceList", "roomId": "room-general", "data": []}
    presence(alice, {"x": 1}, room="room-general")
    if pv == 2:
        assert alice.recv()["error"] == "unknown_topic"
    alice.expect_silence(0.2)
    bob.expect_silence(0.1)


def test_plain_http_on_ws_path_is_refused(broker: EmbeddedBroker) -> None:
    response = requests.get(broker.url.replace("ws://", "http://"), timeout=5)
    assert response.status_code == 426


def test_closed_socket_reports_close(connect: Connect) -> None:
    client = connect("dev-token-bob")
    client.close()
    with pytest.raises(Closed):
        client.recv(0.5)
