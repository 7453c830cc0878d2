"""Template context processor: ``nolag_online`` (who is online in NOLAG["ROOM"]), lazily."""

from __future__ import annotations

from typing import Any

from django.utils.functional import SimpleLazyObject  # type: ignore[import-untyped]


def presence(request: Any) -> dict[str, Any]:
    """Add ``nolag_online``; evaluated only if a template uses it, so other pages never connect."""
    from nolag.contrib.django import online

    return {"nolag_online": SimpleLazyObject(online)}
