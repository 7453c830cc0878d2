"""One WebSocket connection: open with a deadline, thread-safe sends, batched receives.

This is the only module that knows which WebSocket library carries the bytes:
websocket-client opens the connection (handshake, TLS, proxies) and sends, while
receiving reads large chunks from its socket and parses every frame in them at once
(nolag.wsframes), which is several times faster than reading frame by frame. The
process's read loop (nolag.readloop) calls `recv_batch()` when the socket is readable;
any thread may call `send()`; `abort()` from any thread ends the connection at once and
tells the read loop first (`on_abort`), before the descriptor is closed.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from typing import Callable, Optional

import websocket

from nolag.errors import ConnectionClosedError, ConnectionError
from nolag.wsframes import Close, FrameReader, Message, Ping, WebSocketViolation

__all__ = ["Transport"]

log = logging.getLogger("nolag")

#: bytes asked of the socket per read; a burst of presence frames arrives in few reads
READ_CHUNK = 256 * 1024
#: the largest message accepted from a server (the real broker closes frames over 1 MiB)
MAX_MESSAGE = 4 * 1024 * 1024


class Transport:
    """A connected WebSocket that moves whole binary messages."""

    def __init__(self, url: str, timeout: float) -> None:
        """Connect to `url` within `timeout` seconds or raise nolag.ConnectionError."""
        self.url = url
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self._reader = FrameReader(MAX_MESSAGE)
        self._backlog: list[bytes] = []
        self._close_error: Optional[ConnectionClosedError] = None
        self.last_received = time.monotonic()
        #: called once by abort(), before the socket closes (the read loop's hook)
        self.on_abort: Optional[Callable[[], None]] = None
        try:
            self._ws = websocket.create_connection(
                url,
                timeout=timeout,
                enable_multithread=True,  # pongs from the reader, sends from others
                skip_utf8_validation=True,
                suppress_origin=True,
            )
        except (OSError, websocket.WebSocketException) as exc:
            raise ConnectionError(f"cannot connect to {url}: {exc}") from exc
        sock = self._ws.sock
        assert sock is not None  # create_connection returned a connected WebSocket
        self._sock: socket.socket = sock
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

    @property
    def socket(self) -> socket.socket:
        """The underlying socket, for a selector (read it only through recv_batch)."""
        return self._sock

    def has_buffered(self) -> bool:
        """True if recv_batch() has data without the socket being readable (put-back
        messages, or decrypted TLS bytes held by the SSL layer)."""
        if self._backlog:
            return True
        pending = getattr(self._sock, "pending", None)
        if pending is None or self._closed.is_set():
            return False
        try:
            return bool(pending())
        except (OSError, ValueError):
            return False

    def close_error(self) -> ConnectionClosedError:
        """Why the connection ended: the server's close frame, else a generic closed error."""
        return self._close_error or ConnectionClosedError("the connection is closed")

    def unread(self, payloads: list[bytes]) -> None:
        """Put messages back, to be returned first by the next recv_batch()."""
        self._backlog = payloads + self._backlog

    def recv_batch(self) -> Optional[list[bytes]]:
        """Every data message that one socket read completes (maybe none), in order.

        Returns None if nothing arrived within the socket timeout. Answers pings. Raises
        ConnectionClosedError when the connection ends (close frame, EOF, reset, abort,
        or a framing violation by the server).
        """
        if self._backlog:
            backlog, self._backlog = self._backlog, []
            return backlog
        if self._close_error is not None:
            raise self._close_error
        try:
            data = self._sock.recv(READ_CHUNK)
        except socket.timeout:
            if self._closed.is_set():
                raise ConnectionClosedError("the connection is closed") from None
            return None
        except (OSError, ValueError) as exc:  # ValueError: read on a closed SSL socket
            self.abort()
            raise ConnectionClosedError(str(exc) or type(exc).__name__) from exc
        if not data:
            self.abort()
            raise ConnectionClosedError("the server closed the connection (EOF)")
        self.last_received = time.monotonic()
        try:
            events = self._reader.feed(data)
        except WebSocketViolation as exc:
            log.warning("nolag: the server broke the WebSocket framing: %s", exc)
            self._send_close(exc.code)
            self.abort()
            raise ConnectionClosedError(f"protocol violation by the server: {exc}") from exc
        if self._reader.only_binary:
            return events  # type: ignore[return-value]  # binary messages are bytes
        batch: list[bytes] = []
        for event in events:
            if type(event) is bytes:
                batch.append(event)
            elif type(event) is Message:
                batch.append(event.payload)
            elif type(event) is Ping:
                self._pong(event.payload)
            elif type(event) is Close:
                self._send_close(event.code or 1000)
                self.abort()
                message = f"closed by the server (code {event.code}) {event.reason}".strip()
                self._close_error = ConnectionClosedError(
                    message, code=event.code, reason=event.reason
                )
            # a pong only proves life, which last_received already recorded
        if not batch and self._close_error is not None:
            raise self._close_error
        return batch

    def input_pending(self) -> bool:
        """True if bytes wait unread in the socket: the peer is alive, our reader is behind."""
        if self._closed.is_set():
            return False
        pending = getattr(self._sock, "pending", None)  # TLS: decrypted bytes in the SSL buffer
        if pending is not None and pending():
            return True
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return bool(readable)

    @property
    def closed(self) -> bool:
        """True once the connection was closed or aborted."""
        return self._closed.is_set()

    def _pong(self, payload: bytes) -> None:
        with contextlib.suppress(OSError, websocket.WebSocketException), self._send_lock:
            self._ws.pong(payload)

    def _send_close(self, code: int) -> None:
        with contextlib.suppress(OSError, websocket.WebSocketException), self._send_lock:
            self._ws.send_close(code, b"")

    def discard(self) -> None:
        """Forget the connection without a byte on the wire (a forked child's copy of it)."""
        self.on_abort = None  # the parent's read loop is not ours to touch
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.close()  # closes this process's descriptor only: no FIN, no close frame

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
        """Drop the TCP connection now; unblocks a read in another thread. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        hook, self.on_abort = self.on_abort, None
        if hook is not None:
            hook()  # out of the read loop's selector while the descriptor is still ours
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError, websocket.WebSocketException):
            self._ws.shutdown()  # type: ignore[no-untyped-call]
