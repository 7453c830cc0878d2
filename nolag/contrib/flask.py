"""Flask integration: ``NoLagPresence(app)`` or ``presence.init_app(app)`` in an app factory.

Configuration comes from ``app.config`` (read on first use, so it may be set after
``init_app``): ``NOLAG_TOKEN`` (required; else the NOLAG_TOKEN environment variable),
``NOLAG_URL`` (else NOLAG_URL from the environment, else ws://127.0.0.1:8080/ws),
``NOLAG_ROOM``, ``NOLAG_PRESENCE``, ``NOLAG_OPTIONS``, ``NOLAG_CONNECT_TIMEOUT``,
``NOLAG_INCLUDE_SELF`` and ``NOLAG_FETCH_TTL`` (see `PresenceSettings`).

Each worker process gets its own client, connected on the first request that needs it
and rebuilt after a fork. The extension is ``app.extensions["nolag"]``
(``current_app.extensions["nolag"].online()``) and, in templates, ``nolag``
(``{% for actor in nolag.online() %}``).
"""

from __future__ import annotations

import threading
import weakref
from typing import Optional

from flask import Flask, current_app

from nolag.client import NoLag
from nolag.contrib.service import ClientFactory, PresenceService, PresenceSettings
from nolag.models import ActorPresence

__all__ = ["NoLagPresence"]

EXTENSION_KEY = "nolag"
CONFIG_PREFIX = "NOLAG_"


class _AppState:
    """Per-app state: the PresenceService, created from app.config on first use."""

    def __init__(self, client_factory: Optional[ClientFactory]) -> None:
        self.client_factory = client_factory
        self.lock = threading.Lock()
        self.service: Optional[PresenceService] = None

    def get(self, app: Flask) -> PresenceService:
        """The service, built from `app`'s config on first use (no reference to `app` kept)."""
        service = self.service
        if service is not None:
            return service
        with self.lock:
            if self.service is None:
                self.service = PresenceService(settings_from_config(app), self.client_factory)
            return self.service


def settings_from_config(app: Flask) -> PresenceSettings:
    """Read the NOLAG_* keys of app.config into validated settings."""
    mapping = {
        key[len(CONFIG_PREFIX) :]: value
        for key, value in app.config.items()
        if key.startswith(CONFIG_PREFIX)
    }
    return PresenceSettings.from_mapping(mapping, source="app.config['NOLAG_*']", strict=False)


class NoLagPresence:
    """The Flask extension: presence of one app, one client per worker process.

    >>> presence = NoLagPresence()      # doctest: +SKIP
    >>> presence.init_app(app)          # doctest: +SKIP
    >>> presence.online("general")      # doctest: +SKIP
    """

    def __init__(
        self, app: Optional[Flask] = None, *, client_factory: Optional[ClientFactory] = None
    ) -> None:
        """Bind to `app` now, or later with init_app(); `client_factory` builds custom clients."""
        self.app = app
        self._client_factory = client_factory
        self._states: weakref.WeakKeyDictionary[Flask, _AppState] = weakref.WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register on `app`: app.extensions["nolag"] is this extension; templates see `nolag`."""
        self._states[app] = _AppState(self._client_factory)
        app.extensions[EXTENSION_KEY] = self
        app.context_processor(lambda: {"nolag": self})

    def _app(self, app: Optional[Flask]) -> Flask:
        """`app`, else the bound app, else the real app behind the current_app proxy."""
        if app is not None:
            return app
        return self.app or current_app._get_current_object()  # type: ignore[attr-defined]

    def _state(self, app: Flask) -> _AppState:
        """The per-app state of `app`; RuntimeError if init_app(app) was not called."""
        state = self._states.get(app)
        if state is None:
            raise RuntimeError("NoLagPresence is not registered on this app; call init_app(app)")
        return state

    def service(self, app: Optional[Flask] = None) -> PresenceService:
        """The PresenceService of `app` (default: the bound app, else current_app)."""
        app = self._app(app)
        return self._state(app).get(app)

    @property
    def client(self) -> NoLag:
        """This worker's connected client for the current app (connects on first use)."""
        return self.service().client

    def online(self, room: Optional[str] = None) -> tuple[ActorPresence, ...]:
        """Who is online in `room` (default NOLAG_ROOM), one entry per actor."""
        return self.service().online(room)

    def count(self, room: Optional[str] = None) -> int:
        """How many are online in `room` (default NOLAG_ROOM)."""
        return self.service().count(room)

    def is_online(self, actor_id: str, room: Optional[str] = None) -> bool:
        """True if `actor_id` is online in `room` (default NOLAG_ROOM)."""
        return self.service().is_online(actor_id, room)

    def reset(self, app: Optional[Flask] = None) -> None:
        """Disconnect this worker's client and re-read the config on next use (e.g. in tests)."""
        state = self._state(self._app(app))
        with state.lock:
            service, state.service = state.service, None
        if service is not None:
            service.close()
