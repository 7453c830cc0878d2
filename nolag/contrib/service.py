"""One presence client per process for web apps, and the "who is online" queries they make.

Web servers run many request threads in one process and often fork workers from a parent
(gunicorn ``--preload``, uwsgi, Django's autoreloader runs the app twice). A NoLag client
owns a socket and threads, which a forked child must never share, so `ProcessLocalClient`
builds the client lazily on first use, remembers the process it was built in, and builds a
fresh one in a child (found by ``os.getpid()`` on every access and by an at-fork hook). The
parent's client is simply abandoned in the child: closing it there would send a close frame
on the parent's connection.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

import attrs

from nolag.client import NoLag
from nolag.errors import NoLagError
from nolag.models import ActorPresence, ConnectionState, NoLagOptions

__all__ = ["PresenceService", "PresenceSettings", "ProcessLocalClient"]

log = logging.getLogger("nolag.contrib")

_holders: weakref.WeakSet[ProcessLocalClient] = weakref.WeakSet()


class ProcessLocalClient:
    """Holds at most one connected NoLag per process, built by `factory` on first use.

    Thread-safe: concurrent first uses build one client. After a fork the child builds its
    own on its first use. A client that gave up for good (status disconnected) is rebuilt.
    """

    def __init__(self, factory: Callable[[], NoLag]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._client: Optional[NoLag] = None
        self._pid = os.getpid()
        self._closed = False
        _holders.add(self)

    @property
    def pid(self) -> int:
        """The process the current client (if any) belongs to."""
        return self._pid

    def peek(self) -> Optional[NoLag]:
        """This process's client if one was built (and not closed), without building one."""
        if self._pid != os.getpid():
            return None
        return self._client

    def get(self) -> NoLag:
        """This process's connected client, building and connecting it on first use."""
        if self._pid != os.getpid():
            self._forget()  # a fork the at-fork hook did not see (e.g. a raw fork syscall)
        client = self._client
        if client is not None and client.status is not ConnectionState.DISCONNECTED:
            return client
        with self._lock:
            if self._closed:
                raise NoLagError("this presence client was closed")
            client = self._client
            if client is not None and client.status is ConnectionState.DISCONNECTED:
                log.warning("the presence client gave up; connecting a new one")
                client.disconnect()
                client = self._client = None
            if client is None:
                client = self._factory()
                self._client = client
                log.info("presence client %r ready in process %d", client, self._pid)
            return client

    def close(self) -> None:
        """Disconnect this process's client (if any); a later get() raises."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None and self._pid == os.getpid():
            client.disconnect()

    def reset(self) -> None:
        """Disconnect this process's client (if any); the next get() builds a new one."""
        with self._lock:
            client, self._client = self._client, None
            self._closed = False
        if client is not None and self._pid == os.getpid():
            client.disconnect()

    def _forget(self) -> None:
        """In a forked child: drop the parent's client and lock without touching them."""
        self._lock = threading.Lock()
        self._client = None
        self._pid = os.getpid()


def _after_fork_in_child() -> None:
    """Make every holder start afresh in a forked child (its locks may be held by dead threads)."""
    for holder in list(_holders):
        holder._forget()


def _close_at_exit() -> None:
    """Disconnect this process's clients cleanly when the interpreter exits."""
    for holder in list(_holders):
        try:
            holder.reset()
        except Exception:  # pragma: no cover - best effort at exit
            log.debug("closing a presence client at exit failed", exc_info=True)


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_at_exit)


def _opt_mapping(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"{attribute.name} must be a mapping or None, not {type(value).__name__}")


def _options(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"options must be a mapping, not {type(value).__name__}")
    unknown = set(value) - set(NoLagOptions.field_names())
    if unknown:
        raise ValueError(f"unknown client option(s) in options: {', '.join(sorted(unknown))}")


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{attribute.name} must be a number >= 0, got {value!r}")


def _token(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("token must be a non-empty str (set NOLAG_TOKEN)")


@attrs.frozen(slots=True, kw_only=True)
class PresenceSettings:
    """How a web app's presence client is built and queried, validated when created.

    `room` is the room the app shows by default; with `presence` set, the app's own client
    announces that data in `room` (project level without a room) and answers from its live
    cache, otherwise it observes and asks the server (REST, cached for `fetch_ttl` seconds).
    """

    #: the app's actor token (a server token, typically)
    token: str = attrs.field(validator=_token, repr=False)
    #: broker WebSocket URL; None uses the client's default (ws://127.0.0.1:8080/ws)
    url: Optional[str] = None
    #: the room shown by default; None means project-level presence
    room: Optional[str] = None
    #: data the app's own client announces in `room`; None observes without announcing
    presence: Optional[Mapping[str, Any]] = attrs.field(default=None, validator=_opt_mapping)
    #: further NoLagOptions fields, e.g. {"heartbeat_interval": 20}
    options: Mapping[str, Any] = attrs.field(factory=dict, validator=_options)
    #: seconds to wait for the first connection before a request fails
    connect_timeout: float = attrs.field(default=10.0, validator=_non_negative)
    #: list the app's own actor among the people online
    include_self: bool = False
    #: seconds a server answer (REST) is reused for rooms the app is not present in
    fetch_ttl: float = attrs.field(default=1.0, validator=_non_negative)

    KEYS = (
        "TOKEN",
        "URL",
        "ROOM",
        "PRESENCE",
        "OPTIONS",
        "CONNECT_TIMEOUT",
        "INCLUDE_SELF",
        "FETCH_TTL",
    )

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[str, Any], *, source: str, strict: bool = True
    ) -> PresenceSettings:
        """Build from upper-case keys (TOKEN, URL, ...); TOKEN and URL fall back to the environment.

        Unknown keys raise ValueError naming `source` when `strict`, else they are logged.
        """
        unknown = sorted(set(mapping) - set(cls.KEYS))
        if unknown:
            message = f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(cls.KEYS)}"
            if strict:
                raise ValueError(message)
            log.warning("%s", message)
        token = mapping.get("TOKEN") or os.environ.get("NOLAG_TOKEN")
        if not token:
            raise ValueError(f"{source}: no TOKEN given and NOLAG_TOKEN is not set")
        kwargs: dict[str, Any] = {
            "token": token,
            "url": mapping.get("URL") or os.environ.get("NOLAG_URL") or None,
        }
        for key in ("ROOM", "PRESENCE", "OPTIONS", "CONNECT_TIMEOUT", "INCLUDE_SELF", "FETCH_TTL"):
            if mapping.get(key) is not None:
                kwargs[key.lower()] = mapping[key]
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from None

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword options for NoLag(token, **kwargs)."""
        kwargs = dict(self.options)
        if self.url is not None:
            kwargs["url"] = self.url
        return kwargs


ClientFactory = Callable[[PresenceSettings], NoLag]


class PresenceService:
    """A web app's view of presence: one client per process and the questions pages ask.

    Answers come from the live cache where the app's client is present (its `room`, or
    project level), else from the server's list (REST), reused for `fetch_ttl` seconds.
    """

    def __init__(
        self, settings: PresenceSettings, client_factory: Optional[ClientFactory] = None
    ) -> None:
        self.settings = settings
        self._client_factory = client_factory
        self._holder = ProcessLocalClient(self._build)
        self._fetched: dict[Optional[str], tuple[float, list[ActorPresence]]] = {}
        self._fetch_lock = threading.Lock()

    @property
    def client(self) -> NoLag:
        """This process's connected client (built and connected on first use)."""
        return self._holder.get()

    def peek(self) -> Optional[NoLag]:
        """This process's client if it was built already, else None (never connects)."""
        return self._holder.peek()

    def online(self, room: Optional[str] = None) -> tuple[ActorPresence, ...]:
        """Who is online in `room` (default: settings.room), one entry per actor, join order:
        an immutable tuple, like every set of presences (docs/api.md)."""
        room = room if room is not None else self.settings.room
        client = self.client
        if room is None:
            people: Sequence[ActorPresence] = _unique(client.get_all_presence())
        elif client.room == room:
            people = client.get_all_presence(room)
        else:
            people = self._fetch(client, room)
        if not self.settings.include_self:
            me = client.actor_id
            people = [p for p in people if p.actor_token_id != me]
        return tuple(people)

    def count(self, room: Optional[str] = None) -> int:
        """How many actors are online in `room` (default: settings.room)."""
        return len(self.online(room))

    def is_online(self, actor_id: str, room: Optional[str] = None) -> bool:
        """True if `actor_id` is online in `room` (default: settings.room)."""
        return any(p.actor_token_id == actor_id for p in self.online(room))

    def close(self) -> None:
        """Disconnect this process's client; the service cannot be used afterwards."""
        self._holder.close()

    def reset(self) -> None:
        """Disconnect this process's client and forget cached answers; the next use reconnects."""
        with self._fetch_lock:
            self._fetched.clear()
        self._holder.reset()

    def _build(self) -> NoLag:
        """Create, announce (if configured), connect and warm up this process's client."""
        settings = self.settings
        if self._client_factory is not None:
            client = self._client_factory(settings)
        else:
            client = NoLag(settings.token, **settings.client_kwargs())
        announce = settings.presence is not None  # in `room`, or project level without one
        if settings.presence is not None:
            client.set_presence(settings.presence, room=settings.room)
        if not client.connected:
            client.connect(timeout=settings.connect_timeout or None)
        if announce or settings.room is None:  # the cache answers for this room
            self._warm_up(client, settings.room)
        return client

    def _warm_up(self, client: NoLag, room: Optional[str], timeout: float = 2.0) -> None:
        """Wait (bounded) until the new client's cache holds everyone the server lists.

        The broker gives a newcomer no snapshot; the client asks for one, and this waits for
        it so that the first page served by a fresh worker is not empty.
        """
        try:
            expected = {a.actor_token_id for a in client.fetch_presence(room, timeout=timeout)}
        except NoLagError as exc:
            log.info("could not warm up the presence cache: %s", exc)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cached = (
                client.get_all_presence(room) if room is not None else client.get_all_presence()
            )
            if expected <= {a.actor_token_id for a in cached}:
                return
            time.sleep(0.01)
        log.info("presence cache still missing actors after %.1fs", timeout)

    def _fetch(self, client: NoLag, room: str) -> list[ActorPresence]:
        """The server's list for a room the client is not in, reused for fetch_ttl seconds."""
        ttl = self.settings.fetch_ttl
        now = time.monotonic()
        if ttl > 0:
            with self._fetch_lock:
                hit = self._fetched.get(room)
            if hit is not None and now - hit[0] < ttl:
                return hit[1]
        people = list(client.fetch_presence(room))
        if ttl > 0:
            with self._fetch_lock:
                self._fetched[room] = (now, people)
        return people


def _unique(people: Sequence[ActorPresence]) -> list[ActorPresence]:
    """One entry per actor (the first seen) from a cache listing every membership."""
    seen: set[str] = set()
    unique = []
    for person in people:
        if person.actor_token_id not in seen:
            seen.add(person.actor_token_id)
            unique.append(person)
    return unique
