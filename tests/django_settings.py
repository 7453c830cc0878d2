"""Django settings for tests/test_contrib_django.py: the sample site's, minus the broker URL.

Loaded with settings.configure() by that module only, so the rest of the suite never
sees Django configured; each test points NOLAG at its own broker via the settings fixture.
"""

from __future__ import annotations

import sys
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "django_app"
if str(SAMPLE) not in sys.path:
    sys.path.insert(0, str(SAMPLE))

from presence_site.settings import *  # noqa: E402, F403

NOLAG = {"TOKEN": "dev-token-backend", "URL": "ws://127.0.0.1:9/ws", "ROOM": "general"}
