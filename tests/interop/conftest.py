"""Fixtures for the interop tests: the official SDK's cached virtualenv and its clients.

They run only with ``pytest --interop`` (tests/conftest.py). The official SDK is then
installed once per machine into ``.interop-venv/`` (or ``$NOLAG_INTEROP_VENV``). When it
cannot be installed the tests skip with the reason, except under CI (``CI=true``), where
that is a failure: CI must run them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest
from official import OFFICIAL_VERSION, InstallError, OfficialClient, ensure_official_venv


@pytest.fixture(scope="session")
def official_python() -> Path:
    """The interpreter of the official SDK's virtualenv; skip (fail under CI) without it."""
    try:
        return ensure_official_venv(OFFICIAL_VERSION)
    except InstallError as exc:
        reason = f"official NoLag SDK (nolag=={OFFICIAL_VERSION}) cannot be installed: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: interop tests must run)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def official(official_python: Path) -> Iterator[Callable[..., OfficialClient]]:
    """Factory of official clients (driver processes); every one is ended afterwards."""
    clients: list[OfficialClient] = []

    def make(name: str = "official") -> OfficialClient:
        client = OfficialClient(official_python, name)
        clients.append(client)
        assert client.version == OFFICIAL_VERSION, client.version
        return client

    yield make
    for client in clients:
        client.close()
