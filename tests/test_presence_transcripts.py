"""Replay what one connection received from the real broker through the store and check
the public events it emits (transcripts captured from Kraken v0.4.0, see PROTOCOL.md).

The replay does what the client does around the store: an event without roomId belongs
to the room the receiving socket's presence is in; a presence sent to another room drops
the old one from the cache; a list reply is applied with the mark taken when the request
was sent; lobby frames go to a LobbyStore.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
import transcripts

from nolag.models import ActorPresence
from nolag.presence import JOIN, LEAVE, UPDATE, LobbyStore, PresenceStore, PublicEvent
from nolag.protocol import (
    LobbyPresence,
    LobbySnapshot,
    PresenceEvent,
    PresenceList,
    ProtocolError,
    decode_frame,
)

Seen = tuple[str, Optional[str], str, dict[str, Any]]


@attrs.define
class Replay:
    """The events a store emitted for one connection, and the stores afterwards."""

    store: PresenceStore
    lobby: LobbyStore
    events: list[PublicEvent]
    lobby_events: list[PublicEvent]

    def seen(self) -> list[Seen]:
        return [_seen(e) for e in self.events]

    def lobby_seen(self) -> list[Seen]:
        return [_seen(e) for e in self.lobby_events]


def _seen(e: PublicEvent) -> Seen:
    return (e.name, e.room, e.actor.actor_token_id, dict(e.actor.presence))


def _check_replays(events: list[PublicEvent], snapshot: tuple[ActorPresence, ...]) -> None:
    """Applying the public events to an empty dict must give the store's snapshot."""
    state: dict[tuple[Optional[str], str], Any] = {}
    for e in events:
        key = (e.room, e.actor.actor_token_id)
        assert e.actor.room == e.room
        if e.name == JOIN:
            assert key not in state, f"duplicate join {key}"
            state[key] = e.actor.presence
        elif e.name == UPDATE:
            assert key in state and e.previous is not None
            assert e.previous.presence == state[key] and e.actor.presence != state[key]
            state[key] = e.actor.presence
        else:
            assert e.name == LEAVE and key in state, f"spurious leave {key}"
            del state[key]
    assert state == {(p.room, p.actor_token_id): p.presence for p in snapshot}


def replay(prefix: str, conn: str) -> Replay:
    store, lobby = PresenceStore(), LobbyStore()
    events: list[PublicEvent] = []
    lobby_events: list[PublicEvent] = []
    room: Optional[str] = None
    marks: dict[Optional[str], list[int]] = {}
    for line in transcripts.frames(transcripts.load(prefix), conn):
        now = float(line["t_ms"]) / 1000.0
        if line["dir"] == "send":
            sent = line.get("decoded")
            if not isinstance(sent, dict):
                continue
            if sent.get("type") == "getPresence":
                marks.setdefault(sent.get("roomId"), []).append(store.mark())
            elif (
                sent.get("type") == "presence"
                and isinstance(sent.get("roomId"), str)
                and "data" in sent
                and sent["roomId"] != room
            ):
                if room is not None:
                    events += store.drop_room(room)
                room = sent["roomId"]
            continue
        if not line.get("len"):
            continue
        frame = decode_frame(transcripts.payload(line))
        assert not isinstance(frame, ProtocolError), frame
        if isinstance(frame, PresenceEvent):
            target = frame.room if frame.room_given else room
            events += store.apply_event(frame, target, now)
        elif isinstance(frame, PresenceList):
            mark = marks[frame.room].pop(0)
            events += store.apply_list(frame, frame.room, mark, now)
        elif isinstance(frame, LobbySnapshot):
            lobby_events += lobby.apply_snapshot(frame)
        elif isinstance(frame, LobbyPresence):
            lobby_events += lobby.apply_event(frame)
    _check_replays(events, store.snapshot())
    return Replay(store, lobby, events, lobby_events)


G = "general"


def test_02_join_update_leave_seen_by_a() -> None:
    r = replay("02", "A")
    assert r.seen() == [
        (JOIN, G, "actor-010", {"name": "A", "status": "online"}),
        (JOIN, G, "actor-011", {"name": "B", "status": "online"}),
        (UPDATE, G, "actor-010", {"n": 2, "name": "A", "status": "away"}),
        (LEAVE, G, "actor-011", {"name": "B", "status": "online"}),
    ]


def test_02_update_for_an_actor_never_joined_is_a_join() -> None:
    r = replay("02", "B")  # B never learned A (no snapshot on entry): A's update is its join
    assert r.seen() == [
        (JOIN, G, "actor-011", {"name": "B", "status": "online"}),
        (JOIN, G, "actor-010", {"n": 2, "name": "A", "status": "away"}),
    ]


def test_04_room_switch_seen_by_the_observer() -> None:
    r = replay("04", "O")
    assert r.seen() == [
        (JOIN, G, "actor-014", {"name": "observer"}),
        (JOIN, G, "actor-015", {"status": "online"}),
        (LEAVE, G, "actor-015", {"status": "online"}),
    ]
    [me] = r.store.snapshot()
    assert me.actor_token_id == "actor-014" and me.joined_at == 1795861317


def test_04_room_switch_seen_by_the_switcher() -> None:
    r = replay("04", "A")
    assert r.seen() == [
        (JOIN, G, "actor-014", {"name": "observer"}),  # the list of 'general'
        (JOIN, G, "actor-015", {"status": "online"}),
        (LEAVE, G, "actor-014", {"name": "observer"}),  # we left 'general'
        (LEAVE, G, "actor-015", {"status": "online"}),
        (JOIN, "random", "actor-015", {"room": "random", "status": "online"}),
    ]
    [me] = r.store.snapshot()
    assert me.room == "random" and me.joined_at == 1795861319 and me.connections == 1


def test_05_same_actor_two_sockets_seen_by_the_observer() -> None:
    r = replay("05", "O")
    assert r.seen() == [
        (JOIN, G, "actor-020", {"name": "observer"}),
        (JOIN, G, "actor-021", {"device": "phone"}),
        (UPDATE, G, "actor-021", {"device": "laptop"}),
        (UPDATE, G, "actor-021", {"device": "phone", "status": "away"}),
        # A1 closed: no leave; the next list shows the remaining socket's data
        (UPDATE, G, "actor-021", {"device": "laptop"}),
        (LEAVE, G, "actor-021", {"device": "laptop"}),  # only after A2 closed
    ]
    joins = [e for e in r.events if e.name == JOIN and e.actor.actor_token_id == "actor-021"]
    assert len(joins) == 1
    [me] = r.store.snapshot()
    assert me.actor_token_id == "actor-020"


def test_05_socket_counts_along_the_way() -> None:
    r = replay("05", "O")
    counts = [e.actor.connections for e in r.events if e.actor.actor_token_id == "actor-021"]
    assert counts == [1, 2, 2, 1, 1]


def test_07_foreign_non_map_presence_does_not_crash() -> None:
    r = replay("07", "O")
    seen = r.seen()
    assert seen[:3] == [
        (JOIN, G, "actor-030", {"name": "observer"}),
        (JOIN, G, "actor-031", {"via": "json-text"}),
        (UPDATE, G, "actor-031", {}),  # "online", 7, ["a", 1], nil: all {} and quiet
    ]
    assert seen[3][0] == UPDATE and seen[3][3]["u64"] == 18446744073709551615
    assert [s[0] for s in seen[4:]] == [LEAVE, JOIN]


def test_07_every_connection_replays() -> None:
    for conn in ("O", "P", "P2", "P3", "O2", "R"):
        replay("07", conn)


def test_08_lobby_seen_by_the_subscriber() -> None:
    r = replay("08", "L")
    assert r.seen() == []
    assert r.lobby_seen() == [
        (JOIN, G, "actor-041", {"name": "X"}),  # the empty lobbySubscribed said nothing
        (JOIN, G, "actor-042", {"name": "Y"}),
        (UPDATE, G, "actor-042", {"name": "Y", "status": "away"}),
        (LEAVE, G, "actor-042", {"name": "Y", "status": "away"}),
        (JOIN, "random", "actor-042", {"name": "Y"}),
        (LEAVE, G, "actor-041", {"name": "X"}),
    ]
    snap = r.lobby.snapshot()
    assert list(snap) == ["random"]
    assert snap["random"]["actor-042"].joined_at == 1795861407


def test_08_room_presence_seen_by_a_member() -> None:
    r = replay("08", "X")
    assert r.seen() == [
        (JOIN, G, "actor-041", {"name": "X"}),
        (JOIN, G, "actor-042", {"name": "Y"}),
        (UPDATE, G, "actor-042", {"name": "Y", "status": "away"}),
        (LEAVE, G, "actor-042", {"name": "Y", "status": "away"}),
    ]
