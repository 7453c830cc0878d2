"""Fluent contexts: ``client.set_app("demo").set_room("general")`` (lobbies: nolag.lobby).

A `Room` is a view of the client scoped to one room: its presence calls, its members and
its events, made of the client's public API only. Contexts are cached per name, so
``set_room("a") is set_room("a")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union

from nolag.events import PresenceContext
from nolag.models import ActorPresence

if TYPE_CHECKING:
    from nolag.lobby import Lobby

__all__ = ["App", "Room", "RoomPort"]


class RoomPort(Protocol):
    """The client as its contexts see it: the public calls they make (`NoLag` has them)."""

    def set_presence(self, data: Mapping[str, Any], room: Optional[str] = None) -> None: ...

    def clear_presence(self, room: Optional[str] = None) -> None: ...

    def own_presence(self, room: Optional[str] = None) -> Optional[Mapping[str, Any]]: ...

    def get_all_presence(self, room: Optional[str] = None) -> tuple[ActorPresence, ...]: ...

    def get_presence(
        self, actor_id: str, room: Optional[str] = None
    ) -> Optional[ActorPresence]: ...

    def presence_count(self, room: Optional[str] = None) -> int: ...

    def fetch_presence(
        self, room: Optional[str] = None, timeout: Optional[float] = None
    ) -> tuple[ActorPresence, ...]: ...

    def wait_for_presence(
        self,
        actor: Union[str, Callable[[ActorPresence], bool]],
        timeout: float = 10.0,
        room: Optional[str] = None,
    ) -> ActorPresence: ...

    def set_room(self, room: str) -> Room: ...

    def set_lobby(self, lobby: str) -> Lobby: ...


class App:
    """An app of the project: the namespace rooms and lobbies are named in."""

    def __init__(self, client: RoomPort, name: str) -> None:
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


class Room(PresenceContext):
    """One room, seen through the client: set presence in it, read and watch its members.

    On the real broker a connection is present in one room at a time, so setting presence
    in another room moves this client there (its old room's members leave the cache).
    """

    def __init__(self, client: RoomPort, slug: str) -> None:
        super().__init__()
        self.client = client
        self.slug = slug

    def set_presence(self, data: Mapping[str, Any]) -> None:
        """Announce this client's presence in the room (see NoLag.set_presence)."""
        self.client.set_presence(data, room=self.slug)

    def clear_presence(self) -> None:
        """Leave the room (see NoLag.clear_presence)."""
        self.client.clear_presence(room=self.slug)

    def own_presence(self) -> Optional[Mapping[str, Any]]:
        """The presence this client asked to show here, or None."""
        return self.client.own_presence(self.slug)

    def get_all_presence(self) -> tuple[ActorPresence, ...]:
        """The room's members in the local cache (immutable, shared while unchanged)."""
        return self.client.get_all_presence(room=self.slug)

    def get_presence(self, actor_id: str) -> Optional[ActorPresence]:
        """One member of the room from the cache, or None."""
        return self.client.get_presence(actor_id, room=self.slug)

    def presence_count(self) -> int:
        """How many actors are in the room (not sockets)."""
        return self.client.presence_count(room=self.slug)

    def fetch_presence(self, timeout: Optional[float] = None) -> tuple[ActorPresence, ...]:
        """The server's list for this room (see NoLag.fetch_presence)."""
        return self.client.fetch_presence(room=self.slug, timeout=timeout)

    def wait_for_presence(
        self, actor: Union[str, Callable[[ActorPresence], bool]], timeout: float = 10.0
    ) -> ActorPresence:
        """Block until the room holds a matching actor (see NoLag.wait_for_presence)."""
        return self.client.wait_for_presence(actor, timeout=timeout, room=self.slug)

    def __repr__(self) -> str:
        return f"<Room {self.slug!r}>"
