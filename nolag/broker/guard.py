"""TCP-level protection: the upgrade deadline and the connection limits (total, per address).

aiohttp's server calls its manager's ``connection_made(handler, transport)`` and
``connection_lost(handler, exc)`` for every TCP connection; :class:`ConnectionGuard`
wraps both on the server object (:meth:`ConnectionGuard.install`), so it sees every
connection before aiohttp reads a byte of it.

- A connection over ``max_connections`` (total) or ``max_connections_per_address`` is
  answered at once with ``HTTP/1.1 503`` and a JSON body
  ``{"error": "connection_limit_reached", "hint": ...}``, then closed. It never reaches
  a handler, so it costs no more than the accept.
- A connection that has not completed an HTTP request (the WebSocket upgrade, or a REST
  call) within ``upgrade_timeout`` seconds is closed (logged at INFO). This covers
  sockets that never send a byte and slow senders of headers; aiohttp's own
  pre-request keep-alive timer is an hour long in some versions and absent in others.
  :meth:`ConnectionGuard.request_started` (called by a middleware) disarms the timer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable, Optional

logger = logging.getLogger("nolag.broker")

LIMIT_STATUS = 503


def limit_response(hint: str) -> bytes:
    """A complete HTTP 503 response (``Connection: close``) naming the limit in its body."""
    body = json.dumps({"error": "connection_limit_reached", "hint": hint}).encode()
    head = (
        f"HTTP/1.1 {LIMIT_STATUS} Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def peer_address(transport: Any) -> str:
    """The remote IP of a transport ("" when unknown, e.g. a Unix socket)."""
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, (tuple, list)) and peer:
        return str(peer[0])
    return ""


class ConnectionGuard:
    """Counts TCP connections per address and enforces the upgrade deadline."""

    def __init__(
        self,
        *,
        upgrade_timeout: float,
        max_connections: int,
        max_per_address: int,
    ) -> None:
        """``upgrade_timeout`` seconds (0 = none); limits of 0 mean unlimited."""
        self.upgrade_timeout = upgrade_timeout
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self._open: dict[Any, str] = {}
        """Accepted handler → its remote address."""
        self._per_address: dict[str, int] = {}
        self._timers: dict[Any, asyncio.TimerHandle] = {}
        self.refused = 0
        """Connections refused over a limit (for tests and logs)."""
        self.timed_out = 0
        """Connections closed by the upgrade deadline."""

    def __len__(self) -> int:
        """Open, accepted TCP connections."""
        return len(self._open)

    def install(self, server: Any) -> None:
        """Wrap ``server.connection_made`` / ``connection_lost`` (an aiohttp ``web.Server``)."""
        made: Callable[[Any, Any], None] = server.connection_made
        lost: Callable[[Any, Optional[BaseException]], None] = server.connection_lost

        def connection_made(handler: Any, transport: Any) -> None:
            made(handler, transport)
            self.connection_made(handler, transport)

        def connection_lost(handler: Any, exc: Optional[BaseException] = None) -> None:
            self.connection_lost(handler)
            lost(handler, exc)

        server.connection_made = connection_made
        server.connection_lost = connection_lost

    def _refusal(self, address: str) -> Optional[str]:
        """The hint naming the limit a new connection from ``address`` would break."""
        if self.max_connections and len(self._open) >= self.max_connections:
            return f"the broker has {self.max_connections} connections (max_connections)"
        if (
            self.max_per_address
            and address
            and self._per_address.get(address, 0) >= self.max_per_address
        ):
            return (
                f"this address has {self.max_per_address} connections (max_connections_per_address)"
            )
        return None

    def connection_made(self, handler: Any, transport: Any) -> None:
        """Accept and count the connection, or answer 503 and close it."""
        address = peer_address(transport)
        hint = self._refusal(address)
        if hint is not None:
            self.refused += 1
            logger.warning("refusing a connection from %s: %s", address or "?", hint)
            try:
                transport.write(limit_response(hint))
            finally:
                transport.close()
            return
        self._open[handler] = address
        self._per_address[address] = self._per_address.get(address, 0) + 1
        if self.upgrade_timeout > 0:
            loop = asyncio.get_running_loop()
            self._timers[handler] = loop.call_later(
                self.upgrade_timeout, self._deadline, handler, transport
            )

    def request_started(self, handler: Any) -> None:
        """A complete HTTP request arrived on the connection: disarm its deadline."""
        timer = self._timers.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def _deadline(self, handler: Any, transport: Any) -> None:
        """The connection sent no complete request in time: close it."""
        self._timers.pop(handler, None)
        if handler not in self._open:
            return
        self.timed_out += 1
        logger.info(
            "closing a connection from %s: no complete HTTP request within %g s (upgrade_timeout)",
            self._open[handler] or "?",
            self.upgrade_timeout,
        )
        transport.close()

    def connection_lost(self, handler: Any) -> None:
        """Forget the connection (a refused one was never counted)."""
        timer = self._timers.pop(handler, None)
        if timer is not None:
            timer.cancel()
        address = self._open.pop(handler, None)
        if address is None:
            return
        left = self._per_address.get(address, 0) - 1
        if left > 0:
            self._per_address[address] = left
        else:
            self._per_address.pop(address, None)
