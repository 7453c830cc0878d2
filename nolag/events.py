"""Handler registries and the dispatcher thread that runs user callbacks in event order.

The reader thread only enqueues; callbacks run on the dispatcher thread, so a slow or
failing callback never stalls the socket. A callback may call any client method,
disconnect() included. A client has one registry, and each room or lobby context its own;
all of them share the client's one dispatcher, so every callback runs in event order.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal, NamedTuple, Optional, Protocol, TypeVar, Union, overload

from .models import ActorPresence
from .presence import PublicEvent

__all__ = [
    "CLIENT_EVENTS",
    "EVENTS",
    "PRESENCE_EVENTS",
    "ClientEmitter",
    "ConnectEventName",
    "ConnectHandler",
    "DisconnectHandler",
    "Dispatcher",
    "Emitter",
    "ErrorHandler",
    "EventName",
    "Handler",
    "Item",
    "Lifecycle",
    "LobbyEvent",
    "PresenceContext",
    "PresenceEventName",
    "PresenceHandler",
    "ReconnectingHandler",
    "Registry",
]

log = logging.getLogger("nolag")

Handler = Callable[..., Any]
H = TypeVar("H", bound=Handler)

#: every event name a client emits, with the arguments its handlers receive
EVENTS = {
    "presence:join": "(actor: ActorPresence)",
    "presence:update": "(actor: ActorPresence)",
    "presence:leave": "(actor: ActorPresence)",
    "connect": "()",
    "disconnect": "(reason: str)",
    "reconnecting": "(attempt: int, delay: float)",
    "reconnect": "()",
    "error": "(error: Exception)",
}
CLIENT_EVENTS = frozenset(EVENTS)
#: what room and lobby contexts emit
PRESENCE_EVENTS = frozenset({"presence:join", "presence:update", "presence:leave"})

_STOP = object()


class Lifecycle(NamedTuple):
    """A client event: connect, disconnect, reconnecting, reconnect or error, with its args."""

    name: str
    args: tuple[Any, ...] = ()


class LobbyEvent(NamedTuple):
    """A lobby cache's public event, for the handlers of the lobby context `slug`."""

    slug: str
    event: PublicEvent


#: what the dispatcher runs: cache events (client, then room handlers), lobby events and
#: lifecycle events
Item = Union[PublicEvent, LobbyEvent, Lifecycle]


class Registry:
    """Which callbacks listen to which event; thread-safe, copy-on-write."""

    def __init__(self, known_events: Collection[str] = CLIENT_EVENTS) -> None:
        self._handlers: dict[str, tuple[Handler, ...]] = {}
        self._lock = threading.Lock()
        self._known = frozenset(known_events)

    @overload
    def on(self, event: str, handler: None = None) -> Callable[[H], H]: ...

    @overload
    def on(self, event: str, handler: H) -> H: ...

    def on(self, event: str, handler: Optional[H] = None) -> Union[H, Callable[[H], H]]:
        """Register `handler` for `event`; without a handler, return a decorator."""
        self._check_event(event)
        if handler is None:

            def decorator(func: H) -> H:
                self._add(event, func)
                return func

            return decorator
        self._add(event, handler)
        return handler

    @overload
    def once(self, event: str, handler: None = None) -> Callable[[H], H]: ...

    @overload
    def once(self, event: str, handler: H) -> H: ...

    def once(self, event: str, handler: Optional[H] = None) -> Union[H, Callable[[H], H]]:
        """Register `handler` for the next `event` only; without a handler, a decorator.

        ``off(event, handler)`` removes it before it ran.
        """
        self._check_event(event)

        def register(func: H) -> H:
            def fire(*args: Any) -> Any:
                self._remove(event, fire)
                return func(*args)

            fire.__wrapped__ = func  # type: ignore[attr-defined]  # off() finds it by func
            self._add(event, fire)
            return func

        return register if handler is None else register(handler)

    def off(self, event: str, handler: Optional[Handler] = None) -> None:
        """Remove one handler of `event`, or all of them when handler is None."""
        self._check_event(event)
        if handler is None:
            with self._lock:
                self._handlers.pop(event, None)
            return
        self._remove(event, handler)

    def _remove(self, event: str, handler: Handler) -> None:
        """Remove the first registration of `handler` (or of a once() wrapper of it)."""
        with self._lock:
            current = self._handlers.get(event, ())
            for index, registered in enumerate(current):
                if registered is handler or getattr(registered, "__wrapped__", None) is handler:
                    self._handlers[event] = current[:index] + current[index + 1 :]
                    return

    def handlers(self, event: str) -> tuple[Handler, ...]:
        """The callbacks of `event` right now (an immutable tuple)."""
        return self._handlers.get(event, ())

    def copy(self) -> Registry:
        """An independent registry with the same callbacks (for a forked child)."""
        fresh = Registry(self._known)
        fresh._handlers = dict(self._handlers)
        return fresh

    def _add(self, event: str, handler: Handler) -> None:
        if not callable(handler):
            raise TypeError(f"handler for {event!r} must be callable, not {type(handler).__name__}")
        with self._lock:
            self._handlers[event] = (*self._handlers.get(event, ()), handler)

    def _check_event(self, event: str) -> None:
        if not isinstance(event, str):
            raise TypeError(f"event must be a str, not {type(event).__name__}")
        if event not in self._known:
            known = ", ".join(sorted(self._known))
            raise ValueError(f"unknown event {event!r}; known events: {known}")


class PresenceHandler(Protocol):
    """A ``presence:join``, ``presence:update`` or ``presence:leave`` handler: ``(actor)``."""

    def __call__(self, actor: ActorPresence, /) -> object: ...


class ConnectHandler(Protocol):
    """A ``connect`` or ``reconnect`` handler: no arguments."""

    def __call__(self) -> object: ...


class DisconnectHandler(Protocol):
    """A ``disconnect`` handler: ``(reason)``, a human-readable str."""

    def __call__(self, reason: str, /) -> object: ...


class ReconnectingHandler(Protocol):
    """A ``reconnecting`` handler: ``(attempt, delay)``, attempt from 1, delay in seconds."""

    def __call__(self, attempt: int, delay: float, /) -> object: ...


class ErrorHandler(Protocol):
    """An ``error`` handler: ``(error)``, usually a `nolag.NoLagError`."""

    def __call__(self, error: Exception, /) -> object: ...


#: the event names of each handler kind (a handler of the wrong shape is a mypy error)
PresenceEventName = Literal["presence:join", "presence:update", "presence:leave"]
ConnectEventName = Literal["connect", "reconnect"]
EventName = Literal[
    "presence:join",
    "presence:update",
    "presence:leave",
    "connect",
    "disconnect",
    "reconnecting",
    "reconnect",
    "error",
]

_P = TypeVar("_P", bound=PresenceHandler)
_C = TypeVar("_C", bound=ConnectHandler)
_D = TypeVar("_D", bound=DisconnectHandler)
_R = TypeVar("_R", bound=ReconnectingHandler)
_E = TypeVar("_E", bound=ErrorHandler)


class Emitter:
    """Callbacks by event name: ``obj.on(name, fn)`` or ``@obj.on(name)``, ``once``, ``off``.

    The base of the client (`ClientEmitter`) and its contexts (`PresenceContext`), which
    type each event name's handler (`EVENTS` lists them). An unknown name raises
    ValueError at run time.
    """

    _events: Registry

    def _on(self, event: str, handler: Optional[H]) -> Union[H, Callable[[H], H]]:
        return self._events.on(event, handler)

    def _once(self, event: str, handler: Optional[H]) -> Union[H, Callable[[H], H]]:
        return self._events.once(event, handler)

    def off(self, event: EventName, handler: Optional[Handler] = None) -> None:
        """Unregister one callback, or every callback of the event when handler is None."""
        self._events.off(event, handler)


class ClientEmitter(Emitter):
    """The client's events, each with its handler's type (see `EVENTS`)."""

    @overload
    def on(self, event: PresenceEventName, handler: _P) -> _P: ...
    @overload
    def on(self, event: PresenceEventName) -> Callable[[_P], _P]: ...
    @overload
    def on(self, event: ConnectEventName, handler: _C) -> _C: ...
    @overload
    def on(self, event: ConnectEventName) -> Callable[[_C], _C]: ...
    @overload
    def on(self, event: Literal["disconnect"], handler: _D) -> _D: ...
    @overload
    def on(self, event: Literal["disconnect"]) -> Callable[[_D], _D]: ...
    @overload
    def on(self, event: Literal["reconnecting"], handler: _R) -> _R: ...
    @overload
    def on(self, event: Literal["reconnecting"]) -> Callable[[_R], _R]: ...
    @overload
    def on(self, event: Literal["error"], handler: _E) -> _E: ...
    @overload
    def on(self, event: Literal["error"]) -> Callable[[_E], _E]: ...

    def on(self, event: str, handler: Optional[H] = None) -> Union[H, Callable[[H], H]]:
        """Register `handler` for `event` (without one, return a decorator); ValueError
        for an unknown event name."""
        return self._on(event, handler)

    @overload
    def once(self, event: PresenceEventName, handler: _P) -> _P: ...
    @overload
    def once(self, event: PresenceEventName) -> Callable[[_P], _P]: ...
    @overload
    def once(self, event: ConnectEventName, handler: _C) -> _C: ...
    @overload
    def once(self, event: ConnectEventName) -> Callable[[_C], _C]: ...
    @overload
    def once(self, event: Literal["disconnect"], handler: _D) -> _D: ...
    @overload
    def once(self, event: Literal["disconnect"]) -> Callable[[_D], _D]: ...
    @overload
    def once(self, event: Literal["reconnecting"], handler: _R) -> _R: ...
    @overload
    def once(self, event: Literal["reconnecting"]) -> Callable[[_R], _R]: ...
    @overload
    def once(self, event: Literal["error"], handler: _E) -> _E: ...
    @overload
    def once(self, event: Literal["error"]) -> Callable[[_E], _E]: ...

    def once(self, event: str, handler: Optional[H] = None) -> Union[H, Callable[[H], H]]:
        """Like on(), for the next event only (as the official SDKs' ``once``)."""
        return self._once(event, handler)


class PresenceContext(Emitter):
    """A room or lobby context's own presence callbacks (a base of `Room` and `Lobby`)."""

    def __init__(self) -> None:
        self._events = Registry(PRESENCE_EVENTS)

    @overload
    def on(self, event: PresenceEventName, handler: _P) -> _P: ...
    @overload
    def on(self, event: PresenceEventName) -> Callable[[_P], _P]: ...

    def on(self, event: str, handler: Optional[H] = None) -> Union[H, Callable[[H], H]]:
        """Register a presence handler ``(actor)`` (without one, return a decorator)."""
        return self._on(event, handler)

    @overload
    def once(self, event: PresenceEventName, handler: _P) -> _P: ...
    @overload
    def once(self, event: PresenceEventName) -> Callable[[_P], _P]: ...

    def once(self, event: str, handler: Optional[H] = None) -> Union[H, Callable[[H], H]]:
        """Like on(), for the next event only."""
        return self._once(event, handler)


class Dispatcher:
    """Runs the handlers of queued events on one named daemon thread, in queue order.

    It runs what `nolag.session` hands it: a `PublicEvent` of the client's cache goes to
    the client's handlers, then to those of the room's context (its registry in `rooms`);
    a `LobbyEvent` to the handlers of the lobby context (its registry in `lobbies`); a
    `Lifecycle` event to the client's. A handler that raises is logged (logger
    ``nolag``) and the exception is passed to the client's `error` handlers; the other
    handlers still run.
    """

    def __init__(
        self,
        thread_name: str,
        registry: Registry,
        rooms: Mapping[str, Registry],
        lobbies: Mapping[str, Registry],
    ) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._registry = registry
        self._rooms = rooms
        self._lobbies = lobbies
        self._thread_name = thread_name
        self._thread: Optional[threading.Thread] = None
        self.handler_errors = 0

    def start(self) -> None:
        """Start the dispatcher thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()

    def emit_many(self, items: list[Item]) -> None:
        """Queue several events at once (one wake-up of the dispatcher for a whole batch)."""
        if items:
            self._queue.put(items)

    def stop(self, timeout: float) -> None:
        """Run what is queued, then stop and join the thread (unless called from it)."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(_STOP)
        if thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("dispatcher did not stop within %.1fs (a callback blocks)", timeout)
        self._thread = None

    @property
    def on_dispatcher_thread(self) -> bool:
        """True when called from inside a callback."""
        thread = self._thread
        return thread is not None and thread is threading.current_thread()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            self._run_batch(item)

    def _run_batch(self, items: list[Item]) -> None:
        """A batch of session items, in order; for the cache's events the client's handlers
        are called inline (the hot path)."""
        client = self._registry
        handlers = client._handlers
        rooms = self._rooms
        for item in items:
            if type(item) is PublicEvent:
                name, actor, room, _ = item
                for handler in handlers.get(name, ()):
                    try:
                        handler(actor)
                    except Exception as exc:
                        self._failed(client, name, exc)
                if room is not None and rooms:
                    registry = rooms.get(room)
                    if registry is not None:
                        self._call(registry, name, (actor,))
            elif type(item) is LobbyEvent:
                lobby = self._lobbies.get(item.slug)
                if lobby is not None:
                    self._call(lobby, item.event.name, (item.event.actor,))
            elif type(item) is Lifecycle:
                self._call(client, item.name, item.args)

    def _call(self, registry: Registry, event: str, args: tuple[Any, ...]) -> None:
        for handler in registry._handlers.get(event, ()):
            try:
                handler(*args)
            except Exception as exc:
                self._failed(registry, event, exc)

    def _failed(self, registry: Registry, event: str, exc: Exception) -> None:
        """A handler raised: log it and tell the `error` handlers (not an error handler's own)."""
        self.handler_errors += 1
        log.exception("a %r handler raised", event, exc_info=exc)
        if event == "error" and registry is self._registry:
            return
        for on_error in self._registry.handlers("error"):
            try:
                on_error(exc)
            except Exception:
                log.exception("an 'error' handler raised")
