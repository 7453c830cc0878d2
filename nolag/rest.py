"""The blocking REST client: GET /v1/presence with timeouts, bounded retries and typed errors."""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

import requests

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

__all__ = ["NoRestEndpoint", "RestClient"]

log = logging.getLogger("nolag")

_RETRY_STATUS = (502, 503, 504)
_MAX_ATTEMPTS = 3


class NoRestEndpoint(Exception):
    """The server answered 404: it has no REST presence endpoint (the open-source broker)."""


class RestClient:
    """Fetches the authoritative presence list over HTTP, one requests.Session per client."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._session = requests.Session()
        self._session.headers.update(
            {
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "User-Agent": f"nolag-sync/{__version__}",
            }
        )

    def close(self) -> None:
        """Release pooled HTTP connections."""
        self._session.close()

    def fetch_presence(
        self, room: Optional[str], timeout: float
    ) -> tuple[protocol.PresenceEntry, ...]:
        """GET /v1/presence[?roomId=room] within `timeout` seconds; one entry per actor."""
        deadline = time.monotonic() + timeout
        params = {"roomId": room} if room is not None else None
        url = f"{self.base_url}/v1/presence"
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PresenceTimeoutError(f"fetch_presence timed out after {timeout:.1f}s")
            try:
                response = self._session.get(url, params=params, timeout=remaining)
            except requests.Timeout as exc:
                raise PresenceTimeoutError(
                    f"fetch_presence timed out after {timeout:.1f}s"
                ) from exc
            except requests.RequestException as exc:
                if attempt < _MAX_ATTEMPTS and _sleep_before_retry(attempt, deadline):
                    continue
                raise ConnectionError(f"cannot reach {url}: {exc}") from exc
            retry = response.status_code in _RETRY_STATUS and attempt < _MAX_ATTEMPTS
            if retry and _sleep_before_retry(attempt, deadline):
                continue
            return _parse(response, room)


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


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason or ""
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or response.reason or "")
    return response.reason or ""


def _parse(response: requests.Response, room: Optional[str]) -> tuple[protocol.PresenceEntry, ...]:
    status = response.status_code
    where = f"room {room!r}" if room is not None else "the project"
    if status == 404:
        raise NoRestEndpoint(response.url)
    if status == 401:
        raise AuthenticationError(_error_text(response) or "unauthorized")
    if status == 403:
        raise ForbiddenError("not_authorized", hint=f"the token may not see {where}", room=room)
    if status == 429:
        retry_after = _retry_after(response)
        raise RateLimitError(hint=f"retry after {retry_after}s", room=room, retry_after=retry_after)
    if status != 200:
        raise ServerError(f"http_{status}", hint=_error_text(response), room=room)
    try:
        body: Any = response.json()
        actors = body["actors"]
        if not isinstance(actors, list):
            raise TypeError("actors is not a list")
        return tuple(protocol.decode_entry(entry) for entry in actors)
    except (ValueError, KeyError, TypeError) as exc:
        raise ServerError("bad_response", hint=f"unexpected REST answer: {exc}", room=room) from exc
