"""Template tags, `{% load nolag %}`: nolag_online, nolag_count; filters nolag_name, nolag_since."""

from __future__ import annotations

import datetime
from typing import Any, Optional

from django import template  # type: ignore[import-untyped]

from nolag.contrib import django as nolag_django
from nolag.models import ActorPresence

register = template.Library()


def nolag_online(room: Optional[str] = None) -> tuple[ActorPresence, ...]:
    """Who is online in `room` (default NOLAG["ROOM"]); use with ``as people``."""
    return nolag_django.online(room)


def nolag_count(room: Optional[str] = None) -> int:
    """How many are online in `room` (default NOLAG["ROOM"])."""
    return nolag_django.count(room)


def nolag_name(actor: Any) -> str:
    """An actor's display name: presence ``username`` or ``name``, else its actor id."""
    data = getattr(actor, "presence", {}) or {}
    return str(data.get("username") or data.get("name") or getattr(actor, "actor_token_id", ""))


def nolag_since(actor: Any) -> Optional[datetime.datetime]:
    """When the actor joined, as an aware datetime (for ``|date``), or None if unknown."""
    joined_at = getattr(actor, "joined_at", None)
    if joined_at is None:
        return None
    return datetime.datetime.fromtimestamp(joined_at, tz=datetime.timezone.utc)


register.simple_tag(nolag_online)
register.simple_tag(nolag_count)
register.filter("nolag_name", nolag_name)
register.filter("nolag_since", nolag_since)
