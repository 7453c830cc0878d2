"""The blocking REST client: GET /v1/presence within a whole-call deadline, typed errors.

requests bounds each socket read by its timeout, so a server that drips its headers or
body a byte at a time could hold a call for ever. Each call therefore arms a timer on
the process's loop that shuts down the sockets the call opened when its deadline passes,
and reads the body in chunks up to `MAX_BODY` bytes. Every call opens its connection
afresh (``Connection: close``), so that every socket it uses is one it can cut.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from typing import Any, Callable, Optional

import requests
import requests.adapters
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from nolag import protocol
from nolag._version import __version__
from nolag.errors import (
    AuthenticationError,
    ConnectionError,
    ForbiddenError,
    PresenceTimeoutError,
    RateLimitError,
    ServerError,
)

__all__ = ["MAX_BODY", "NoRestEndpoint", "RestClient"]

log = logging.getLogger("nolag")

_RETRY_STATUS = (502, 503, 504)
_MAX_ATTEMPTS = 3
#: the largest REST answer read, in bytes (a presence list of thousands of actors fits)
MAX_BODY = 16 * 1024 * 1024

#: the sockets opened by the call running on this thread (see _Tracked*)
_calls = threading.local()


def _track(sock: Optional[socket.socket]) -> None:
    sockets: Optional[list[socket.socket]] = getattr(_calls, "sockets", None)
    if sockets is not None and sock is not None:
        sockets.append(sock)


class _TrackedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _track(self.sock)


class _TrackedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _track(self.sock)


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter, with pools whose connections report their sockets."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _TrackedHTTPPool,
            "https": _TrackedHTTPSPool,
        }


def _cut(sockets: list[socket.socket], expired: threading.Event) -> None:
    """The deadline passed: shut the call's sockets down, which ends any read at once."""
    expired.set()
    for sock in list(sockets):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


Schedule = Callable[[float, Callable[[], None]], Callable[[], None]]


class NoRestEndpoint(Exception):
    """The server answered 404: it has no REST presence endpoint (the open-source broker)."""


class RestClient:
    """Fetches the authoritative presence list over HTTP, one requests.Session per client."""

    def __init__(self, base_url: str, token: str, schedule: Schedule) -> None:
        """`schedule(delay, fn)` runs fn after delay seconds and returns a cancel function."""
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._schedule = schedule
        self._session = requests.Session()
        self._session.mount("http://", _Adapter())
        self._session.mount("https://", _Adapter())
        self._session.headers.update(
            {
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "Connection": "close",
                "User-Agent": f"nolag-sync/{__version__}",
            }
        )

    def close(self) -> None:
        """Release pooled HTTP connections."""
        self._session.close()

    def fetch_presence(
        self, room: Optional[str], timeout: float
    ) -> tuple[protocol.PresenceEntry, ...]:
        """GET /v1/presence[?roomId=room] within `timeout` seconds for the whole call
        (retries and a slow body included); one entry per actor.

        Raises PresenceTimeoutError past the deadline, nolag.ConnectionError when the
        server cannot be reached, NoRestEndpoint on 404, and the typed errors of `_parse`.
        """
        deadline = time.monotonic() + timeout
        sockets: list[socket.socket] = []
        expired = threading.Event()
        _calls.sockets = sockets
        cancel = self._schedule(timeout, lambda: _cut(sockets, expired))
        try:
            return self._fetch(room, timeout, deadline, expired)
        finally:
            cancel()
            _calls.sockets = None

    def _fetch(
        self, room: Optional[str], timeout: float, deadline: float, expired: threading.Event
    ) -> tuple[protocol.PresenceEntry, ...]:
        params = {"roomId": room} if room is not None else None
        url = f"{self.base_url}/v1/presence"
        late = f"fetch_presence got no complete answer from {url} within {timeout:.1f}s"
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PresenceTimeoutError(late)
            try:
                with self._session.get(
                    url, params=params, timeout=remaining, stream=True
                ) as response:
                    body = _read_body(response, url)
            except requests.Timeout as exc:
                raise PresenceTimeoutError(late) from exc
            except (requests.RequestException, OSError) as exc:
                if expired.is_set() or time.monotonic() >= deadline:
                    raise PresenceTimeoutError(late) from exc
                if attempt < _MAX_ATTEMPTS and _sleep_before_retry(attempt, deadline):
                    continue
                raise ConnectionError(f"cannot reach {url}: {_reason(exc)}") from exc
            if expired.is_set():  # the cut ended the body early: it is not an answer
                raise PresenceTimeoutError(late)
            retry = response.status_code in _RETRY_STATUS and attempt < _MAX_ATTEMPTS
            if retry and _sleep_before_retry(attempt, deadline):
                continue
            return _parse(response, body, room)


def _read_body(response: requests.Response, url: str) -> bytes:
    """The body, at most MAX_BODY bytes (a larger one is an error, not a memory hog)."""
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise ServerError("bad_response", hint=f"the answer from {url} is over {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY:
            raise ServerError(
                "bad_response", hint=f"the answer from {url} is over {MAX_BODY} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _reason(exc: BaseException) -> str:
    """A short reason for a failed request, without urllib3's retry wrapping."""
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS failed"
    inner: Optional[BaseException] = exc
    while inner is not None:
        if isinstance(inner, ConnectionRefusedError):
            return "connection refused (is the server running?)"
        if isinstance(inner, socket.gaierror):
            return "the host name does not resolve"
        reason = getattr(inner, "reason", None)
        inner = (
            reason if isinstance(reason, BaseException) else inner.__cause__ or inner.__context__
        )
    if isinstance(exc, requests.ConnectionError):
        return "the connection failed"
    return type(exc).__name__


def _sleep_before_retry(attempt: int, deadline: float) -> bool:
    """Back off briefly before another attempt; False if the deadline leaves no room."""
    delay = 0.1 * (2 ** (attempt - 1))
    if time.monotonic() + delay >= deadline:
        return False
    time.sleep(delay)
    return True


def _retry_after(response: requests.Response) -> Optional[float]:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _json(body: bytes) -> Any:
    return json.loads(body.decode("utf-8"))


def _error_text(response: requests.Response, body: bytes) -> str:
    try:
        parsed = _json(body)
    except ValueError:
        return response.reason or ""
    if isinstance(parsed, dict):
        return str(parsed.get("error") or parsed.get("message") or response.reason or "")
    return response.reason or ""


def _parse(
    response: requests.Response, body: bytes, room: Optional[str]
) -> tuple[protocol.PresenceEntry, ...]:
    status = response.status_code
    where = f"room {room!r}" if room is not None else "the project"
    if status == 404:
        raise NoRestEndpoint(response.url)
    if status == 401:
        raise AuthenticationError(_error_text(response, body) or "unauthorized")
    if status == 403:
        raise ForbiddenError("not_authorized", hint=f"the token may not see {where}", room=room)
    if status == 429:
        retry_after = _retry_after(response)
        raise RateLimitError(hint=f"retry after {retry_after}s", room=room, retry_after=retry_after)
    if status != 200:
        raise ServerError(f"http_{status}", hint=_error_text(response, body), room=room)
    try:
        parsed: Any = _json(body)
        actors = parsed["actors"]
        if not isinstance(actors, list):
            raise TypeError("actors is not a list")
        return tuple(protocol.decode_entry(entry) for entry in actors)
    except (ValueError, KeyError, TypeError) as exc:
        raise ServerError("bad_response", hint=f"unexpected REST answer: {exc}", room=room) from exc
