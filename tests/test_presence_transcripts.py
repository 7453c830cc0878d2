"""Replay what one connection of the real broker's transcripts said through a `Session`.

The transcripts were captured from Kraken v0.4.0 (see PROTOCOL.md). Each frame the
captured client sent becomes the matching intent (set presence, list request, lobby
subscription), and the frame the session then asks to send must be the captured one;
each frame it received is fed to `Session.receive` as it arrived. No sockets, no copy of
client logic: the session's own rules route the events (a frame without roomId belongs
to our socket's room, a presence in another room drops the old one, a list reply is
matched to its request).
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
import msgpack
import transcripts

from nolag.events import Lifecycle, LobbyEvent
from nolag.lobby import LobbySnapshotView
from nolag.models import ActorPresence, NoLagOptions
from nolag.presence import JOIN, LEAVE, UPDATE, PresenceStore, PublicEvent
from nolag.protocol import AuthOk, decode_frame
from nolag.session import Effects, Session

Seen = tuple[str, Optional[str], str, dict[str, Any]]


@attrs.define
class Replay:
    """The events a session emitted for one connection, and its caches afterwards."""

    store: PresenceStore
    #: the lobby cache as it last was while subscribed
    lobby: LobbySnapshotView
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


def _sent(fx: Effects) -> list[Any]:
    return [msgpack.unpackb(frame, raw=False) for frame in fx.frames if frame]


def replay(prefix: str, conn: str) -> Replay:
    options = NoLagOptions(sync_on_join=False, max_presence_rate=None)
    clock = [0.0]  # the capture's time, in seconds since it started: the session's wall clock
    session = Session(options, "tok", wall=lambda: clock[0])
    events: list[PublicEvent] = []
    lobby_events: list[PublicEvent] = []
    lobby_slug: Optional[str] = None
    lobby_view: LobbySnapshotView = {}

    def collect(fx: Effects) -> None:
        for item in fx.events:
            if isinstance(item, PublicEvent):
                events.append(item)
            elif isinstance(item, LobbyEvent):
                lobby_events.append(item.event)
            else:
                assert isinstance(item, Lifecycle)

    for line in transcripts.frames(transcripts.load(prefix), conn):
        now = clock[0] = float(line["t_ms"]) / 1000.0
        sent = line.get("decoded")
        if line["dir"] == "send":
            if not isinstance(sent, dict) or not line.get("len"):
                continue
            kind = sent.get("type")
            fx = Effects()
            if kind == "auth":
                session.begin("connect")
                continue
            if not session.connected:
                continue  # the capture's deliberate frames before auth
            room = sent.get("roomId")
            if kind == "presence" and isinstance(room, str) and isinstance(sent.get("data"), dict):
                fx = session.set_presence(sent["data"], room, now)
            elif kind == "getPresence":
                session.fetch(sent.get("roomId"), fx)
            elif kind == "lobbySubscribe":
                lobby_slug = lobby_slug or sent["lobbyId"]  # the first lobby is the one watched
                session.lobby_subscribe(sent["lobbyId"], fx)
            elif kind == "getLobbyPresence":
                session.lobby_fetch(sent["lobbyId"], fx)
            elif kind == "lobbyUnsubscribe":
                if sent["lobbyId"] == lobby_slug:
                    lobby_view = session.lobbies.get(lobby_slug).store.snapshot()
                session.lobby_unsubscribe(sent["lobbyId"], fx)
            else:
                continue  # a deliberately bad frame of the capture: not a session intent
            assert _sent(fx) == [sent], "the session would send another frame"
            collect(fx)
            continue
        if not line.get("len"):
            continue
        payload = transcripts.payload(line)
        frame = decode_frame(payload)
        if isinstance(frame, AuthOk):
            collect(session.opened(frame, now))
            continue
        collect(session.receive([payload], now, listening=True))
    _check_replays(events, session.store.snapshot())
    if lobby_slug is not None and session.lobbies.get(lobby_slug).subscribed:
        lobby_view = session.lobbies.get(lobby_slug).store.snapshot()
    return Replay(session.store, lobby_view, events, lobby_events)


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
    # dated by this client's clock at its join event (seq 5, 6.3 ms into the capture):
    # Kraken's events carry no joinedAt, and the later list (joinedAt 1795861317) does
    # not move it
    assert me.actor_token_id == "actor-014" and me.joined_at == 6.3 / 1000


def test_04_room_switch_seen_by_the_switcher() -> None:
    r = replay("04", "A")
    # the list of 'general' asked for before our presence was there answers the caller
    # only: the cache holds the rooms our socket is in
    assert r.seen() == [
        (JOIN, G, "actor-015", {"status": "online"}),
        (LEAVE, G, "actor-015", {"status": "online"}),  # we left 'general'
        (JOIN, "random", "actor-015", {"room": "random", "status": "online"}),
    ]
    [me] = r.store.snapshot()
    # the new membership's join event (seq 31, 2815.8 ms) dates it
    assert me.room == "random" and me.joined_at == 2815.8 / 1000 and me.connections == 1


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
    snap = r.lobby
    assert list(snap) == ["random"]
    # lobby events carry no joinedAt: the member is dated by its join event (seq 51,
    # 2420.6 ms); the later lobbyPresenceList (joinedAt 1795861407) does not move it
    assert snap["random"]["actor-042"].joined_at == 2420.6 / 1000


def test_08_room_presence_seen_by_a_member() -> None:
    r = replay("08", "X")
    assert r.seen() == [
        (JOIN, G, "actor-041", {"name": "X"}),
        (JOIN, G, "actor-042", {"name": "Y"}),
        (UPDATE, G, "actor-042", {"name": "Y", "status": "away"}),
        (LEAVE, G, "actor-042", {"name": "Y", "status": "away"}),
    ]
