"""Settings of the sample site: no database, the nolag app, and the NOLAG setting."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "sample-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = ["nolag.contrib.django"]
ROOT_URLCONF = "presence_site.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "nolag.contrib.django.context_processors.presence",
            ]
        },
    }
]

NOLAG = {
    "TOKEN": os.environ.get("NOLAG_TOKEN", "dev-token-backend"),
    "URL": os.environ.get("NOLAG_URL", "ws://127.0.0.1:8080/ws"),
    "ROOM": os.environ.get("NOLAG_ROOM", "general"),
}
