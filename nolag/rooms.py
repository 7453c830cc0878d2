"""Fluent contexts: ``client.set_app("demo").set_room("general")`` and ``.set_lobby("main")``.

A `Room` is a view of the client scoped to one room: its presence calls, its members and
its events. A `Lobby` watches presence across the rooms of a lobby without joining them:
a snapshot on subscribe, events with the room in each, a cache of its own, restored after
a reconnect. Contexts are cached per name, so ``set_room("a") is set_room("a")``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union, overload

from nolag import protocol
from nolag.errors import PresenceTimeoutError
from nolag.events import PRESENCE_EVENTS, Handler, Registry
from nolag.models import ActorPresence, FrozenDict
from nolag.presence import LobbyStore

if TYPE_CHECKING:
    from nolag.client import NoLag

__all__ = ["App", "Lobby", "Room"]

H = TypeVar("H", bound=Handler)


class App:
    """An app of the project: the namespace rooms and lobbies are named in."""

    def __init__(self, client: NoLag, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"app must be a non-empty str, got {name!r}")
        self.client = client
        self.name = name

    def set_room(self, room: str) -> Room:
        """The context of one room of this app (presence uses the room's slug on the wire)."""
        return self.client.set_room(room)

    def set_lobby(self, lobby: str) -> Lobby:
        """The context of one lobby of this app."""
        return self.client.set_lobby(lobby)

    def __repr__(self) -> str:
        return f"<App {self.name!r}>"


class _Contextual:
    """Shared by rooms and lobbies: a registry of presence callbacks of their own."""

    _events: Registry

    @overload
    def on(self, event: str, handler: None = None) -> Callable[[H], H]: ...

    @overload
    def on(self, event: str, handler: H) -> H: ...

    def on(self, event: str, handler: Optional[H] = None) -> Union[H, Callable[[H], H]]:
        """Register a presence:join / presence:update / presence:leave callback (or decorate)."""
        return self._events.on(event, handler)

    def off(self, event: str, handler: Optional[Handler] = None) -> None:
        """Unregister one callback, or all callbacks of the event."""
        self._events.off(event, handler)


class Room(_Contextual):
    """One room, seen through the client: set presence in it, read and watch its members.

    On the real broker a connection is present in one room at a time, so setting presence
    in another room moves this client there (its old room's members leave the cache).
    """

    def __init__(self, client: NoLag, slug: str) -> None:
        self.client = client
        self.slug = slug
        self._events = Registry(PRESENCE_EVENTS)

    def set_presence(self, data: Mapping[str, Any]) -> None:
        """Announce this client's presence in the room (see NoLag.set_presence)."""
        self.client.set_presence(data, room=self.slug)

    def clear_presence(self) -> None:
        """Leave the room (see NoLag.clear_presence)."""
        self.client.clear_presence(room=self.slug)

    def own_presence(self) -> Optional[Mapping[str, Any]]:
        """The presence this client asked to show here, or None."""
        return self.client.own_presence(self.slug)

    def get_all_presence(self) -> Sequence[ActorPresence]:
        """The room's members in the local cache (immutable, shared while unchanged)."""
        return self.client.get_all_presence(room=self.slug)

    def get_presence(self, actor_id: str) -> Optional[ActorPresence]:
        """One member of the room from the cache, or None."""
        return self.client.get_presence(actor_id, room=self.slug)

    def presence_count(self) -> int:
        """How many actors are in the room (not sockets)."""
        return self.client.presence_count(room=self.slug)

    def fetch_presence(self, timeout: Optional[float] = None) -> list[ActorPresence]:
        """The server's list for this room (see NoLag.fetch_presence)."""
        return self.client.fetch_presence(room=self.slug, timeout=timeout)

    def wait_for_presence(
        self, actor: Union[str, Callable[[ActorPresence], bool]], timeout: float = 10.0
    ) -> ActorPresence:
        """Block until the room holds a matching actor (see NoLag.wait_for_presence)."""
        return self.client.wait_for_presence(actor, timeout=timeout, room=self.slug)

    def __repr__(self) -> str:
        return f"<Room {self.slug!r}>"


LobbySnapshotView = Mapping[str, Mapping[str, ActorPresence]]


class Lobby(_Contextual):
    """Presence across a lobby's rooms, watched without being present in them."""

    def __init__(self, client: NoLag, slug: str) -> None:
        self.client = client
        self.slug = slug
        self.subscribed = False
        self.known_rooms: set[str] = set()
        self._store = LobbyStore()
        self._events = Registry(PRESENCE_EVENTS)

    def subscribe(self, timeout: Optional[float] = None) -> LobbySnapshotView:
        """Subscribe and return the snapshot {room: {actor_id: ActorPresence}}.

        The real broker's first snapshot can be empty although members are present, so
        the subscription is always followed by a getLobbyPresence before this returns.
        Raises ForbiddenError if the token may not use the lobby. Kept across reconnects.
        """
        timeout = self.client._timeout(timeout, self.client.options.request_timeout, "timeout")

        def mark_subscribed() -> None:
            self.subscribed = True

        try:
            self.client._request(
                ("lobby", self.slug),
                protocol.encode_lobby_subscribe(self.slug),
                timeout,
                f"subscription to lobby {self.slug!r}",
                before=mark_subscribed,
            )
        except BaseException:
            with self.client._lock:
                self.subscribed = False
            raise
        return self.fetch_presence(timeout)

    def fetch_presence(self, timeout: Optional[float] = None) -> LobbySnapshotView:
        """Ask the server for the lobby's presence, reconcile the lobby cache, return it."""
        timeout = self.client._timeout(timeout, self.client.options.request_timeout, "timeout")
        reply = self.client._request(
            ("lobby", self.slug),
            protocol.encode_get_lobby_presence(self.slug),
            timeout,
            f"presence of lobby {self.slug!r}",
        )
        assert isinstance(reply, protocol.LobbySnapshot)
        with self.client._lock:
            if self.subscribed:
                return self._with_empty_rooms(self._store.snapshot())
        rooms = {
            room: FrozenDict(
                {
                    actor: ActorPresence(
                        actor, entry.presence, entry.actor_type, entry.joined_at, room
                    )
                    for actor, entry in members.items()
                }
            )
            for room, members in reply.rooms.items()
        }
        return FrozenDict(rooms)

    def get_all_presence(self) -> LobbySnapshotView:
        """The lobby cache: {room: {actor_id: ActorPresence}} (read-only)."""
        with self.client._lock:
            return self._with_empty_rooms(self._store.snapshot())

    def get_presence(self, actor_id: str, room: Optional[str] = None) -> Optional[ActorPresence]:
        """One actor from the lobby cache (in `room`, or the first room it is in)."""
        with self.client._lock:
            return self._store.get(actor_id, room)

    def presence_count(self, room: Optional[str] = None) -> int:
        """Distinct actors in the lobby (or in one of its rooms)."""
        with self.client._lock:
            snapshot = self._store.snapshot()
        if room is not None:
            return len(snapshot.get(room, {}))
        return len({actor for members in snapshot.values() for actor in members})

    def unsubscribe(self, timeout: Optional[float] = None) -> None:
        """Stop watching the lobby and clear its cache (waits for the server's confirmation)."""
        timeout = self.client._timeout(timeout, self.client.options.request_timeout, "timeout")
        with self.client._lock:
            was = self.subscribed
            self._forget()
        if not was or not self.client.connected:
            return
        # nothing depends on the server's confirmation, so a late one is no error
        with contextlib.suppress(PresenceTimeoutError):
            self.client._request(
                ("unsubscribe", self.slug),
                protocol.encode_lobby_unsubscribe(self.slug),
                timeout,
                f"unsubscription from lobby {self.slug!r}",
            )

    def _with_empty_rooms(self, snapshot: LobbySnapshotView) -> LobbySnapshotView:
        """The cache plus the lobby's known rooms that are empty right now."""
        missing = self.known_rooms.difference(snapshot)
        if not missing:
            return snapshot
        return FrozenDict({**snapshot, **{room: FrozenDict() for room in sorted(missing)}})

    def _forget(self) -> None:
        """Unsubscribed or disconnected: drop the cache silently (lock held)."""
        self.subscribed = False
        self.known_rooms.clear()
        self._store.reset()

    def _after_fork(self) -> None:
        """In a forked child: keep the subscription and callbacks, drop the cache."""
        self._events = self._events.copy()
        self._store = LobbyStore()

    def __repr__(self) -> str:
        state = "subscribed" if self.subscribed else "not subscribed"
        return f"<Lobby {self.slug!r} {state}>"
