"""Lobbies: presence across a lobby's rooms, watched without being present in them.

Three parts, one job each:

- `LobbyStore` (pure): one lobby's cache, {room: {actor id: ActorPresence}}.
- `LobbyBook` (pure): every lobby of a session, its subscription state, and which lobby
  an incoming event belongs to. The real broker names a lobby in its events by an
  internal id, not the slug we subscribed with (PROTOCOL.md, "Lobbies"; transcript
  08-lobby), and when two subscribed lobbies share a room it keeps only the last
  subscription's mapping, so an event cannot always be told apart: it then goes to every
  subscribed lobby that lists the room.
- `Lobby` (the public context): ``client.set_lobby("main")``; it reaches its client
  only through the narrow `LobbyPort`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Callable, Optional, Protocol, TypeVar

from nolag.events import PresenceContext
from nolag.models import ActorPresence, FrozenDict, either_room
from nolag.presence import JOIN, LEAVE, UPDATE, PublicEvent, frozen_data, same_data
from nolag.protocol import LobbyPresence, LobbySnapshot

__all__ = ["Lobby", "LobbyBook", "LobbyPort", "LobbySnapshotView", "LobbyState", "LobbyStore"]

log = logging.getLogger("nolag")

T = TypeVar("T")

#: a lobby's presence grouped by room: {room slug: {actor id: ActorPresence}} (`Lobby.by_room`)
LobbySnapshotView = Mapping[str, Mapping[str, ActorPresence]]


class _LobbyMember:
    __slots__ = ("count", "view")

    def __init__(self, count: int, view: ActorPresence) -> None:
        self.count = count
        self.view = view


class LobbyStore:
    """One lobby's presence across its rooms: {room: {actor id: ActorPresence}}.

    Events are counted per (room, actor) like room presence (a join per socket, an update
    for an absent actor is a join, the actor leaves when its joins are matched by leaves),
    quiet and idempotent. A snapshot (lobbySubscribed / lobbyPresenceList) has one entry
    per actor, so it sets presence, not socket counts: listed actors are present (count at
    least one, data from the snapshot), unlisted ones leave. `joined_at` is set once, when
    a member appears: the snapshot's joinedAt, else (lobby events carry none) this
    client's clock (`wall`, epoch seconds); `actor_type` is None (lobby frames carry none).
    A snapshot with no room at all is "unknown", never "everyone left": the real broker
    answers `{}` both for a lobby it has not mapped yet (its first `lobbySubscribed`) and
    for one whose rooms it forgot, so such a snapshot removes nobody.
    """

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall  # epoch seconds: joined_at of a member no frame dated
        self._rooms: dict[str, dict[str, _LobbyMember]] = {}
        self._version = 0
        self._snap: Optional[LobbySnapshotView] = None
        self._flat: dict[Optional[str], tuple[ActorPresence, ...]] = {}

    @property
    def version(self) -> int:
        """A counter that increases on every visible change."""
        return self._version

    def snapshot(self) -> LobbySnapshotView:
        """{room: {actor id: ActorPresence}}, read-only and cached until the next change."""
        if self._snap is None:
            self._snap = FrozenDict(
                {
                    room: FrozenDict({a: m.view for a, m in members.items()})
                    for room, members in self._rooms.items()
                }
            )
        return self._snap

    def members(self, room: Optional[str] = None) -> tuple[ActorPresence, ...]:
        """Every member as one tuple (rooms by slug, then the order members appeared), or
        `room`'s members only; cached: the same object until the next change."""
        flat = self._flat.get(room)
        if flat is None:
            rooms = self.snapshot()
            if room is not None:
                flat = tuple(rooms.get(room, {}).values())
            else:
                flat = tuple(actor for key in sorted(rooms) for actor in rooms[key].values())
            if room is None or room in self._rooms:  # never grow with unknown names
                self._flat[room] = flat
        return flat

    def get(self, actor_id: str, room: Optional[str] = None) -> Optional[ActorPresence]:
        """The actor in `room`, or without a room in the first room it is present in."""
        for key, members in self._rooms.items():
            if room is None or key == room:
                mem = members.get(actor_id)
                if mem is not None:
                    return mem.view
        return None

    def rooms(self) -> tuple[str, ...]:
        """Rooms of the lobby with at least one member."""
        return tuple(self._rooms)

    def _touch(self) -> None:
        self._snap = None
        self._flat = {}
        self._version += 1

    def _set(
        self, room: str, actor: str, count: int, data: FrozenDict, joined_at: Optional[float]
    ) -> list[PublicEvent]:
        members = self._rooms.setdefault(room, {})
        mem = members.get(actor)
        if mem is None:
            view = ActorPresence(actor, data, None, joined_at, room, count)
            members[actor] = _LobbyMember(count, view)
            self._touch()
            return [PublicEvent(JOIN, view, room)]
        before = mem.view
        if (
            mem.count == count
            and before.joined_at == joined_at
            and same_data(before.presence, data)
        ):
            return []
        mem.count = count
        mem.view = before._replace(presence=data, joined_at=joined_at, connections=count)
        self._touch()
        if same_data(before.presence, data):
            return []
        return [PublicEvent(UPDATE, mem.view, room, before)]

    def _drop(self, room: str, actor: str) -> list[PublicEvent]:
        members = self._rooms.get(room)
        mem = members.pop(actor, None) if members else None
        if mem is None:
            return []
        if not members:
            del self._rooms[room]
        self._touch()
        return [PublicEvent(LEAVE, mem.view, room)]

    def apply_event(self, ev: LobbyPresence) -> list[PublicEvent]:
        """Apply one lobbyPresence event; return the public events (room set)."""
        members = self._rooms.get(ev.room)
        mem = members.get(ev.actor_token_id) if members else None
        if ev.kind == "leave":
            if mem is None:
                return []
            if mem.count > 1:
                view = mem.view
                return self._set(
                    ev.room, view.actor_token_id, mem.count - 1, view.presence, view.joined_at
                )
            return self._drop(ev.room, ev.actor_token_id)
        if ev.kind not in ("join", "update"):
            return []
        data = frozen_data(ev.presence)
        if mem is None:  # lobby events carry no joinedAt (PROTOCOL "Lobbies")
            return self._set(ev.room, ev.actor_token_id, 1, data, self._wall())
        count = mem.count + 1 if ev.kind == "join" else mem.count
        return self._set(ev.room, ev.actor_token_id, count, data, mem.view.joined_at)

    def apply_snapshot(self, snap: LobbySnapshot) -> list[PublicEvent]:
        """Reconcile from a lobby snapshot; leave events first, then joins and updates.

        A snapshot without any room key is unknown, not empty (see the class docstring),
        and changes nothing.
        """
        if not snap.rooms:
            return []
        if snap.initial and not any(snap.rooms.values()):
            return []
        leaves: list[PublicEvent] = []
        for room, members in list(self._rooms.items()):
            listed = snap.rooms.get(room, {})
            for actor in [a for a in members if a not in listed]:
                leaves.extend(self._drop(room, actor))
        others: list[PublicEvent] = []
        for room, listed in snap.rooms.items():
            for actor, entry in listed.items():
                mem = self._rooms.get(room, {}).get(actor)
                count = mem.count if mem is not None else 1
                if mem is not None:  # joined_at is set once, when the member appears
                    joined = mem.view.joined_at
                elif entry.joined_at is not None:
                    joined = entry.joined_at
                else:
                    joined = self._wall()
                others.extend(self._set(room, actor, count, frozen_data(entry.presence), joined))
        return leaves + others

    def reset(self) -> list[PublicEvent]:
        """Forget the lobby (unsubscribed or disconnected), returning a leave per member."""
        events = [
            PublicEvent(LEAVE, m.view, room)
            for room, members in self._rooms.items()
            for m in members.values()
        ]
        if self._rooms:
            self._rooms = {}
            self._touch()
        return events


class LobbyState:
    """One lobby as the session knows it: subscribed or not, its rooms, its cache."""

    __slots__ = ("known_rooms", "slug", "store", "subscribed")

    def __init__(self, slug: str, wall: Callable[[], float] = time.time) -> None:
        self.slug = slug
        self.subscribed = False
        #: every room a snapshot of this lobby has named (empty rooms included)
        self.known_rooms: set[str] = set()
        self.store = LobbyStore(wall)

    def forget(self) -> None:
        """Unsubscribed or disconnected: drop the cache silently."""
        self.subscribed = False
        self.known_rooms.clear()
        self.store.reset()

    def view(self) -> LobbySnapshotView:
        """The cache plus the lobby's known rooms that are empty right now."""
        snapshot = self.store.snapshot()
        missing = self.known_rooms.difference(snapshot)
        if not missing:
            return snapshot
        return FrozenDict({**snapshot, **{room: FrozenDict() for room in sorted(missing)}})


class LobbyBook:
    """Every lobby of one session, and the routing of lobby frames to them (pure)."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.lobbies: dict[str, LobbyState] = {}
        self._alias: dict[str, str] = {}  # a broker's internal lobby id -> our slug
        self._wall = wall  # the lobby caches' clock (epoch seconds)

    def get(self, slug: str) -> LobbyState:
        """The state of lobby `slug`, created on first use."""
        state = self.lobbies.get(slug)
        if state is None:
            state = self.lobbies[slug] = LobbyState(slug, self._wall)
        return state

    def subscribed(self) -> list[LobbyState]:
        """The lobbies subscribed now, in the order they were first named."""
        return [state for state in self.lobbies.values() if state.subscribed]

    def route(self, lobby_id: str, room: Optional[str]) -> list[LobbyState]:
        """The subscribed lobbies a lobby frame named `lobby_id` (about `room`) belongs to.

        Our own slug, or an internal id learned before, names one lobby. An unknown id
        with one subscribed lobby is that lobby's alias (learned once). With several, the
        event goes to every subscribed lobby that lists `room` (or to all of them when none
        does): the real broker keeps one room -> lobby mapping, so its id cannot say more.
        """
        slug = self._alias.get(lobby_id, lobby_id)
        state = self.lobbies.get(slug)
        if state is not None:
            return [state] if state.subscribed else []
        candidates = self.subscribed()
        if len(candidates) == 1:
            self._alias[lobby_id] = candidates[0].slug
            return candidates
        if room is not None:
            candidates = [s for s in candidates if room in s.known_rooms] or candidates
        if len(candidates) > 1:
            log.debug(
                "lobby event for %r (room %r) could be any of %s; delivered to each",
                lobby_id,
                room,
                ", ".join(s.slug for s in candidates),
            )
        elif candidates:
            self._alias[lobby_id] = candidates[0].slug
        return candidates

    def forget_all(self) -> None:
        """The session ended: every lobby unsubscribed, every cache dropped, aliases too."""
        for state in self.lobbies.values():
            state.forget()
        self._alias.clear()


class LobbyPort(Protocol):
    """What a `Lobby` context needs of its client (nolag.client implements it)."""

    def lobby_subscribe(self, slug: str, timeout: Optional[float]) -> None:
        """Subscribe (kept across reconnects); raises ForbiddenError, PresenceTimeoutError."""

    def lobby_fetch(self, slug: str, timeout: Optional[float]) -> LobbySnapshot:
        """Ask the server for the lobby's presence; the reply, once the cache applied it."""

    def lobby_unsubscribe(self, slug: str, timeout: Optional[float]) -> None:
        """Stop watching; the cache is dropped at once."""

    def lobby_read(self, slug: str, read: Callable[[LobbyState], T]) -> T:
        """Run `read` on the lobby's state under the client's lock (pure reads only)."""


class Lobby(PresenceContext):
    """Presence across a lobby's rooms, watched without being present in them.

    ``lobby = client.set_lobby("main")``; ``lobby.subscribe()`` returns everyone present
    as a tuple of ActorPresence (each with its ``room``), then
    ``lobby.on("presence:join", fn)`` handlers get each change with ``actor.room`` set.
    ``lobby.by_room()`` groups the same cache as {room: {actor_id: ActorPresence}}. The
    subscription is restored after a reconnect.
    """

    def __init__(self, port: LobbyPort, slug: str) -> None:
        super().__init__()
        self._port = port
        self.slug = slug

    @property
    def subscribed(self) -> bool:
        """True from subscribe() until unsubscribe(), a refusal or disconnect()."""
        return self._port.lobby_read(self.slug, lambda s: s.subscribed)

    @property
    def known_rooms(self) -> frozenset[str]:
        """Every room a snapshot of this lobby has named so far."""
        return self._port.lobby_read(self.slug, lambda s: frozenset(s.known_rooms))

    def subscribe(self, timeout: Optional[float] = None) -> tuple[ActorPresence, ...]:
        """Subscribe and return everyone present, as get_all_presence() does.

        The real broker's first snapshot can be empty although members are present, so
        the subscription is always followed by a getLobbyPresence before this returns.
        Raises ForbiddenError if the token may not use the lobby, PresenceTimeoutError
        when the server does not answer within `timeout` seconds (default:
        options.request_timeout, for the whole call). Kept across reconnects.
        """
        self._port.lobby_subscribe(self.slug, timeout)
        return self.get_all_presence()

    def fetch_presence(self, timeout: Optional[float] = None) -> tuple[ActorPresence, ...]:
        """Ask the server for the lobby's presence, reconcile the lobby cache, return it as
        get_all_presence() does (rooms by slug, each entry with its `room`).

        Not subscribed, the server's answer is returned as it is (no cache to reconcile),
        in the same order. Raises PresenceTimeoutError after `timeout` seconds (default:
        options.request_timeout).
        """
        reply = self._port.lobby_fetch(self.slug, timeout)
        if self.subscribed:
            return self.get_all_presence()
        return tuple(
            ActorPresence(actor, entry.presence, entry.actor_type, entry.joined_at, room)
            for room in sorted(reply.rooms)
            for actor, entry in reply.rooms[room].items()
        )

    def get_all_presence(
        self, room: Optional[str] = None, *, room_id: Optional[str] = None
    ) -> tuple[ActorPresence, ...]:
        """The lobby cache as one immutable tuple, one entry per actor and room (each with
        its `room`), or only `room`'s members; the same object while nothing changed.

        Order: rooms by slug, then members in the order they appeared. `room_id` is the
        official SDKs' name for `room`. by_room() groups the same entries by room.
        """
        room = either_room(room, room_id)
        return self._port.lobby_read(self.slug, lambda s: s.store.members(room))

    def by_room(self) -> LobbySnapshotView:
        """The lobby cache grouped by room: {room: {actor_id: ActorPresence}}, read-only.

        Every room the lobby is known to have is a key, empty ones included (see
        known_rooms); the same object while nothing changed and no room is empty.
        """
        return self._port.lobby_read(self.slug, LobbyState.view)

    def get_presence(self, actor_id: str, room: Optional[str] = None) -> Optional[ActorPresence]:
        """One actor from the lobby cache (in `room`, or the first room it is in)."""
        return self._port.lobby_read(self.slug, lambda s: s.store.get(actor_id, room))

    def presence_count(self, room: Optional[str] = None) -> int:
        """Distinct actors in the lobby (or in one of its rooms)."""
        snapshot = self._port.lobby_read(self.slug, lambda s: s.store.snapshot())
        if room is not None:
            return len(snapshot.get(room, {}))
        return len({actor for members in snapshot.values() for actor in members})

    def unsubscribe(self, timeout: Optional[float] = None) -> None:
        """Stop watching the lobby and clear its cache (waits for the server's confirmation,
        at most `timeout` seconds; a late confirmation is no error)."""
        self._port.lobby_unsubscribe(self.slug, timeout)

    def _after_fork(self) -> None:
        """In a forked child: keep the callbacks, in a registry of the child's own."""
        self._events = self._events.copy()

    def __repr__(self) -> str:
        state = "subscribed" if self.subscribed else "not subscribed"
        return f"<Lobby {self.slug!r} {state}>"
