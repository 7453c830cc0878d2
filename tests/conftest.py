"""Shared pytest fixtures: local brokers on free loopback ports, raw clients, transcripts."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import helpers
import pytest
import transcripts
from helpers import free_port, nolag_threads, spawn_broker, wait_until
from rawclient import RawClient

from nolag.broker import EmbeddedBroker

TESTS_DIR = Path(__file__).resolve().parent
TOKENS_PATH = TESTS_DIR / "fixtures" / "tokens.json"
BROKER_MODES = ("local", "kraken")
"""The local broker's compat modes the ``both_brokers`` tests run against (issue 14)."""


def pytest_configure(config: pytest.Config) -> None:
    """Declare the markers that choose the broker modes a test runs against, and tell the
    interop modules (through helpers.RUN_INTEROP) whether ``--interop`` was given."""
    config.addinivalue_line(
        "markers",
        "both_brokers: run against the local broker in both compat modes (local, kraken), "
        "through the broker / make_broker fixtures",
    )
    config.addinivalue_line(
        "markers",
        "local_extension(reason): relies on a local-broker extension; skipped in kraken mode",
    )
    helpers.RUN_INTEROP = bool(config.getoption("--interop"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``both_brokers`` tests over the compat modes."""
    if "broker_compat" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_brokers"
    ):
        metafunc.parametrize("broker_compat", BROKER_MODES, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In kraken mode, skip ``local_extension`` tests."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or callspec.params.get("broker_compat") != "kraken":
            continue
        marker = item.get_closest_marker("local_extension")
        if marker is not None:
            reason = marker.args[0] if marker.args else "relies on a local-broker extension"
            item.add_marker(pytest.mark.skip(reason=f"kraken mode: {reason}"))


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--interop``: also run tests/interop/, which install the official SDK (about 44 MB)."""
    parser.addoption(
        "--interop",
        action="store_true",
        default=False,
        help="run the interop tests against the official asyncio NoLag SDK; the first run "
        "installs it into a virtualenv of its own (.interop-venv/ or $NOLAG_INTEROP_VENV)",
    )


def broker_threads() -> list[threading.Thread]:
    """Live threads started by EmbeddedBroker."""
    return [t for t in threading.enumerate() if t.name.startswith("nolag-broker-")]


@pytest.fixture(autouse=True)
def _no_broker_thread_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each broker test, no EmbeddedBroker thread may still run."""
    yield
    if not request.node.module.__name__.startswith("test_broker_"):
        return
    deadline = time.monotonic() + 5.0
    while broker_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not broker_threads(), f"broker threads left behind: {broker_threads()}"


@pytest.fixture(autouse=True)
def _no_client_thread_left() -> Iterator[None]:
    """After every test, no client thread (reader, heartbeat, dispatcher) may still run."""
    yield
    wait_until(lambda: not nolag_threads(), timeout=5)


@pytest.fixture
def tokens_path() -> Path:
    """The test token file (a copy of shared/tokens.example.json plus test tokens)."""
    return TOKENS_PATH


@pytest.fixture
def broker_compat(request: pytest.FixtureRequest) -> str:
    """The compat mode of `broker` / `make_broker`: "local", or a ``both_brokers`` param."""
    return str(getattr(request, "param", "local"))


@pytest.fixture
def make_broker(broker_compat: str) -> Iterator[Callable[..., EmbeddedBroker]]:
    """Factory for started brokers (test tokens by default); all are stopped afterwards."""
    brokers: list[EmbeddedBroker] = []

    def make(**kwargs: Any) -> EmbeddedBroker:
        kwargs.setdefault("compat", broker_compat)
        if not kwargs.get("allow_all"):
            kwargs.setdefault("tokens_path", TOKENS_PATH)
        broker = EmbeddedBroker(**kwargs)
        brokers.append(broker)
        return broker.start()

    yield make
    for broker in brokers:
        broker.stop()
    deadline = time.monotonic() + 5.0
    while broker_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not broker_threads(), f"broker threads left behind: {broker_threads()}"


@pytest.fixture
def broker(make_broker: Callable[..., EmbeddedBroker]) -> EmbeddedBroker:
    """A started broker with the test token file."""
    return make_broker()


@pytest.fixture
def connect(broker: EmbeddedBroker) -> Iterator[Callable[..., RawClient]]:
    """Factory for raw clients to ``broker``: ``connect()`` or ``connect("dev-token-bob")``."""
    clients: list[RawClient] = []

    def make(
        token: str | None = None, protocol_version: int | None = None, url: str | None = None
    ) -> RawClient:
        client = RawClient(url or broker.url)
        clients.append(client)
        if token is not None:
            reply = client.auth(token, protocol_version)
            assert reply.get("success") is True, reply
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def transcript() -> Callable[[str], list[dict[str, Any]]]:
    """Loader of shared/transcripts/<prefix>-*.jsonl records (skips if shared/ is absent)."""
    return transcripts.load


@pytest.fixture(scope="session")
def broker_process() -> Iterator[str]:
    """The WebSocket URL of a `nolag broker` process with the test tokens.

    CI starts one and exports NOLAG_TEST_BROKER_URL; otherwise a process is started here
    on a free loopback port and stopped after the session.
    """
    external = os.environ.get("NOLAG_TEST_BROKER_URL")
    if external:
        yield external
        return
    port = free_port()
    proc = spawn_broker(port, str(TOKENS_PATH))
    try:
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()
