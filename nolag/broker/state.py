"""The broker's pure registry of sockets, room and project presence, and lobby subscriptions.

No I/O and no clock: every mutation takes the time it needs and returns the frames to
send as ``(connection id, frame)`` deliveries, in order. Projects never share anything:
rooms are keyed by ``(project, slug)``.

Semantics (the real broker's, plus the local broker's extensions):

- A socket is in at most one room, and has at most one project-level presence.
- Its first presence in a room (or at project level) sends ``join`` then ``update`` to
  every member, itself included; later ones one ``update``; leaving (room switch or
  socket loss) sends ``leave`` to the remaining members, one per socket.
- Room events go to the room's members; project-level events (``roomId`` nil) go to
  every authenticated socket of the project.
- Presence data is any value the core accepted; nil is a value like any other (an
  ``update`` to nil keeps the socket listed, as Kraken does).
- Lobbies show presence per *actor*: an actor with several sockets in one room is one
  entry (earliest ``joinedAt``, most recently set presence); subscribers get ``join``
  when its first socket enters the room, ``update`` on every change of what they see,
  and ``leave`` only when its last socket leaves the room.

Kraken mode (``Registry(kraken=True)``) drops the extension keys from every frame and
reproduces Kraken's lobby behaviour instead (transcript 08, issue 14):

- lobby events mirror the room's events socket by socket (``join`` + ``update`` on a
  socket's first presence, ``leave`` for each socket that leaves) and carry the lobby's
  internal id, not the slug;
- each ``lobbySubscribe`` points every room of the lobby at that lobby, overwriting the
  previous mapping, so of two lobbies sharing a room only the last subscribed gets its
  events;
- the first subscribe of a lobby whose rooms are not known yet answers an empty snapshot;
- the lobby's rooms are forgotten ``forget_after`` seconds after its last subscribe
  (:meth:`Registry.expire_lobbies`): ``getLobbyPresence`` then answers ``{}`` and events stop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from nolag.presence import merge_sockets

from . import frames
from .tokens import LobbyView

Frame = dict[str, Any]
Delivery = tuple[str, Union[Frame, bytes]]
RoomKey = tuple[str, str]
LobbyKey = tuple[str, str]


@dataclass
class Member:
    """One socket's presence in a room or at project level."""

    conn_id: str
    actor_id: str
    actor_type: str
    data: Any
    joined_at: int
    seq: int
    """Global order of the last set, to find an actor's most recent presence."""


@dataclass(frozen=True)
class ActorSummary:
    """One actor's merged presence across its sockets in one room (or project level)."""

    actor_id: str
    actor_type: str
    presence: Any
    joined_at: int
    connections: int


@dataclass
class _Conn:
    """What the registry knows about one authenticated socket."""

    conn_id: str
    actor_id: str
    actor_type: str
    project_id: str
    room: Optional[str] = None
    lobbies: dict[LobbyKey, str] = field(default_factory=dict)
    """Subscribed lobby → the slug it was subscribed with."""


def _effective(members: Mapping[str, Member], actor_id: str) -> Optional[Member]:
    """The actor's most recently set membership among ``members``, or None."""
    best: Optional[Member] = None
    for member in members.values():
        if member.actor_id == actor_id and (best is None or member.seq > best.seq):
            best = member
    return best


def summarise(members: list[Member]) -> list[ActorSummary]:
    """Merge per-socket memberships into one summary per actor, in order of arrival."""
    out = []
    for actor_id, latest, group in merge_sockets(
        members, actor=lambda m: m.actor_id, order=lambda m: m.seq
    ):
        out.append(
            ActorSummary(
                actor_id=actor_id,
                actor_type=latest.actor_type,
                presence=latest.data,
                joined_at=min(m.joined_at for m in group),
                connections=len(group),
            )
        )
    return out


class Registry:
    """Sockets, memberships and lobby subscriptions, mutated only through its methods."""

    def __init__(self, *, kraken: bool = False) -> None:
        """Start empty; ``kraken`` selects Kraken's frames and lobby behaviour."""
        self.kraken = kraken
        self._k_room_lobby: dict[RoomKey, LobbyKey] = {}
        """Kraken mode: room → the lobby subscribed last among those holding it."""
        self._k_lobby_seen: dict[LobbyKey, float] = {}
        """Kraken mode: lobby → time of its last subscribe (while its rooms are known)."""
        self._conns: dict[str, _Conn] = {}
        self._project_conns: dict[str, dict[str, None]] = {}
        self._rooms: dict[RoomKey, dict[str, Member]] = {}
        self._project_presence: dict[str, dict[str, Member]] = {}
        self._lobby_subs: dict[LobbyKey, dict[str, None]] = {}
        self._lobby_rooms: dict[LobbyKey, tuple[str, ...]] = {}
        self._room_lobbies: dict[RoomKey, dict[LobbyKey, None]] = {}
        self._seq = 0

    # -- sockets ------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of authenticated sockets."""
        return len(self._conns)

    def __contains__(self, conn_id: object) -> bool:
        """True when the socket is registered (authenticated)."""
        return conn_id in self._conns

    def add(self, conn_id: str, actor_id: str, actor_type: str, project_id: str) -> None:
        """Register an authenticated socket (no presence yet)."""
        if conn_id in self._conns:
            raise ValueError(f"connection {conn_id!r} is already registered")
        self._conns[conn_id] = _Conn(conn_id, actor_id, actor_type, project_id)
        self._project_conns.setdefault(project_id, {})[conn_id] = None

    def remove(self, conn_id: str) -> list[Delivery]:
        """Forget a socket: leaves for its room and project presence, lobbies dropped."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return []
        out: list[Delivery] = []
        if conn.room is not None:
            out += self._leave_room(conn, include_self=False)
        project = self._project_presence.get(conn.project_id, {})
        if conn_id in project:
            del project[conn_id]
            if not project:
                del self._project_presence[conn.project_id]
            leave = self._event("leave", conn, None, None)
            out += [(c, leave) for c in self._project_conns[conn.project_id] if c != conn_id]
        for key in list(conn.lobbies):
            self._unsubscribe(conn, key)
        del self._conns[conn_id]
        peers = self._project_conns[conn.project_id]
        del peers[conn_id]
        if not peers:
            del self._project_conns[conn.project_id]
        return out

    def room_of(self, conn_id: str) -> Optional[str]:
        """The slug of the room the socket is present in, if any."""
        conn = self._conns.get(conn_id)
        return conn.room if conn is not None else None

    # -- presence -----------------------------------------------------------------

    def _event(
        self, event: str, conn: _Conn, room: Optional[str], member: Optional[Member]
    ) -> Frame:
        """A presence event of ``conn`` in the registry's mode; ``member`` (its presence
        and joinedAt) is None for a leave."""
        if member is None:
            return frames.presence_event(
                event, conn.actor_id, conn.conn_id, room, None, kraken=self.kraken
            )
        return frames.presence_event(
            event,
            conn.actor_id,
            conn.conn_id,
            room,
            member.data,
            actor_type=conn.actor_type,
            joined_at=member.joined_at,
            kraken=self.kraken,
        )

    def _next_seq(self) -> int:
        """A fresh, increasing sequence number."""
        self._seq += 1
        return self._seq

    def set_room_presence(self, conn_id: str, room: str, data: Any, now: float) -> list[Delivery]:
        """Set the socket's presence in ``room``, leaving its previous room first."""
        conn = self._conns[conn_id]
        out: list[Delivery] = []
        if conn.room is not None and conn.room != room:
            out += self._leave_room(conn, include_self=True)
        key = (conn.project_id, room)
        members = self._rooms.setdefault(key, {})
        member = members.get(conn_id)
        if member is not None:
            member.data, member.seq = data, self._next_seq()
            update = self._event("update", conn, room, member)
            out += [(c, update) for c in members]
            out += self._lobby_events(key, "update", conn.actor_id, data)
            return out
        # Kraken sends lobby events per socket; the local broker per actor
        first_of_actor = self.kraken or _effective(members, conn.actor_id) is None
        member = members[conn_id] = Member(
            conn_id, conn.actor_id, conn.actor_type, data, int(now), self._next_seq()
        )
        conn.room = room
        join = self._event("join", conn, room, member)
        update = self._event("update", conn, room, member)
        out += [(c, join) for c in members]
        out += [(c, update) for c in members]
        if first_of_actor:
            out += self._lobby_events(key, "join", conn.actor_id, data)
        out += self._lobby_events(key, "update", conn.actor_id, data)
        return out

    def _leave_room(self, conn: _Conn, *, include_self: bool) -> list[Delivery]:
        """Take the socket out of its room: ``leave`` to the members, lobby view updated."""
        assert conn.room is not None
        room, key = conn.room, (conn.project_id, conn.room)
        members = self._rooms[key]
        before = _effective(members, conn.actor_id)
        leave = self._event("leave", conn, room, None)
        out: list[Delivery] = [(c, leave) for c in members if include_self or c != conn.conn_id]
        gone = members.pop(conn.conn_id)
        conn.room = None
        if not members:
            del self._rooms[key]
        after = _effective(members, conn.actor_id)
        if self.kraken or after is None:  # Kraken: a leave for every socket
            out += self._lobby_events(key, "leave", conn.actor_id, None)
        elif before is gone and after.data != gone.data:
            out += self._lobby_events(key, "update", conn.actor_id, after.data)
        return out

    def set_project_presence(self, conn_id: str, data: Any, now: float) -> list[Delivery]:
        """Set the socket's project-level presence; events go to the whole project."""
        conn = self._conns[conn_id]
        members = self._project_presence.setdefault(conn.project_id, {})
        audience = list(self._project_conns[conn.project_id])
        member = members.get(conn_id)
        if member is not None:
            member.data, member.seq = data, self._next_seq()
            changed = self._event("update", conn, None, member)
            updates: list[Delivery] = [(c, changed) for c in audience]
            return updates
        member = members[conn_id] = Member(
            conn_id, conn.actor_id, conn.actor_type, data, int(now), self._next_seq()
        )
        join = self._event("join", conn, None, member)
        update = self._event("update", conn, None, member)
        out: list[Delivery] = [(c, join) for c in audience]
        return out + [(c, update) for c in audience]

    def room_members(self, project_id: str, room: str) -> list[Member]:
        """The room's memberships, one per socket, in order of arrival."""
        return list(self._rooms.get((project_id, room), {}).values())

    def project_members(self, project_id: str) -> list[Member]:
        """The project-level memberships, one per socket, in order of arrival."""
        return list(self._project_presence.get(project_id, {}).values())

    def actors(self, project_id: str, room: Optional[str]) -> list[ActorSummary]:
        """One merged summary per actor, for a room or (``room`` None) project level."""
        if room is None:
            return summarise(self.project_members(project_id))
        return summarise(self.room_members(project_id, room))

    # -- lobbies ------------------------------------------------------------------

    def lobby_presence(self, view: LobbyView) -> dict[str, dict[str, Frame]]:
        """The lobby snapshot: every room of the lobby, each actor once."""
        out: dict[str, dict[str, Frame]] = {}
        for room in view.rooms:
            out[room] = {
                s.actor_id: {
                    "actorTokenId": s.actor_id,
                    "joinedAt": s.joined_at,
                    "presence": s.presence,
                }
                for s in self.actors(view.project_id, room)
            }
        return out

    def lobby_subscribe(
        self, conn_id: str, view: LobbyView, now: float = 0.0
    ) -> dict[str, dict[str, Frame]]:
        """Subscribe the socket to a lobby of its project and return the snapshot.

        ``now`` (monotonic seconds) matters in Kraken mode only: it restarts the lobby's
        forget timer (see :meth:`expire_lobbies`).
        """
        conn = self._conns[conn_id]
        if view.project_id != conn.project_id:
            raise ValueError("a socket may only subscribe to lobbies of its own project")
        key = (view.project_id, view.lobby_id)
        conn.lobbies[key] = view.slug
        self._lobby_subs.setdefault(key, {})[conn_id] = None
        if self.kraken:
            known = key in self._lobby_rooms
            self._lobby_rooms[key] = view.rooms
            self._k_lobby_seen[key] = now
            for room in view.rooms:
                self._k_room_lobby[(view.project_id, room)] = key  # the last one wins
            return self.lobby_presence(view) if known else {}
        if key not in self._lobby_rooms:
            self._lobby_rooms[key] = view.rooms
            for room in view.rooms:
                self._room_lobbies.setdefault((view.project_id, room), {})[key] = None
        return self.lobby_presence(view)

    def lobby_known(self, view: LobbyView) -> bool:
        """Kraken mode: True while the broker still knows the lobby's rooms."""
        return (view.project_id, view.lobby_id) in self._lobby_rooms

    def expire_lobbies(self, now: float, forget_after: float) -> None:
        """Kraken mode: forget the rooms of lobbies not subscribed for ``forget_after`` s."""
        for key, seen in list(self._k_lobby_seen.items()):
            if now - seen < forget_after:
                continue
            del self._k_lobby_seen[key]
            for room in self._lobby_rooms.pop(key, ()):
                room_key = (key[0], room)
                if self._k_room_lobby.get(room_key) == key:
                    del self._k_room_lobby[room_key]

    def lobby_unsubscribe(self, conn_id: str, lobby_id: str) -> None:
        """Drop the socket's subscription to a lobby (a no-op when not subscribed)."""
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._unsubscribe(conn, (conn.project_id, lobby_id))

    def _unsubscribe(self, conn: _Conn, key: LobbyKey) -> None:
        """Remove one subscription; forget the lobby's room index with its last subscriber."""
        if conn.lobbies.pop(key, None) is None:
            return
        subs = self._lobby_subs[key]
        del subs[conn.conn_id]
        if subs:
            return
        del self._lobby_subs[key]
        if self.kraken:
            return  # Kraken keeps the lobby's rooms until its forget timer runs out
        for room in self._lobby_rooms.pop(key):
            lobbies = self._room_lobbies[(key[0], room)]
            del lobbies[key]
            if not lobbies:
                del self._room_lobbies[(key[0], room)]

    def _lobby_events(
        self, room_key: RoomKey, event: str, actor_id: str, data: Any
    ) -> list[Delivery]:
        """A ``lobbyPresence`` event to every subscriber of every lobby holding the room
        (Kraken mode: of the one lobby the room points at, with its internal id)."""
        out: list[Delivery] = []
        if self.kraken:
            target = self._k_room_lobby.get(room_key)
            subs = self._lobby_subs.get(target, {}) if target is not None else {}
            if target is None or not subs:
                return out
            event_frame = frames.lobby_event(event, target[1], room_key[1], actor_id, data)
            return [(conn_id, event_frame) for conn_id in subs]
        for key in self._room_lobbies.get(room_key, {}):
            by_slug: dict[str, Frame] = {}
            for conn_id in self._lobby_subs[key]:
                slug = self._conns[conn_id].lobbies[key]
                frame = by_slug.get(slug)
                if frame is None:
                    frame = frames.lobby_event(event, slug, room_key[1], actor_id, data)
                    by_slug[slug] = frame
                out.append((conn_id, frame))
        return out
