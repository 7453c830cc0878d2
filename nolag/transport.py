"""One WebSocket connection: open with a deadline, thread-safe sends, blocking receives.

This is the only module that knows which WebSocket library carries the bytes
(websocket-client). The client's reader thread calls `recv()`; any thread may call
`send()`; `abort()` from any thread unblocks a pending `recv()` at once.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Optional

import websocket

from nolag.errors import ConnectionClosedError, ConnectionError

__all__ = ["Transport"]

log = logging.getLogger("nolag")


class Transport:
    """A connected WebSocket that moves whole binary messages."""

    def __init__(self, url: str, timeout: float) -> None:
        """Connect to `url` within `timeout` seconds or raise nolag.ConnectionError."""
        self.url = url
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self.last_received = time.monotonic()
        try:
            self._ws = websocket.create_connection(
                url,
                timeout=timeout,
                enable_multithread=True,  # the reader answers pings while others send
                skip_utf8_validation=True,
                suppress_origin=True,
            )
        except (OSError, websocket.WebSocketException) as exc:
            raise ConnectionError(f"cannot connect to {url}: {exc}") from exc
        self._ws.settimeout(timeout)

    def set_timeout(self, timeout: Optional[float]) -> None:
        """Bound each blocking socket read and write (a write past it drops the connection)."""
        self._ws.settimeout(timeout)

    def send(self, payload: bytes) -> None:
        """Send one binary message; thread-safe. Raises ConnectionClosedError if it is gone."""
        if self._closed.is_set():
            raise ConnectionClosedError("the connection is closed")
        try:
            with self._send_lock:
                self._ws.send(payload, opcode=websocket.ABNF.OPCODE_BINARY)
        except (OSError, websocket.WebSocketException) as exc:
            self.abort()
            raise ConnectionClosedError(f"send failed: {exc}") from exc

    def recv(self) -> Optional[bytes]:
        """The next data message, or None if none came within the socket timeout.

        Raises ConnectionClosedError when the connection ends (close frame, reset, abort).
        """
        while True:
            try:
                opcode, frame = self._ws.recv_data_frame(control_frame=True)
            except websocket.WebSocketTimeoutException:
                if self._closed.is_set():
                    raise ConnectionClosedError("the connection is closed") from None
                return None
            except (OSError, websocket.WebSocketException, ValueError, AttributeError) as exc:
                # AttributeError: websocket-client after its socket was shut down under it
                self.abort()
                raise ConnectionClosedError(str(exc) or type(exc).__name__) from exc
            self.last_received = time.monotonic()
            if opcode == websocket.ABNF.OPCODE_BINARY or opcode == websocket.ABNF.OPCODE_TEXT:
                data = frame.data
                return data if isinstance(data, bytes) else bytes(data)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code, reason = _parse_close(frame.data)
                self.abort()
                message = f"closed by the server (code {code}) {reason}".strip()
                raise ConnectionClosedError(message, code=code, reason=reason)
            # ping / pong: websocket-client already answered the ping; just liveness

    @property
    def closed(self) -> bool:
        """True once the connection was closed or aborted."""
        return self._closed.is_set()

    def discard(self) -> None:
        """Forget the connection without a byte on the wire (a forked child's copy of it)."""
        self._closed.set()
        sock = self._ws.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()  # closes this process's descriptor only: no FIN, no close frame

    def close(self, timeout: float = 2.0) -> None:
        """Close cleanly (close frame 1000), bounded by `timeout`; safe to call twice."""
        if self._closed.is_set():
            return
        try:
            with self._send_lock:
                self._ws.settimeout(timeout)
                self._ws.send_close(websocket.STATUS_NORMAL, b"")
        except (OSError, websocket.WebSocketException):
            pass
        self.abort()

    def abort(self) -> None:
        """Drop the TCP connection now; unblocks a recv() in another thread. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        sock = self._ws.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError, websocket.WebSocketException):
            self._ws.shutdown()  # type: ignore[no-untyped-call]


def _parse_close(data: bytes) -> tuple[Optional[int], str]:
    if len(data) < 2:
        return None, ""
    return int.from_bytes(data[:2], "big"), data[2:].decode("utf-8", "replace")
