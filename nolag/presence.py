"""The presence cache, sans-IO: apply decoded presence events and lists, emit what users see.

`PresenceStore` never touches a socket, a thread or a clock: the client feeds it decoded
events (`apply_event`) and list replies (`apply_list`) under its own lock, passes the time
in, and dispatches the `PublicEvent` values each call returns.

Model. A *membership* is one actor in one room (None is project level). It holds the
sockets behind it: exactly, by connection id, when the broker says which socket an event
or list entry is about (the local broker does), else as an anonymous count (Kraken sends
no socket id). The actor is visible in the room while it has at least one socket, so one
of several tabs closing emits nothing. Users only see the actor: `presence:join` when its
first socket appears, `presence:update` when its visible data changes, `presence:leave`
when its last socket goes. Everything is idempotent and quiet: Kraken's join + update pair
is one join, an update with equal data is nothing, a leave for an absent actor is nothing.

Visible data. Every join/update event makes its data the visible data. A membership made
only of identified connections shows the data of its most recently changed connection, so
when that connection leaves, the data of the newest remaining one shows (an update event
if it differs). With anonymous sockets the store cannot tell whose data remains after a
leave, so the data stays until an event or a list says otherwise.

Lists and races. A list is one entry per socket. For its room it replaces what the cache
believes, with leave/join/update events for the difference, except where an event applied
after the request was sent (`mark()`) contradicts it, since that event is newer:

* a connection that left after the mark is not resurrected by the list; one that joined
  or updated after the mark keeps the state that event gave it;
* anonymous sockets whose latest post-mark event was a leave: the list may lower their
  count, never raise it (a departed actor stays departed; Kraken unregisters a socket
  after broadcasting its leave, so a list can still hold the leaver);
* anonymous sockets whose latest post-mark event was a join/update: the list may raise
  their count but not drop it below one, and the event's data stays visible;
* sockets the list shows beyond those the cache saw join are *credits* for `join_grace`
  seconds (Kraken registers a socket before broadcasting its join, so a list can hold a
  socket whose join arrives just after it): that many joins, without a connection id or
  with an unknown one, whose data equals one of the list's entries for the actor, are
  those sockets' late broadcasts and are not counted again; otherwise the actor's later
  single leave would leave a ghost. Likewise sockets the list dropped are *debits*: that
  many leaves within the window are their late broadcasts. A later list in the window
  keeps awaiting them. The price: a genuinely new socket with such data joining (or one
  leaving) inside the window is missed until the next list; a socket that joined and then
  changed its data before the list was taken is counted twice until the next list. A room
  where such a guess was made is reported by `take_unsure`, so that its owner asks for
  that next list once the window is over;
* a list requested before an already-applied list of the same room, before `drop_room`
  of that room or before `reset` is stale and ignored.

When an actor's entries differ in data, the visible data is chosen deterministically. With
connection ids it is the newest connection's, where connections the list added or changed
count as changed at the mark (after older events, before newer ones; among themselves by
joinedAt). Anonymous: the cached data if one entry shows it, else the entry with the
latest joinedAt (ties broken by a canonical ordering of the data). A list without
connection ids for connections the cache tracks (e.g. a REST answer) keeps as many of them
as it has entries, preferring those whose data it shows.

`joined_at` (epoch seconds) is set once, when the cache learns of the membership, and
holds while the membership lasts: the earliest `joinedAt` of the list that told, the
event's `joinedAt` where the broker sends one (the local broker does; Kraken's events
carry none), else this client's clock (`wall`) when the join was applied. So it is never
None in the cache, and a later list does not move it. `actor_type` is the broker's
`actorType` once a frame reported it (the local broker's frames do; Kraken's never do for
other actors), and is kept. `connections` is the membership's socket count.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, NamedTuple, Optional, TypeVar

from .models import ActorPresence, FrozenDict, actor_presence, freeze
from .protocol import PresenceEntry, PresenceEvent, PresenceList

__all__ = [
    "JOIN",
    "LEAVE",
    "UPDATE",
    "PresenceStore",
    "PublicEvent",
    "frozen_data",
    "merge_sockets",
    "public_event",
    "same_data",
]

#: a NamedTuple without its Python-level __new__ (used by the factories only)
_new = tuple.__new__

JOIN = "presence:join"
UPDATE = "presence:update"
LEAVE = "presence:leave"

_EMPTY = FrozenDict()
_NEVER = -1

_GoneKey = tuple[Optional[str], str, Optional[str]]


class PublicEvent(NamedTuple):
    """What users see: join/update/leave of one actor in one room (None: project level).

    For a leave `actor` is the last known presence; for an update `previous` is the state
    before it. A NamedTuple rather than an attrs class: one is built per event on the
    reader's hot path, and a tuple costs half as much to make.
    """

    name: str
    actor: ActorPresence
    room: Optional[str] = None
    previous: Optional[ActorPresence] = None


_Entry = TypeVar("_Entry")


def merge_sockets(
    entries: Iterable[_Entry], actor: Callable[[_Entry], str], order: Callable[[_Entry], Any]
) -> list[tuple[str, _Entry, list[_Entry]]]:
    """Fold per-socket entries into one group per actor, in first-seen order.

    Each group is (actor id, the entry whose presence shows -- the largest `order`, i.e.
    the socket that set its presence last --, every entry of the actor). The one rule,
    used by the client (`merge_entries`) and the local broker (lists and REST answers).
    """
    grouped: dict[str, list[_Entry]] = {}
    for entry in entries:
        grouped.setdefault(actor(entry), []).append(entry)
    return [(actor_id, max(group, key=order), group) for actor_id, group in grouped.items()]


def public_event(
    *, name: str, actor: ActorPresence, room: Optional[str], previous: Optional[ActorPresence]
) -> PublicEvent:
    """A PublicEvent built by field name: the store's one factory (hot path, no checks)."""
    return _new(PublicEvent, (name, actor, room, previous))


def frozen_data(value: Any) -> FrozenDict:
    """Presence data as the cache keeps it: a deep-frozen mapping; non-mappings become {}."""
    kind = type(value)
    if kind is FrozenDict:
        return value  # type: ignore[no-any-return]
    if kind is dict or isinstance(value, Mapping):
        frozen: FrozenDict = freeze(value)
        return frozen
    return _EMPTY


_PLAIN = frozenset({str, int, bool, type(None)})  # != is strict difference for these


def same_data(a: Any, b: Any) -> bool:
    """Strict equality of presence values: 1, 1.0 and True differ, NaN equals NaN."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b):
        return False
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        missing = object()
        for key, value in a.items():
            other = b.get(key, missing)
            if value is other:
                continue
            if type(value) in _PLAIN and type(other) is type(value):
                if value != other:  # flat data: compare inline, no recursion
                    return False
            elif other is missing or not same_data(value, other):
                return False
        return True
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same_data(x, y) for x, y in zip(a, b))
    if kind is float and math.isnan(a):
        return math.isnan(b)
    result: bool = a == b
    return result


def _canon(value: Any) -> str:
    """A canonical text of a presence value, used only to break ties deterministically."""
    if isinstance(value, Mapping):
        items = sorted(f"{_canon(k)}:{_canon(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_canon(v) for v in value) + "]"
    return f"{type(value).__name__}:{value!r}"


def _newest_entry(entries: Sequence[PresenceEntry]) -> PresenceEntry:
    """The entry set last: by the broker's updateSeq when it gives one, else the latest
    joinedAt; ties go to the canonically greatest data."""
    return max(
        entries,
        key=lambda e: (
            e.update_seq if e.update_seq is not None else -math.inf,
            e.joined_at if e.joined_at is not None else -math.inf,
            _canon(frozen_data(e.presence)),
        ),
    )


class _Conn:
    """One identified socket of a membership: its data, joinedAt and change order."""

    __slots__ = ("data", "joined_at", "order")

    def __init__(self, data: FrozenDict, joined_at: Optional[float], order: tuple[int, int]):
        self.data = data
        self.joined_at = joined_at
        #: (store sequence of the event, 0) or (list mark, n): larger is more recent
        self.order = order


class _Member:
    """One actor in one room: its sockets, visible data, race bookkeeping and public view."""

    __slots__ = (
        "actor",
        "actor_type",
        "anon",
        "anon_kind",
        "anon_seq",
        "changed",
        "conns",
        "credit_data",
        "credits",
        "data",
        "debits",
        "grace_until",
        "joined_at",
        "room",
        "view",
    )

    def __init__(
        self,
        actor: str,
        room: Optional[str],
        data: FrozenDict,
        actor_type: Optional[str] = None,
        anon: int = 0,
        anon_seq: int = _NEVER,
        anon_kind: str = "",
    ) -> None:
        self.actor = actor
        self.room = room
        self.data = data
        self.actor_type = actor_type
        self.joined_at: Optional[float] = None
        self.conns: dict[str, _Conn] = {}
        self.anon = anon
        self.anon_seq = anon_seq
        self.anon_kind = anon_kind
        #: how many list-learned anonymous sockets may still see their join arrive
        self.credits = 0
        #: the data of the list's anonymous entries: a late join must show one of them
        self.credit_data: tuple[FrozenDict, ...] = ()
        self.debits = 0
        self.grace_until = -math.inf
        self.changed = 0
        self.view: Optional[ActorPresence] = None

    @property
    def count(self) -> int:
        return len(self.conns) + self.anon

    def newest_conn_data(self) -> FrozenDict:
        return max(self.conns.values(), key=lambda c: c.order).data

    def take_credit(self, data: FrozenDict, now: float) -> bool:
        """Consume a list-learned socket with this data whose join may arrive late."""
        if not self.credits:
            return False
        if now > self.grace_until:
            self.expire()
            return False
        for i, shown in enumerate(self.credit_data):
            if same_data(shown, data):
                self.credit_data = self.credit_data[:i] + self.credit_data[i + 1 :]
                self.credits -= 1
                return True
        return False

    def take_debit(self, now: float) -> bool:
        """Consume a list-removed socket whose leave may arrive late."""
        if not self.debits:
            return False
        if now > self.grace_until:
            self.expire()
            return False
        self.debits -= 1
        return True

    def expire(self) -> None:
        """Forget credits and debits: the window for late broadcasts is over."""
        self.credits = self.debits = 0
        self.credit_data = ()


def _check_grace(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"join_grace must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"join_grace must be a finite number >= 0, got {value!r}")
    return float(value)


class PresenceStore:
    """The presence cache: memberships keyed by (room, actor), immutable cached snapshots.

    Not thread-safe by itself: the client calls it under its own lock. `join_grace` is the
    window (seconds, on the caller's monotonic clock) in which a list-learned socket's late
    join, or a list-removed socket's late leave, is recognised as such; `max_tombstones`
    bounds the memory of recent leaves kept to judge lists against.
    """

    def __init__(
        self,
        *,
        join_grace: float = 1.0,
        max_tombstones: int = 4096,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(max_tombstones, bool) or not isinstance(max_tombstones, int):
            raise TypeError("max_tombstones must be an int")
        if max_tombstones < 0:
            raise ValueError(f"max_tombstones must be >= 0, got {max_tombstones!r}")
        self._grace = _check_grace(join_grace)
        self._wall = wall  # epoch seconds: joined_at of a membership no frame dated
        #: rooms where an event was taken for a late broadcast of a listed change (a
        #: guess: a genuinely new socket looks the same); see `take_unsure`
        self._unsure: set[Optional[str]] = set()
        self._max_gone = max_tombstones
        self._rooms: dict[Optional[str], dict[str, _Member]] = {}
        #: (room, actor, connection id or None) -> sequence of a leave that emptied it,
        #: oldest first (see _bury)
        self._gone: dict[_GoneKey, int] = {}
        self._list_marks: dict[Optional[str], int] = {}
        self._floor = 0
        self._seq = 0
        self._sub = 0
        self._tick = 0
        self._version = 0
        self._snaps: dict[Optional[str], tuple[ActorPresence, ...]] = {}
        self._all: Optional[tuple[ActorPresence, ...]] = None
        self._distinct: Optional[int] = None

    # ------------------------------------------------------------ reading

    @property
    def version(self) -> int:
        """A counter that increases on every visible change (any snapshot would differ)."""
        return self._version

    @property
    def join_grace(self) -> float:
        """Seconds in which a list-learned socket's late join is not counted twice."""
        return self._grace

    def mark(self) -> int:
        """The store's sequence number now: pass it to apply_list for a list requested now."""
        return self._seq

    def snapshot(
        self, room: Optional[str] = None, *, all_rooms: bool = True
    ) -> tuple[ActorPresence, ...]:
        """Every membership (all rooms and project level), or one room's with `room`.

        `snapshot()` lists an actor present in two rooms twice (different `.room`);
        `snapshot(None, all_rooms=False)` is project-level presence only. Members come in
        the order they appeared. The tuple is cached: with no change in between, the same
        object is returned again.
        """
        if room is None and all_rooms:
            if self._all is None:
                parts: list[ActorPresence] = []
                for key in self._rooms:
                    parts.extend(self._room_snapshot(key))
                self._all = tuple(parts)
            return self._all
        return self._room_snapshot(room)

    def _room_snapshot(self, room: Optional[str]) -> tuple[ActorPresence, ...]:
        snap = self._snaps.get(room)
        if snap is None:
            members = self._rooms.get(room)
            if not members:
                return ()
            snap = tuple(m.view for m in members.values() if m.view is not None)
            self._snaps[room] = snap
        return snap

    def get(
        self, actor_id: str, room: Optional[str] = None, *, all_rooms: bool = True
    ) -> Optional[ActorPresence]:
        """One actor's presence in `room`; without a room, its most recently changed membership.

        `get(actor_id, None, all_rooms=False)` looks at project level only.
        """
        if room is not None or not all_rooms:
            members = self._rooms.get(room)
            mem = members.get(actor_id) if members else None
            return mem.view if mem is not None else None
        best: Optional[_Member] = None
        for members in self._rooms.values():
            mem = members.get(actor_id)
            if mem is not None and (best is None or mem.changed > best.changed):
                best = mem
        return best.view if best is not None else None

    def count(self, room: Optional[str] = None, *, all_rooms: bool = True) -> int:
        """Distinct actors present in `room`; without a room, distinct actors anywhere.

        `count(None, all_rooms=False)` counts project-level presence only. Sockets are not
        counted: an actor with two tabs is one (see ActorPresence.connections).
        """
        if room is None and all_rooms:
            if self._distinct is None:
                self._distinct = len({a for members in self._rooms.values() for a in members})
            return self._distinct
        members = self._rooms.get(room)
        return len(members) if members else 0

    def rooms(self) -> tuple[Optional[str], ...]:
        """Rooms with at least one member (None for project level), in first-seen order."""
        return tuple(self._rooms)

    def take_unsure(self) -> set[Optional[str]]:
        """The rooms whose counts rest on a guess since the last call, and forget them.

        Without connection ids, a join (or leave) that arrives within `join_grace` of a
        list which already showed that change is taken for its late broadcast; a
        genuinely new socket with the same data looks the same. The owner confirms such
        a room with one more list once the window is over (the session does).
        """
        unsure = self._unsure
        if unsure:
            self._unsure = set()
        return unsure

    def __repr__(self) -> str:
        return f"<PresenceStore rooms={len(self._rooms)} actors={self.count()} v{self._version}>"

    # ------------------------------------------------------------ bookkeeping

    def _refresh(self, mem: _Member) -> bool:
        """Rebuild the public view if anything visible changed; invalidate caches if so."""
        old = mem.view
        count = mem.count
        if (
            old is not None
            and old.connections == count
            and old.joined_at == mem.joined_at
            and old.actor_type == mem.actor_type
            and same_data(old.presence, mem.data)
        ):
            return False
        self._show(mem)
        return True

    def _show(self, mem: _Member) -> ActorPresence:
        """Build the membership's new public view, mark it changed, invalidate the snapshots
        and bump the version: the one place a visible change is recorded."""
        room = mem.room
        mem.view = view = actor_presence(
            actor_token_id=mem.actor,
            presence=mem.data,
            actor_type=mem.actor_type,
            joined_at=mem.joined_at,
            room=room,
            connections=len(mem.conns) + mem.anon,
        )
        self._tick += 1
        mem.changed = self._tick
        self._snaps.pop(room, None)
        self._all = None
        self._distinct = None
        self._version += 1
        return view

    def _invalidate(self, room: Optional[str]) -> None:
        self._snaps.pop(room, None)
        self._all = None
        self._distinct = None
        self._version += 1

    def _add(self, mem: _Member) -> None:
        members = self._rooms.get(mem.room)
        if members is None:
            members = self._rooms[mem.room] = {}
        members[mem.actor] = mem

    def _remove(self, mem: _Member) -> None:
        members = self._rooms[mem.room]
        del members[mem.actor]
        if not members:
            del self._rooms[mem.room]
        self._invalidate(mem.room)

    def _bury(self, key: _GoneKey, seq: int) -> None:
        """Remember a leave so a list requested before it cannot bring the socket back.

        The newest `max_tombstones` leaves are always remembered. The dict keeps leaves in
        the order buried and holds up to twice that many; then one pass keeps the newest
        half, so a leave costs O(1) on average and no eviction scans past deleted slots.
        """
        gone = self._gone
        if key in gone:
            del gone[key]  # buried again: it moves to the newest end
        gone[key] = seq
        if len(gone) > 2 * self._max_gone:
            first_kept = len(gone) - self._max_gone
            self._gone = dict(itertools.islice(gone.items(), first_kept, None))

    def _changed_events(self, mem: _Member, before: ActorPresence) -> list[PublicEvent]:
        """After a change to a present membership: an update if its data changed.

        `before` is the membership's view before the change; the data is compared once
        (this runs for every update on the reader's hot path).
        """
        same = same_data(before.presence, mem.data)
        count = mem.count
        if (
            same
            and before.connections == count
            and before.joined_at == mem.joined_at
            and before.actor_type == mem.actor_type
        ):
            return []
        view = self._show(mem)
        if same:
            return []
        return [public_event(name=UPDATE, actor=view, room=mem.room, previous=before)]

    # ------------------------------------------------------------ events

    def apply_event(self, ev: PresenceEvent, room: Optional[str], now: float) -> list[PublicEvent]:
        """Apply one decoded presence event belonging to `room`; return the public events.

        `room` is resolved by the caller (the event's roomId if it had one, else the room
        the receiving socket is in); `now` is the caller's monotonic time.
        """
        self._seq += 1
        seq = self._seq
        kind, actor, presence, _, _, cid, actor_type, joined_at = ev  # one unpack: hot path
        members = self._rooms.get(room)
        mem = members.get(actor) if members is not None else None
        if kind == "leave":
            return self._leave(room, actor, cid, mem, seq, now)
        if kind != "join" and kind != "update":
            return []
        plain = type(presence) is dict  # flat data without floats, as nearly all is?
        if plain:
            for value in presence.values():
                if type(value) not in _PLAIN:
                    plain = False
                    break
        data = FrozenDict(presence) if plain else frozen_data(presence)
        if self._gone:
            self._gone.pop((room, actor, cid), None)
        if mem is None:
            if cid is None:
                mem = _Member(actor, room, data, actor_type, 1, seq, kind)
            else:
                mem = _Member(actor, room, data, actor_type)
                mem.conns[cid] = _Conn(data, None, (seq, 0))
            mem.joined_at = self._wall() if joined_at is None else joined_at
            if members is None:
                members = self._rooms[room] = {}
            members[actor] = mem
            view = self._show(mem)
            return [public_event(name=JOIN, actor=view, room=room, previous=None)]
        before = mem.view
        assert before is not None
        if cid is None:
            mem.anon_seq, mem.anon_kind = seq, kind
            if kind == "join":
                if mem.take_credit(data, now):
                    self._unsure.add(room)
                else:
                    mem.anon += 1
        else:
            conn = mem.conns.get(cid)
            if conn is not None:
                conn.data = data
                conn.order = (seq, 0)
            else:
                # a connection we have not seen: a list-learned anonymous socket (its late
                # join, or an update from it), else a new socket (or a missed join)
                if kind == "join":
                    converted = mem.take_credit(data, now)
                else:
                    converted = mem.take_credit(data, now) or mem.anon > 0
                if converted:
                    mem.anon -= 1
                    mem.credits = min(mem.credits, mem.anon)
                    self._unsure.add(room)
                mem.conns[cid] = _Conn(data, None, (seq, 0))
        mem.data = data
        if actor_type is not None:
            mem.actor_type = actor_type
        if plain and data != before.presence:
            # certainly different data (no float, so no NaN to equal itself): an update,
            # without the strict comparison of _changed_events
            view = self._show(mem)
            return [public_event(name=UPDATE, actor=view, room=mem.room, previous=before)]
        return self._changed_events(mem, before)

    def _leave(
        self,
        room: Optional[str],
        actor: str,
        cid: Optional[str],
        mem: Optional[_Member],
        seq: int,
        now: float,
    ) -> list[PublicEvent]:
        if cid is not None:
            self._bury((room, actor, cid), seq)
        if mem is None:
            if cid is None:
                self._bury((room, actor, None), seq)
            return []  # a leave for an absent actor: nothing to say
        before = mem.view
        assert before is not None
        if cid is not None and cid in mem.conns:
            del mem.conns[cid]
        elif cid is not None and mem.anon == 0:
            return []  # an unknown connection: not a socket we counted
        else:
            # an anonymous socket (or an unknown connection while anonymous ones exist)
            mem.anon_seq, mem.anon_kind = seq, "leave"
            if mem.debits and mem.take_debit(now):
                self._unsure.add(room)
                return []  # a list already removed this socket
            if mem.anon:
                mem.anon -= 1
                if mem.credits > mem.anon:
                    mem.credits = mem.anon
            else:
                oldest = min(mem.conns, key=lambda c: mem.conns[c].order)
                del mem.conns[oldest]
        if not mem.anon and not mem.conns:
            self._remove(mem)
            self._bury((room, actor, None), seq)
            return [public_event(name=LEAVE, actor=before, room=room, previous=None)]
        if mem.anon == 0 and mem.conns:
            mem.data = mem.newest_conn_data()
        return self._changed_events(mem, before)

    # ------------------------------------------------------------ lists

    def apply_list(
        self, lst: PresenceList, room: Optional[str], requested_at: int, now: float
    ) -> list[PublicEvent]:
        """Reconcile `room` from a presence list requested at `requested_at` (see mark()).

        The room's memberships become what the list says (one entry per socket), with
        leave events first, then joins and updates in list order, except where an event
        applied after `requested_at` contradicts the list (see the module docstring).
        Returns [] for a stale list.
        """
        if requested_at < max(self._floor, self._list_marks.get(room, 0)):
            return []
        self._list_marks[room] = requested_at
        grouped: dict[str, list[PresenceEntry]] = {}
        for entry in lst.entries:
            grouped.setdefault(entry.actor_token_id, []).append(entry)
        members = self._rooms.get(room, {})
        leaves: list[PublicEvent] = []
        others: list[PublicEvent] = []
        for actor in [a for a in members if a not in grouped]:
            self._reconcile(room, actor, members[actor], (), requested_at, now, leaves, others)
        for actor, entries in grouped.items():
            mem = self._rooms.get(room, {}).get(actor)
            self._reconcile(room, actor, mem, entries, requested_at, now, leaves, others)
        if self._gone:
            for key in [k for k, s in self._gone.items() if k[0] == room and s <= requested_at]:
                del self._gone[key]
        return leaves + others

    def _reconcile(
        self,
        room: Optional[str],
        actor: str,
        mem: Optional[_Member],
        entries: Sequence[PresenceEntry],
        mark: int,
        now: float,
        leaves: list[PublicEvent],
        others: list[PublicEvent],
    ) -> None:
        """Make one (room, actor) membership what its list entries say, events winning."""
        gone = self._gone
        old_conns = mem.conns if mem is not None else {}
        old_anon = mem.anon if mem is not None else 0
        by_cid: dict[str, PresenceEntry] = {}
        anon_entries: list[PresenceEntry] = []
        for e in entries:
            if e.connection_id is not None:
                by_cid[e.connection_id] = e
            else:
                anon_entries.append(e)
        accepted: list[PresenceEntry] = list(anon_entries)

        # identified connections: newer events win, then the list
        conns: dict[str, _Conn] = {}
        newer_event = False
        for cid, conn in old_conns.items():
            if conn.order[0] > mark:
                conns[cid] = conn
                newer_event = True
        changed: list[tuple[str, PresenceEntry, FrozenDict]] = []
        for cid, e in by_cid.items():
            if cid in conns or gone.get((room, actor, cid), _NEVER) > mark:
                continue
            accepted.append(e)
            data = frozen_data(e.presence)
            old = old_conns.get(cid)
            if old is not None and same_data(old.data, data):
                joined = e.joined_at if e.joined_at is not None else old.joined_at
                conns[cid] = _Conn(old.data, joined, old.order)
            else:
                changed.append((cid, e, data))
        changed.sort(
            key=lambda c: (
                c[1].update_seq if c[1].update_seq is not None else -math.inf,
                c[1].joined_at if c[1].joined_at is not None else -math.inf,
                _canon(c[2]),
                c[0],
            )
        )
        for cid, e, data in changed:
            self._sub += 1
            conns[cid] = _Conn(data, e.joined_at, (mark, self._sub))

        # a list without connection ids for connections we track (e.g. a REST answer):
        # keep as many as it accounts for, preferring those whose data it shows
        if not by_cid and anon_entries:
            spare = sorted(
                (cid for cid in old_conns if cid not in conns),
                key=lambda c: old_conns[c].order,
                reverse=True,
            )
            pool = list(anon_entries)
            for want_match in (True, False):
                for cid in list(spare):
                    if not pool:
                        break
                    conn = old_conns[cid]
                    hit = next(
                        (
                            i
                            for i, e in enumerate(pool)
                            if same_data(frozen_data(e.presence), conn.data)
                        ),
                        None,
                    )
                    if hit is None and want_match:
                        continue
                    pool.pop(hit if hit is not None else len(pool) - 1)
                    conns[cid] = conn
                    spare.remove(cid)
            anon_entries = pool

        # anonymous sockets: counts, bounded by any newer anonymous event
        list_anon = len(anon_entries)
        anon_seq, anon_kind = _NEVER, ""
        if mem is not None and mem.anon_seq > mark:
            anon_seq, anon_kind = mem.anon_seq, mem.anon_kind
        left_at = gone.get((room, actor, None), _NEVER)
        if left_at > mark and left_at > anon_seq:
            anon_kind = "leave"
        if not anon_kind:
            anon = list_anon
        elif anon_kind == "leave":
            anon = min(list_anon, old_anon)
        else:
            anon = max(list_anon, min(old_anon, 1))
            newer_event = True

        count = len(conns) + anon
        if count == 0:
            if mem is not None:
                before = mem.view
                assert before is not None
                self._remove(mem)
                leaves.append(PublicEvent(LEAVE, before, room))
            return

        # visible data
        cached = mem.data if mem is not None else None
        if anon == 0:
            data = max(conns.values(), key=lambda c: c.order).data
        elif cached is not None and (
            newer_event or any(same_data(cached, frozen_data(e.presence)) for e in accepted)
        ):
            data = cached  # a newer event's data, or one the list confirms: stay quiet
        elif accepted:
            data = frozen_data(_newest_entry(accepted).presence)
        else:
            data = cached if cached is not None else _EMPTY

        created = mem is None
        if mem is None:
            mem = _Member(actor, room, data)
        before = mem.view

        # sockets the list adds may still have their join in flight, removed ones their
        # leave; late broadcasts still awaited from an earlier list stay awaited
        if now > mem.grace_until:
            mem.expire()
        confirmed = old_anon - mem.credits  # anonymous sockets whose join we have seen
        expected = confirmed + mem.debits  # ... plus those whose leave we still expect
        mem.expire()
        if anon > confirmed:
            mem.credits = anon - confirmed
            mem.credit_data = tuple(frozen_data(e.presence) for e in anon_entries)
        if anon < expected:
            mem.debits = expected - anon
        mem.grace_until = now + self._grace

        mem.conns = conns
        mem.anon = anon
        mem.data = data
        if mem.joined_at is None:  # set once (see the module docstring)
            times = [e.joined_at for e in accepted if e.joined_at is not None]
            mem.joined_at = min(times) if times else self._wall()
        actor_type = next((e.actor_type for e in accepted if e.actor_type), None)
        if actor_type is not None:
            mem.actor_type = actor_type

        if created:
            self._add(mem)
            self._refresh(mem)
            assert mem.view is not None
            others.append(PublicEvent(JOIN, mem.view, room))
            return
        assert before is not None
        others.extend(self._changed_events(mem, before))

    # ------------------------------------------------------------ forgetting

    def drop_room(self, room: Optional[str]) -> list[PublicEvent]:
        """Forget `room` (we left it): everyone cached there leaves, with events.

        Lists of that room requested before the drop are ignored afterwards.
        """
        self._seq += 1
        self._list_marks[room] = self._seq
        self._unsure.discard(room)
        if self._gone:
            for key in [k for k in self._gone if k[0] == room]:
                del self._gone[key]
        members = self._rooms.pop(room, None)
        if not members:
            return []
        self._invalidate(room)
        return [PublicEvent(LEAVE, m.view, room) for m in members.values() if m.view is not None]

    def reset(self) -> list[PublicEvent]:
        """Forget everything (a final disconnect), returning a leave for every membership.

        Lists requested before the reset are ignored afterwards; version keeps increasing.
        """
        self._seq += 1
        self._floor = self._seq
        self._list_marks.clear()
        self._gone.clear()
        self._unsure.clear()
        events = [
            PublicEvent(LEAVE, m.view, room)
            for room, members in self._rooms.items()
            for m in members.values()
            if m.view is not None
        ]
        if self._rooms:
            self._rooms = {}
            self._snaps.clear()
            self._invalidate(None)
        return events
