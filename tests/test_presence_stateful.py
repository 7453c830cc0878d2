"""A hypothesis state machine driving PresenceStore against a plain model of the sockets.

The truth is a dict of socket -> (actor, room, data). Sockets open, update, switch rooms
and close; each change is broadcast to the store as the real broker sends it (join +
update pair, one leave per socket; with or without connection ids). A broadcast can be
lost (the client is "away") or held back while a list is answered (Kraken's registry
races: a list showing a socket whose join arrives just after, or missing one whose leave
does). Lists of a room are requested (mark) and delivered later: computed at delivery
(ordered with the events, as a socket reply is), optionally still holding sockets whose
leave already arrived, or computed at request time (arbitrarily stale). Rooms get
dropped, the store reset, time advances past or within the grace window.

Always checked: replaying every public event on a plain dict gives the store's snapshot
(no missing, duplicate or spurious event); snapshots are immutable, cached while the
version stands, and consistent with count/get/rooms. For rooms the store is expected to
know exactly (no event lost and none held since the last trusted list), the snapshot must equal
the model's view: same actors, socket counts, data (by the store's documented choice
rules) and joinedAt.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from nolag.models import ActorPresence, thaw
from nolag.presence import JOIN, LEAVE, UPDATE, PresenceStore, PublicEvent
from nolag.protocol import PresenceEntry, PresenceEvent, PresenceList

ACTORS = ("a", "b")
ROOMS: tuple[Optional[str], ...] = (None, "r1", "r2")
DATA: tuple[Any, ...] = (
    {},
    {"s": "x"},
    {"s": "y"},
    {"n": 1},
    {"n": True},
    {"n": 1.0},
    {"l": [1, {"k": "v"}]},
    "online",  # a foreign client's non-map presence: seen as {}
    None,
)
GRACE = 1.0
WALL = 7.0  # the store's wall clock: dates a membership first learned from an event
MAX_SOCKETS = 7

Key = tuple[Optional[str], str]


def norm(data: Any) -> Any:
    """What the store shows for sent data: mappings as they are, anything else as {}."""
    return data if isinstance(data, dict) else {}


def canon(data: Any) -> str:
    """Type-exact canonical text (1, 1.0 and True differ) of plain or frozen data."""
    return json.dumps(thaw(norm(data)) if isinstance(data, dict) else {}, sort_keys=True)


@attrs.frozen
class Held:
    """An event broadcast to us and not yet received."""

    kind: str
    sid: int
    actor: str
    cid: Optional[str]
    room: Optional[str]
    data: Any
    entry: PresenceEntry


class Sock:
    """One socket of the truth."""

    def __init__(self, actor: str, room: Optional[str], data: Any, cid: Optional[str]):
        self.actor = actor
        self.room = room
        self.data = data
        self.cid = cid
        self.joined_at = 0.0


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = PresenceStore(join_grace=GRACE, wall=lambda: WALL)
        self.now = 100.0
        self.with_cids = False
        self.sockets: dict[int, Sock] = {}
        self.next_sid = 0
        self.next_joined = 1_000_000.0
        self.away = False
        self.queue: list[Held] = []  # events broadcast but not yet received
        self.dirty: set[Optional[str]] = set()
        self.grace_until: dict[Optional[str], float] = {}
        self.pending: list[tuple[Optional[str], int, list[PresenceEntry]]] = []
        self.last_event_seq: dict[Optional[str], int] = {}
        self.left: list[tuple[int, Optional[str], int, PresenceEntry]] = []  # delivered leaves
        self.list_marks: dict[Optional[str], int] = {}
        self.floor = 0
        self.sub = 0
        # what the public events say is present: (room, actor) -> canon(data)
        self.replayed: dict[Key, str] = {}
        # mirrors of the store's documented choices
        self.view_data: dict[Key, Any] = {}  # anonymous mode: visible data
        self.anon_last: dict[Key, tuple[int, str]] = {}  # anonymous mode: last event
        self.conns: dict[tuple[Optional[str], int], list[Any]] = {}  # ids: [data, order]
        self.gone: dict[tuple[Optional[str], int], int] = {}  # ids: seq of the last leave
        self.view_joined: dict[Key, Optional[float]] = {}
        # immutability / caching
        self.last_version = -1
        self.last_snapshot: tuple[ActorPresence, ...] = ()
        self.last_signature: list[Any] = []

    # ------------------------------------------------------------ plumbing

    def entries(self, room: Optional[str]) -> list[PresenceEntry]:
        return [self.entry(s) for _, s in sorted(self.sockets.items()) if s.room == room]

    @staticmethod
    def entry(s: Sock) -> PresenceEntry:
        return PresenceEntry(
            actor_token_id=s.actor, presence=s.data, joined_at=s.joined_at, connection_id=s.cid
        )

    def record(self, events: list[PublicEvent]) -> None:
        """Apply a batch of public events to the replay dict, checking each is justified."""
        keys = [(e.room, e.actor.actor_token_id) for e in events]
        assert len(keys) == len(set(keys)), f"several events for one member: {events}"
        for e, key in zip(events, keys):
            assert e.actor.room == e.room
            now = canon(e.actor.presence)
            if e.name == JOIN:
                assert key not in self.replayed, f"join of a present member {key}"
                assert e.previous is None
                self.replayed[key] = now
            elif e.name == UPDATE:
                assert key in self.replayed, f"update of an absent member {key}"
                assert e.previous is not None
                assert canon(e.previous.presence) == self.replayed[key]
                assert now != self.replayed[key], "update without a data change"
                self.replayed[key] = now
            else:
                assert e.name == LEAVE, e.name
                assert key in self.replayed, f"leave of an absent member {key}"
                assert canon(e.actor.presence) == self.replayed[key]
                del self.replayed[key]

    def send(
        self, kind: str, sid: int, room: Optional[str], data: Any = None, hold: bool = False
    ) -> None:
        """The broker broadcasts an event: lost while away, else received now or (held) later."""
        if self.away:
            self.dirty.add(room)
            return
        sock = self.sockets[sid]
        self.queue.append(Held(kind, sid, sock.actor, sock.cid, room, data, self.entry(sock)))
        if not hold:
            self.flush()

    def flush(self) -> None:
        while self.queue:
            self.receive(self.queue.pop(0))

    def receive(self, held: Held) -> None:
        """The store gets one event; keep the model's mirrors in step."""
        kind, room, actor = held.kind, held.room, held.actor
        if self.now <= self.grace_until.get(room, -1.0):
            self.dirty.add(room)  # after reconciling a wrong cache, late broadcasts may mislead
        key = (room, actor)
        before = self.store.get(actor, room, all_rooms=False)
        seq = self.store.mark() + 1
        ev = PresenceEvent(
            kind=kind,
            actor_token_id=actor,
            presence=held.data if kind != "leave" else None,
            connection_id=held.cid,
        )
        events = self.store.apply_event(ev, room, self.now)
        assert self.store.mark() == seq
        self.record(events)
        self.last_event_seq[room] = seq
        after = self.store.get(actor, room, all_rooms=False)
        if kind == "leave":
            self.left.append((seq, room, held.sid, held.entry))
        if self.with_cids:
            ckey = (room, held.sid)
            if kind == "leave":
                self.conns.pop(ckey, None)
                self.gone[ckey] = seq
            else:
                self.conns[ckey] = [canon(held.data), (seq, 0)]
                self.gone.pop(ckey, None)
        else:
            self.anon_last[key] = (seq, kind)
            if kind != "leave":
                self.view_data[key] = canon(held.data)
        if before is None and after is not None:
            self.view_joined[key] = WALL  # events carry no joinedAt: the wall clock dates it
        if after is None:
            self.view_joined.pop(key, None)
            self.view_data.pop(key, None)

    def pick_hold(self, hold: bool) -> bool:
        """Hold back at most one change at a time: the narrow race of one late broadcast."""
        return hold and not self.queue

    # ------------------------------------------------------------ rules: the truth moves

    @initialize(with_cids=st.booleans())
    def choose_mode(self, with_cids: bool) -> None:
        self.with_cids = with_cids

    @precondition(lambda self: len(self.sockets) < MAX_SOCKETS)
    @rule(
        actor=st.sampled_from(ACTORS),
        room=st.sampled_from(ROOMS),
        data=st.sampled_from(DATA),
        hold=st.booleans(),
    )
    def open_socket(self, actor: str, room: Optional[str], data: Any, hold: bool) -> None:
        hold = self.pick_hold(hold)
        sid = self.next_sid
        self.next_sid += 1
        sock = Sock(actor, room, data, f"conn-{sid}" if self.with_cids else None)
        self.next_joined += 1
        sock.joined_at = self.next_joined
        self.sockets[sid] = sock
        self.send("join", sid, room, data, hold)
        self.send("update", sid, room, data, hold)

    @precondition(lambda self: self.sockets)
    @rule(pick=st.integers(0, MAX_SOCKETS), data=st.sampled_from(DATA), hold=st.booleans())
    def update_socket(self, pick: int, data: Any, hold: bool) -> None:
        hold = self.pick_hold(hold)
        sid = list(self.sockets)[pick % len(self.sockets)]
        sock = self.sockets[sid]
        sock.data = data
        self.send("update", sid, sock.room, data, hold)

    @precondition(lambda self: self.sockets)
    @rule(pick=st.integers(0, MAX_SOCKETS), hold=st.booleans())
    def close_socket(self, pick: int, hold: bool) -> None:
        hold = self.pick_hold(hold)
        sid = list(self.sockets)[pick % len(self.sockets)]
        self.send("leave", sid, self.sockets[sid].room, None, hold)
        del self.sockets[sid]

    @precondition(lambda self: self.sockets)
    @rule(pick=st.integers(0, MAX_SOCKETS), room=st.sampled_from(ROOMS), hold=st.booleans())
    def switch_room(self, pick: int, room: Optional[str], hold: bool) -> None:
        hold = self.pick_hold(hold)
        sid = list(self.sockets)[pick % len(self.sockets)]
        sock = self.sockets[sid]
        if room == sock.room:
            return
        self.send("leave", sid, sock.room, None, hold)
        sock.room = room
        self.next_joined += 1
        sock.joined_at = self.next_joined
        self.send("join", sid, room, sock.data, hold)
        self.send("update", sid, room, sock.data, hold)

    @rule()
    def receive_held(self) -> None:
        self.flush()

    @rule()
    def toggle_away(self) -> None:
        self.flush()
        self.away = not self.away

    @rule(dt=st.sampled_from([0.0, 0.4, 2.5]))
    def tick(self, dt: float) -> None:
        self.flush()  # late broadcasts arrive within the grace window
        self.now += dt

    # ------------------------------------------------------------ rules: lists

    @rule(room=st.sampled_from(ROOMS))
    def request_list(self, room: Optional[str]) -> None:
        self.pending.append((room, self.store.mark(), self.entries(room)))

    @rule(room=st.sampled_from(ROOMS), race=st.booleans())
    def list_now(self, room: Optional[str], race: bool) -> None:
        """Ask and get the answer at once; with `race`, of the room a held broadcast is for."""
        if race and self.queue:
            room = self.queue[0].room
        self.request_list(room)
        self.deliver_list(len(self.pending) - 1, "fresh")

    @precondition(lambda self: self.pending)
    @rule(pick=st.integers(0, 5), how=st.sampled_from(["fresh", "linger", "stale"]))
    def deliver_list(self, pick: int, how: str) -> None:
        room, mark, at_request = self.pending.pop(pick % len(self.pending))
        truth = self.entries(room)
        if how == "stale":
            entries = at_request  # computed when asked: anything may have happened since
        elif how == "linger":
            entries = truth + self.lingering(room, mark)
        else:
            entries = truth
        accepted = mark >= max(self.floor, self.list_marks.get(room, 0))
        touched = self.last_event_seq.get(room, -1) > mark
        pre = {p.actor_token_id: p for p in self.store.snapshot(room, all_rooms=False)}
        version = self.store.version
        events = self.store.apply_list(PresenceList(room, tuple(entries)), room, mark, self.now)
        self.record(events)
        if not accepted:
            assert events == [] and self.store.version == version
            return
        self.list_marks[room] = mark
        self.mirror_list(room, mark, entries, pre)
        if how == "stale" and entries != truth:
            self.dirty.add(room)  # an arbitrarily old list: the store may be wrong until later
        elif not touched and room in self.dirty:
            self.dirty.discard(room)
            if not self.with_cids:
                self.grace_until[room] = self.now + GRACE

    def lingering(self, room: Optional[str], mark: int) -> list[PresenceEntry]:
        """Sockets whose leave we received after `mark` that Kraken may still list."""
        here = {sid for sid, s in self.sockets.items() if s.room == room}
        out = []
        for seq, left_room, sid, entry in self.left:
            if seq <= mark or left_room != room or sid in here:
                continue
            last = self.anon_last.get((room, entry.actor_token_id))
            if not self.with_cids and last is not None and last[1] != "leave":
                continue  # anonymous: a later join makes a lingering entry ambiguous
            out.append(entry)
        return out

    def mirror_list(
        self,
        room: Optional[str],
        mark: int,
        entries: list[PresenceEntry],
        pre: dict[str, ActorPresence],
    ) -> None:
        """Update the model's mirrors the way the store documents list reconciliation."""
        by_actor: dict[str, list[PresenceEntry]] = {}
        for e in entries:
            by_actor.setdefault(e.actor_token_id, []).append(e)
        for actor in list(pre):
            if actor not in by_actor:
                self.view_data.pop((room, actor), None)
                # a member the list omits may stay (its join is newer than the list:
                # the replay invariant checks who stays); one that stays keeps joined_at
                if self.store.get(actor, room, all_rooms=False) is None:
                    self.view_joined.pop((room, actor), None)
        if self.with_cids:
            listed = {int(e.connection_id.split("-")[1]) for e in entries if e.connection_id}
            for ckey in [k for k in self.conns if k[0] == room]:
                if ckey[1] not in listed and self.conns[ckey][1][0] <= mark:
                    del self.conns[ckey]
        for actor, group in by_actor.items():
            key = (room, actor)
            if self.with_cids:
                changed = []
                times = []
                for e in group:
                    assert e.connection_id is not None
                    ckey = (room, int(e.connection_id.split("-")[1]))
                    conn = self.conns.get(ckey)
                    if conn is not None and conn[1][0] > mark:
                        continue  # a newer event decided this connection
                    if self.gone.get(ckey, -1) > mark:
                        continue  # it left after the list was asked for
                    times.append(e.joined_at)
                    if conn is None or conn[0] != canon(e.presence):
                        changed.append((e.joined_at, ckey, canon(e.presence)))
                for _, ckey, data in sorted(changed):
                    self.sub += 1
                    self.conns[ckey] = [data, (mark, self.sub)]
            else:
                last = self.anon_last.get(key)
                if last is not None and last[0] > mark and last[1] != "leave":
                    pass  # a newer join/update's data stays
                else:
                    cached = canon(pre[actor].presence) if actor in pre else None
                    shown = {canon(e.presence) for e in group}
                    if cached not in shown:
                        newest = max(group, key=lambda e: e.joined_at or 0.0)
                        self.view_data[key] = canon(newest.presence)
                    else:
                        self.view_data[key] = cached
                times = [e.joined_at for e in group]
            if actor not in pre:  # joined_at is set once, when the membership appears
                dated = [t for t in times if t is not None]
                self.view_joined[key] = min(dated) if dated else WALL

    # ------------------------------------------------------------ rules: forgetting

    @rule(room=st.sampled_from(ROOMS))
    def drop_room(self, room: Optional[str]) -> None:
        self.flush()
        self.record(self.store.drop_room(room))
        self.list_marks[room] = self.store.mark()
        for key in [k for k in self.view_data if k[0] == room]:
            del self.view_data[key]
        for key in [k for k in self.view_joined if k[0] == room]:
            del self.view_joined[key]
        for key in [k for k in self.anon_last if k[0] == room]:
            del self.anon_last[key]
        for ckey in [k for k in self.conns if k[0] == room]:
            del self.conns[ckey]
        for ckey in [k for k in self.gone if k[0] == room]:
            del self.gone[ckey]
        assert self.store.snapshot(room, all_rooms=False) == ()
        if any(s.room == room for s in self.sockets.values()):
            self.dirty.add(room)

    @rule()
    def reset(self) -> None:
        self.flush()
        self.record(self.store.reset())
        assert self.replayed == {}
        self.floor = self.store.mark()
        self.list_marks.clear()
        self.view_data.clear()
        self.view_joined.clear()
        self.anon_last.clear()
        self.conns.clear()
        self.gone.clear()
        self.dirty = {s.room for s in self.sockets.values()}

    # ------------------------------------------------------------ invariants

    @invariant()
    def events_replay_to_the_snapshot(self) -> None:
        snap = self.store.snapshot()
        assert self.replayed == {(p.room, p.actor_token_id): canon(p.presence) for p in snap}

    @invariant()
    def snapshots_are_immutable_and_cached(self) -> None:
        # the previous snapshot object still says what it said
        assert self.signature(self.last_snapshot) == self.last_signature
        snap = self.store.snapshot()
        assert isinstance(snap, tuple)
        assert self.store.snapshot() is snap
        if self.store.version == self.last_version:
            assert snap is self.last_snapshot, "version unchanged but a new snapshot"
        elif self.signature(snap) != self.last_signature:
            assert self.store.version > self.last_version
        self.last_version = self.store.version
        self.last_snapshot = snap
        self.last_signature = self.signature(snap)

    @staticmethod
    def signature(snap: tuple[ActorPresence, ...]) -> list[Any]:
        return [
            (p.room, p.actor_token_id, canon(p.presence), p.connections, p.joined_at) for p in snap
        ]

    @invariant()
    def queries_agree_with_the_snapshot(self) -> None:
        snap = self.store.snapshot()
        rooms: list[Optional[str]] = []
        for p in snap:
            assert p.connections >= 1
            if p.room not in rooms:
                rooms.append(p.room)
            assert self.store.get(p.actor_token_id, p.room, all_rooms=False) is p
        assert self.store.rooms() == tuple(rooms)
        assert self.store.count() == len({p.actor_token_id for p in snap})
        for room in ROOMS:
            part = self.store.snapshot(room, all_rooms=False)
            assert part == tuple(p for p in snap if p.room == room)
            assert self.store.count(room, all_rooms=False) == len(part)
        for actor in ACTORS:
            found = self.store.get(actor)
            assert (found is None) == all(p.actor_token_id != actor for p in snap)
            assert found is None or found in snap

    @invariant()
    def known_rooms_match_the_truth(self) -> None:
        waiting = {held.room for held in self.queue}
        for room in ROOMS:
            if room in self.dirty or room in waiting:
                continue
            expected: dict[str, tuple[str, int, Optional[float]]] = {}
            counts: dict[str, int] = {}
            for s in self.sockets.values():
                if s.room == room:
                    counts[s.actor] = counts.get(s.actor, 0) + 1
            for actor, n in counts.items():
                key = (room, actor)
                if self.with_cids:
                    mine = [
                        c
                        for k, c in self.conns.items()
                        if k[0] == room and self.actor_of(k[1]) == actor
                    ]
                    data = max(mine, key=lambda c: c[1])[0]
                else:
                    data = self.view_data[key]
                expected[actor] = (data, n, self.view_joined.get(key))
            got = {
                p.actor_token_id: (canon(p.presence), p.connections, p.joined_at)
                for p in self.store.snapshot(room, all_rooms=False)
            }
            assert got == expected, f"room {room!r}"

    def actor_of(self, sid: int) -> Optional[str]:
        sock = self.sockets.get(sid)
        return sock.actor if sock is not None else None


StoreMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# 300 runs of 50 steps take a few seconds alone; the bound leaves room for a loaded machine
test_presence_store_state_machine = pytest.mark.timeout(600)(StoreMachine.TestCase)
