"""Interop with the official asyncio NoLag SDK (issue #7): local broker, nolag and official clients.

The official client runs in its own virtualenv and process (see official.py); every
frame it sends or reads is reported from its real socket, so the tests check the wire
as well as what its API returns. Expected frames are the real broker's, from
shared/transcripts (cited as "transcript NN #line"), compared after removing the local
broker's documented extensions (``roomId`` in events, ``connectionId``, ``actorType``,
``updateSeq`` in list entries, ``rateLimit`` in the auth reply).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import helpers
import pytest

if not helpers.RUN_INTEROP:
    pytest.skip(helpers.INTEROP_SKIP, allow_module_level=True)

from faultproxy import FaultProxy
from helpers import Recorder, wait_until
from official import OfficialClient

from nolag import NoLag
from nolag.broker import EmbeddedBroker

# the session fixture that installs the official SDK is not timed; each test is
pytestmark = pytest.mark.timeout(60, func_only=True)

ALICE = "dev-token-alice"
Official = Callable[..., OfficialClient]

FAST_NOLAG = {"reconnect_initial_delay": 0.05, "reconnect_max_delay": 0.3}
"""Options for nolag clients that must come back quickly after a broker restart."""

FAST_OFFICIAL = {"reconnect_interval": 0.2, "max_reconnect_attempts": 50}
"""Official SDK options: retry every 0.2 s (its default is 5 s, 10 attempts)."""


def kraken_view(frame: dict[str, Any]) -> dict[str, Any]:
    """A frame as the real broker sends it: the local broker's extensions taken out."""
    out = dict(frame)
    if out.get("type") == "auth":
        out.pop("rateLimit", None)
    elif out.get("type") == "presence":
        out.pop("roomId", None)
        extensions = helpers.EVENT_DATA_EXTENSIONS
        out["data"] = {k: v for k, v in out["data"].items() if k not in extensions}
    elif out.get("type") == "presenceList":
        if out.get("roomId") is None:
            out.pop("roomId", None)
        out["data"] = [
            {k: v for k, v in entry.items() if k not in ("connectionId", "actorType", "updateSeq")}
            for entry in out["data"]
        ]
    return out


def event(kind: str, actor: str, presence: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A presence event frame as the real broker sends it (transcript 02)."""
    data: dict[str, Any] = {"actor_token_id": actor}
    if presence is not None:
        data["presence"] = presence
    return {"type": "presence", "event": kind, "data": data}


def connect_official(
    official: Official, url: str, token: str = ALICE, **options: Any
) -> tuple[OfficialClient, dict[str, Any]]:
    """A started, connected official client and what its connect returned."""
    client = official()
    info = client.call("connect", token=token, url=url, options=options)
    return client, info


def errors(client: OfficialClient, since: int = 0) -> list[dict[str, Any]]:
    """The error events the official SDK raised (server error frames included)."""
    return [e["error"] for e in client.events()[since:] if e.get("event") == "error"]


def recorded(recorder: Recorder, actor: str) -> Callable[[], list[tuple[str, dict[str, Any]]]]:
    """A poller of one actor's events in a nolag Recorder."""
    return lambda: recorder.of(actor)


def by_actor_official(entries: list[dict[str, Any]]) -> dict[str, tuple[Any, Any]]:
    """An official presence list as actor id -> (presence, joinedAt)."""
    return {e["actorTokenId"]: (e["presence"], e["joinedAt"]) for e in entries}


def by_actor_nolag(actors: Any) -> dict[str, tuple[Any, Any]]:
    """A nolag presence list as actor id -> (presence, joined_at)."""
    return {a.actor_token_id: (dict(a.presence), a.joined_at) for a in actors}


@pytest.fixture
def observer(broker: EmbeddedBroker) -> Iterator[Callable[..., tuple[NoLag, Recorder]]]:
    """Factory of nolag clients recording events from before connect; all disconnected after."""
    clients: list[NoLag] = []

    def make(token: str, **options: Any) -> tuple[NoLag, Recorder]:
        client = NoLag(token, url=broker.url, **options)
        clients.append(client)
        recorder = Recorder(client)  # before connect: its snapshot on entry is recorded too
        client.connect(timeout=5)
        return client, recorder

    yield make
    for client in reversed(clients):
        client.disconnect()


# -- 1. the official SDK alone against the local broker --------------------------------


def test_official_sdk_connects_sets_updates_fetches_and_disconnects(
    broker: EmbeddedBroker, official: Official
) -> None:
    """Auth, room presence, update, list, project presence and close, frame by frame."""
    client, info = connect_official(official, broker.url)
    assert info == {
        "actor_id": "alice",
        "project_id": "demo-project",
        "actor_type": "user",
        "protocol_version": 2,
        "status": "connected",
    }
    # transcript 01 #7-8: the auth frame and its camelCase reply
    assert client.frames("sent") == [
        {"type": "auth", "token": ALICE, "protocolVersion": 2},
    ]
    assert [kraken_view(f) for f in client.frames("recv")] == [
        {
            "type": "auth",
            "success": True,
            "actorTokenId": "alice",
            "actorType": "user",
            "projectId": "demo-project",
            "protocolVersion": 2,
            "restoredSubscriptions": [],
        }
    ]
    assert broker.connection_count() == 1

    # room scoped: join + update to the sender (transcript 02 #5-7)
    online = {"name": "A", "status": "online"}
    first_set = int(time.time())
    mark = client.mark()
    client.call("set_presence", data=online, room="general")
    client.wait_event(lambda e: e["event"] == "presence:update", since=mark)
    assert client.frames("sent", mark) == [
        {"type": "presence", "data": online, "roomId": "general"}
    ]
    received = client.frames("recv", mark)
    assert [kraken_view(f) for f in received] == [
        event("join", "alice", online),
        event("update", "alice", online),
    ]
    assert {f["roomId"] for f in received} == {"general"}  # the local broker's extension
    assert client.presence_events(since=mark) == [
        ("presence:join", "alice", online),
        ("presence:update", "alice", online),
    ]

    # an update: one update frame (transcript 02 #18-20)
    away = {"name": "A", "status": "away", "n": 2}
    mark = client.mark()
    client.call("set_presence", data=away, room="general")
    client.wait_event(lambda e: e["event"] == "presence:update", since=mark)
    assert [kraken_view(f) for f in client.frames("recv", mark)] == [event("update", "alice", away)]

    # the room's list: one camelCase entry per socket, joinedAt in seconds (transcript 03 #21-22)
    mark = client.mark()
    entries = client.call("fetch_presence", room="general")
    assert client.frames("sent", mark) == [{"type": "getPresence", "roomId": "general"}]
    (reply,) = client.frames("recv", mark)
    assert len(entries) == 1, entries
    joined_at = entries[0]["joinedAt"]
    assert isinstance(joined_at, int) and first_set <= joined_at <= time.time()
    assert kraken_view(reply) == {
        "type": "presenceList",
        "roomId": "general",
        "data": [
            {"actorTokenId": "alice", "presence": away, "joinedAt": joined_at, "status": "online"}
        ],
    }
    assert entries == reply["data"]

    # without a room: the real broker ignores it and lists [] (transcript 04 #11, 03 #24-25);
    # the local broker serves it as documented project-level presence, and the SDK copes
    project = {"name": "A", "level": "project"}
    mark = client.mark()
    client.call("set_presence", data=project)
    client.wait_event(lambda e: e["event"] == "presence:update", since=mark)
    assert client.frames("sent", mark) == [{"type": "presence", "data": project}]
    received = client.frames("recv", mark)
    assert [kraken_view(f) for f in received] == [
        event("join", "alice", project),
        event("update", "alice", project),
    ]
    assert [f["roomId"] for f in received] == [None, None]
    project_list = client.call("fetch_presence")
    assert [(e["actorTokenId"], e["presence"]) for e in project_list] == [("alice", project)]
    # the room presence is untouched by the project-level one
    room_list = client.call("fetch_presence", room="general")
    assert [(e["actorTokenId"], e["presence"]) for e in room_list] == [("alice", away)]

    assert client.events("error") == []
    closed = client.call("disconnect")
    assert closed == {"status": "disconnected", "close_code": 1000}
    wait_until(lambda: broker.connection_count() == 0)


# -- 2. a nolag client and an official client in the same room -------------------------


@pytest.mark.parametrize("room", ["general", None], ids=["room", "project-level"])
def test_nolag_and_official_clients_see_each_other(
    broker: EmbeddedBroker,
    official: Official,
    observer: Callable[..., tuple[NoLag, Recorder]],
    room: Optional[str],
) -> None:
    """Join, update and leave cross both SDKs with the same actor ids and data; lists agree."""
    carol, carol_log = observer("dev-token-carol")
    carol.set_presence({"name": "C"}, room=room)

    # the official client joins: the nolag client already there sees it
    client, info = connect_official(official, broker.url)
    alice = info["actor_id"]
    client.call("set_presence", data={"name": "A"}, room=room)
    assert wait_until(recorded(carol_log, alice)) == [("presence:join", {"name": "A"})]

    # a nolag client joins: the official client sees its join (+ the real broker's update)
    bob, bob_log = observer("dev-token-bob")
    bob.set_presence({"name": "B"}, room=room)
    client.wait_event(
        lambda e: e["event"] == "presence:update" and e["actor"]["actor_token_id"] == bob.actor_id
    )
    assert client.presence_events(bob.actor_id) == [
        ("presence:join", "bob", {"name": "B"}),
        ("presence:update", "bob", {"name": "B"}),
    ]
    # ... and the nolag newcomer learns who was there (its snapshot on entry)
    assert wait_until(recorded(bob_log, alice)) == [("presence:join", {"name": "A"})]

    # the official client updates: both nolag clients see it
    mark = client.mark()
    client.call("set_presence", data={"name": "A", "n": 2}, room=room)
    client.wait_event(lambda e: e["event"] == "presence:update", since=mark)  # its own echo
    for log in (bob_log, carol_log):
        wait_until(lambda log=log: len(log.of(alice)) == 2)
        assert log.of(alice)[-1] == ("presence:update", {"name": "A", "n": 2})

    # the nolag client updates: the official client sees it
    mark = client.mark()
    bob.set_presence({"name": "B", "n": 2}, room=room)
    client.wait_event(lambda e: e["event"] == "presence:update", since=mark)
    assert client.presence_events(since=mark) == [("presence:update", "bob", {"name": "B", "n": 2})]

    # both fetch_presence agree: same actors, data and joinedAt
    official_list = by_actor_official(client.call("fetch_presence", room=room))
    nolag_list = by_actor_nolag(bob.fetch_presence(room))
    assert official_list == nolag_list
    assert {k: v[0] for k, v in nolag_list.items()} == {
        "alice": {"name": "A", "n": 2},
        "bob": {"name": "B", "n": 2},
        "carol": {"name": "C"},
    }
    cached = {a.actor_token_id: dict(a.presence) for a in bob.get_all_presence(room)}
    assert cached == {k: v[0] for k, v in nolag_list.items()}

    # the nolag client leaves: the official client sees the leave
    mark = client.mark()
    bob.disconnect()
    client.wait_event(lambda e: e["event"] == "presence:leave", since=mark)
    assert client.presence_events(since=mark) == [("presence:leave", "bob", {"name": "B", "n": 2})]

    # the official client leaves: the nolag client sees the leave
    client.call("disconnect")
    wait_until(lambda: carol_log.names(alice)[-1:] == ["presence:leave"])
    assert carol.get_presence(alice) is None
    assert client.events("error") == []


# -- 3. heartbeats and reconnects ------------------------------------------------------


def test_official_heartbeats_are_echoed_and_presence_is_resent_after_a_cut(
    broker: EmbeddedBroker,
    official: Official,
    observer: Callable[..., tuple[NoLag, Recorder]],
) -> None:
    """Heartbeats echoed; after a TCP cut: reconnect flag accepted, new presence reaches nolag."""
    bob, bob_log = observer("dev-token-bob")
    bob.set_presence({"name": "B"}, room="general")
    with FaultProxy(broker.port) as proxy:
        client, info = connect_official(
            official, proxy.url(), heartbeat_interval=0.2, **FAST_OFFICIAL
        )
        alice = info["actor_id"]
        client.call("set_presence", data={"v": 1}, room="general")
        wait_until(lambda: bob_log.of(alice) == [("presence:join", {"v": 1})])

        # heartbeats: empty binary frames, each echoed at once (transcript 06 #7-10)
        mark = client.mark()
        wait_until(lambda: client.heartbeats("recv", mark) >= 3, timeout=5)
        assert client.heartbeats("sent", mark) >= client.heartbeats("recv", mark)
        assert client.call("status") == {"status": "connected", "connected": True}

        # cut the connection for real, and keep refusing new ones for a moment
        proxy.block()
        mark = client.mark()
        assert proxy.cut() == 1
        client.wait_event(lambda e: e["event"] == "disconnect", since=mark)
        wait_until(lambda: bob_log.names(alice)[-1:] == ["presence:leave"])
        # presence set while disconnected is only stored; the SDK sends it after reconnecting
        client.call("set_presence", data={"v": 2}, room="general")
        assert client.frames("sent", mark) == []

        proxy.unblock()
        client.wait_event(lambda e: e["event"] == "reconnect", since=mark, timeout=10)
        client.wait_event(lambda e: e["event"] == "presence:update", since=mark)
        sent = client.frames("sent", mark)
        assert sent == [
            {"type": "auth", "token": ALICE, "protocolVersion": 2, "reconnect": True},
            {"type": "presence", "data": {"v": 2}, "roomId": "general"},
        ]
        replies = client.frames("recv", mark)
        assert replies[0]["type"] == "auth" and replies[0]["success"] is True, replies
        assert [kraken_view(f) for f in replies[1:3]] == [
            event("join", "alice", {"v": 2}),
            event("update", "alice", {"v": 2}),
        ]

        # the re-sent presence reaches the nolag client, in its cache and on the server
        wait_until(lambda: bob_log.of(alice)[-1:] == [("presence:join", {"v": 2})])
        actor = bob.get_presence(alice, "general")
        assert actor is not None and dict(actor.presence) == {"v": 2}
        assert by_actor_nolag(bob.fetch_presence("general"))[alice][0] == {"v": 2}
        assert client.events("error") == []
        assert client.call("disconnect")["close_code"] == 1000


def test_official_client_reconnects_after_a_broker_restart(
    broker: EmbeddedBroker,
    official: Official,
    observer: Callable[..., tuple[NoLag, Recorder]],
) -> None:
    """Stop and start the broker on its port: the official client comes back with its presence."""
    bob, bob_log = observer("dev-token-bob", **FAST_NOLAG)
    bob.set_presence({"name": "B"}, room="general")
    client, info = connect_official(official, broker.url, **FAST_OFFICIAL)
    alice = info["actor_id"]
    client.call("set_presence", data={"v": 1}, room="general")
    wait_until(lambda: bob_log.of(alice) == [("presence:join", {"v": 1})])

    mark = client.mark()
    broker.stop()
    client.wait_event(lambda e: e["event"] == "disconnect", since=mark, timeout=3)
    client.call("set_presence", data={"v": 2}, room="general")
    broker.start()
    client.wait_event(lambda e: e["event"] == "reconnect", since=mark, timeout=10)
    assert client.frames("sent", mark)[0]["reconnect"] is True
    wait_until(lambda: bob_log.of(alice)[-1:] == [("presence:join", {"v": 2})], timeout=10)


# -- frames of the official SDK the local broker once answered differently from Kraken ----


def test_official_clear_presence_is_accepted(broker: EmbeddedBroker, official: Official) -> None:
    """The official SDK's clear_presence() gets no error frame."""
    client, _ = connect_official(official, broker.url)
    client.call("set_presence", data={"name": "A"}, room="general")
    mark = client.mark()
    client.call("clear_presence")
    assert client.frames("sent", mark) == [{"type": "presence", "data": None, "roomId": "general"}]
    client.call("fetch_presence", room="general")  # replies are ordered: any error came first
    assert errors(client, mark) == []


def test_official_fetch_presence_of_an_unknown_room_is_empty(
    broker: EmbeddedBroker, official: Official
) -> None:
    """fetch_presence('nosuch') returns [] as on the real broker, instead of hanging."""
    client, _ = connect_official(official, broker.url)
    assert client.call("fetch_presence", room="nosuch", timeout=2.0) == []
