"""Django integration: add ``"nolag.contrib.django"`` to INSTALLED_APPS and a NOLAG setting.

``NOLAG = {"TOKEN": ..., "URL": ..., "ROOM": ..., "PRESENCE": ..., "OPTIONS": ...,
"CONNECT_TIMEOUT": ..., "INCLUDE_SELF": ..., "FETCH_TTL": ...}`` (see `PresenceSettings`;
TOKEN and URL fall back to the NOLAG_TOKEN / NOLAG_URL environment variables).

The client is created on first use in each process, never at startup, so runserver's
autoreloader (which loads the project twice) and pre-forking servers end up with exactly
one client per serving process. A change of ``settings.NOLAG`` (override_settings, the
pytest-django ``settings`` fixture) disconnects it; the next use reconnects with the new
settings. Templates get ``{% load nolag %}`` tags and the `context_processors.presence`
processor; ``manage.py nolag_presence list|watch`` works from the shell.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from nolag.client import NoLag
from nolag.contrib.service import PresenceService, PresenceSettings
from nolag.models import ActorPresence

__all__ = ["count", "get_client", "get_service", "is_online", "online", "reset", "settings"]

_lock = threading.Lock()
_service: Optional[PresenceService] = None


def settings() -> PresenceSettings:
    """The validated NOLAG setting (ValueError names what is wrong)."""
    from django.conf import settings as django_settings  # type: ignore[import-untyped]

    raw: Any = getattr(django_settings, "NOLAG", None) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"settings.NOLAG must be a dict, not {type(raw).__name__}")
    return PresenceSettings.from_mapping(raw, source="settings.NOLAG")


def get_service() -> PresenceService:
    """The project's PresenceService, created from settings.NOLAG on first use."""
    global _service
    service = _service
    if service is not None:
        return service
    with _lock:
        if _service is None:
            _service = PresenceService(settings())
        return _service


def get_client() -> NoLag:
    """This process's connected client (connects on first use)."""
    return get_service().client


def online(room: Optional[str] = None) -> tuple[ActorPresence, ...]:
    """Who is online in `room` (default NOLAG["ROOM"]), one entry per actor."""
    return get_service().online(room)


def count(room: Optional[str] = None) -> int:
    """How many are online in `room` (default NOLAG["ROOM"])."""
    return get_service().count(room)


def is_online(actor_id: str, room: Optional[str] = None) -> bool:
    """True if `actor_id` is online in `room` (default NOLAG["ROOM"])."""
    return get_service().is_online(actor_id, room)


def reset() -> None:
    """Disconnect this process's client and re-read settings.NOLAG on next use."""
    global _service
    with _lock:
        service, _service = _service, None
    if service is not None:
        service.close()


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """Drop the client when settings.NOLAG changes (tests, override_settings)."""
    if setting == "NOLAG":
        reset()


def _connect_signals() -> None:
    """Listen for setting changes; called on import so it works without INSTALLED_APPS too."""
    from django.core.signals import setting_changed  # type: ignore[import-untyped]

    setting_changed.connect(_on_setting_changed, dispatch_uid="nolag.contrib.django.reset")


_connect_signals()
