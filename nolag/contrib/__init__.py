"""Integrations that make nolag feel native in web apps: Flask, Django, and the shared parts.

`ProcessLocalClient` keeps one connected client per process (lazy, fork-safe);
`PresenceService` answers "who is online" for a web app from that client. The framework
modules (`nolag.contrib.flask`, `nolag.contrib.django`) only read configuration and wire
these two into the framework's idioms.
"""

from __future__ import annotations

from nolag.contrib.service import PresenceService, PresenceSettings, ProcessLocalClient

__all__ = ["PresenceService", "PresenceSettings", "ProcessLocalClient"]
