"""Shared test helpers: bounded waiting, event recording, free ports and stray-thread checks."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

from nolag import NoLag
from nolag.testing import wait_until as wait_until  # the plugin's, re-exported here

RUN_INTEROP = False

#: keys the local broker adds to a presence event's `data` that Kraken does not send
#: (docs/brokers.md); a test comparing with a transcript takes them out
EVENT_DATA_EXTENSIONS = ("connectionId", "actorType", "joinedAt")
"""Whether pytest got ``--interop`` (set by conftest.py before collection)."""

INTEROP_SKIP = "interop tests need --interop (it installs the official SDK in .interop-venv/)"
"""The one reason every interop module skips with, without ``--interop``."""

TOKENS = {
    "alice": "dev-token-alice",
    "bob": "dev-token-bob",
    "carol": "dev-token-carol",
    "dave": "dev-token-dave",
    "erin": "dev-token-erin",
    "mallory": "dev-token-mallory",
}


class Recorder:
    """Collects (event, actor id, presence data, room) tuples from a client's callbacks."""

    EVENTS = ("presence:join", "presence:update", "presence:leave")

    def __init__(self, client: NoLag) -> None:
        self.log: list[tuple[str, str, dict[str, Any], Any]] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()
        for name in self.EVENTS:
            client.on(name, self._make(name))

    def _make(self, name: str) -> Callable[[Any], None]:
        def handler(actor: Any) -> None:
            with self._lock:
                self.log.append((name, actor.actor_token_id, dict(actor.presence), actor.room))
                self.threads.add(threading.current_thread().name)

        return handler

    def of(self, actor_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The events about one actor: (event name, data)."""
        with self._lock:
            return [(e, d) for e, a, d, _ in self.log if a == actor_id]

    def names(self, actor_id: str) -> list[str]:
        return [e for e, _ in self.of(actor_id)]


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_health(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait until a broker process answers /health; fail with its stderr if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"broker process exited with {proc.returncode}: {err}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"broker at {url} not healthy within {timeout}s")


def spawn_broker(port: int, tokens: str, *extra: str) -> subprocess.Popen[bytes]:
    """A `nolag broker` process on `port` with a token file, returned once it is healthy."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nolag", "broker", "--port", str(port), "--tokens", tokens, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for_health(f"http://127.0.0.1:{port}/health", proc)
    return proc


def nolag_threads() -> list[str]:
    """Names of live client threads (nolag-loop/dispatcher/connect)."""
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith(("nolag-loop", "nolag-dispatcher", "nolag-connect"))
    ]


@contextmanager
def connected(url: str, token: str, **options: Any) -> Iterator[NoLag]:
    """A connected client that is always disconnected afterwards."""
    client = NoLag(token, url=url, **options)
    try:
        client.connect(timeout=5)
        yield client
    finally:
        client.disconnect()
