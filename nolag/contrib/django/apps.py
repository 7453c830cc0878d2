"""The Django app config: registers the NOLAG settings check; connects nothing at startup."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig  # type: ignore[import-untyped]
from django.core import checks  # type: ignore[import-untyped]


class NoLagConfig(AppConfig):  # type: ignore[misc]
    """``nolag.contrib.django``: template tags, the nolag_presence command, a settings check."""

    name = "nolag.contrib.django"
    label = "nolag"
    verbose_name = "NoLag presence"

    def ready(self) -> None:
        """Register the settings check; the client itself starts lazily, on first use."""
        checks.register(check_settings)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """`manage.py check`: settings.NOLAG must give a token (or NOLAG_TOKEN) and valid values."""
    from nolag.contrib.django import settings

    try:
        settings()
    except ValueError as exc:
        return [
            checks.Error(
                str(exc),
                hint='Set NOLAG = {"TOKEN": ..., "URL": ...} in settings, or NOLAG_TOKEN.',
                id="nolag.E001",
            )
        ]
    return []
