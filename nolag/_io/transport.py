"""One WebSocket connection's bytes: opened with a whole-call deadline, then non-blocking.

This is the only module that knows which WebSocket library carries the bytes. The rest
of the SDK sees the `Transport` protocol; `WebSocketTransport` implements it with
websocket-client, which does the opening handshake (TLS, proxies, headers) and masks our
frames, while received bytes are parsed in batches by `nolag._io.wsframes` (several times
faster than reading frame by frame). After the handshake the socket is non-blocking and
only the process's loop thread (`nolag._io.loop`) reads and writes it.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from typing import Callable, Optional, Protocol

import websocket

from nolag._io.wsframes import Close, FrameReader, Message, Ping, WebSocketViolation
from nolag.errors import ConnectionClosedError, ConnectionError

__all__ = ["READ_CHUNK", "Transport", "WebSocketTransport", "open_websocket"]

log = logging.getLogger("nolag")

#: bytes asked of the socket per read; a burst of presence frames arrives in few reads
READ_CHUNK = 256 * 1024

_OP_BINARY = websocket.ABNF.OPCODE_BINARY
_OP_PONG = websocket.ABNF.OPCODE_PONG
_OP_CLOSE = websocket.ABNF.OPCODE_CLOSE
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Transport(Protocol):
    """What the loop needs of one connection (swapping the library touches one module).

    Only the loop thread calls `read`, `write` and `abort_now`; any thread may `queue`.
    """

    url: str

    def fileno(self) -> int:
        """The descriptor for the selector."""

    def read(self) -> list[bytes]:
        """Every data message one non-blocking read completes (maybe none), in order.

        Answers pings (queued). Raises ConnectionClosedError when the connection ends.
        """

    def has_buffered(self) -> bool:
        """True if `read` has bytes without the socket being readable (TLS buffers)."""

    def frame(self, payload: bytes) -> bytes:
        """One binary message as masked wire bytes (any thread)."""

    def close_frame(self, code: int) -> bytes:
        """A close frame with `code`, as wire bytes."""

    def input_pending(self) -> bool:
        """True if bytes wait unread (the peer is alive; only our reading is behind)."""

    def send_some(self, data: memoryview) -> int:
        """Write what the socket takes now (never blocks); bytes written."""

    def abort_now(self) -> None:
        """Drop the TCP connection at once (idempotent)."""

    def discard(self) -> None:
        """A forked child's copy: close our descriptor without a byte on the wire."""


def _redirect_refusal(url: str, ws: websocket.WebSocket, exc: BaseException) -> Optional[str]:
    """Why a redirect was not followed, or None if `exc` was no redirect."""
    response = getattr(ws, "handshake_response", None)
    status = getattr(response, "status", None) or getattr(exc, "status_code", None)
    if not isinstance(status, int) or not 300 <= status < 400:
        return None
    headers = getattr(response, "headers", None) or getattr(exc, "resp_headers", None) or {}
    target = headers.get("location", "?")
    return (
        f"the server at {url} answered {status}, a redirect to {target}; nolag does not "
        "follow redirects, so the token is only ever sent where you pointed it (put the "
        "final WebSocket URL in `url`)"
    )


def _handshake_error(url: str, exc: BaseException) -> str:
    """One clean line for a failed opening handshake: what failed, where, what to try."""
    status = getattr(exc, "status_code", None)
    if status is not None:
        hint = {
            404: "is the path right? the NoLag endpoint is usually /ws",
            401: "the server refused the upgrade; check the token and URL",
            403: "the server refused the upgrade; check the token and URL",
        }.get(status, "is this a NoLag WebSocket endpoint?")
        return f"cannot open a WebSocket to {url}: the server answered HTTP {status} ({hint})"
    if isinstance(exc, ssl.SSLError):
        return f"cannot open a WebSocket to {url}: TLS failed ({exc})"
    if isinstance(exc, socket.gaierror):
        return f"cannot open a WebSocket to {url}: the host name does not resolve ({exc})"
    if isinstance(exc, ConnectionRefusedError):
        return f"cannot open a WebSocket to {url}: connection refused (is the server running?)"
    text = str(exc) or type(exc).__name__
    return f"cannot open a WebSocket to {url}: {text}"


def open_websocket(
    url: str,
    timeout: float,
    schedule: Callable[[float, Callable[[], None]], Callable[[], None]],
    max_message: int,
) -> WebSocketTransport:
    """Open a WebSocket to `url` within `timeout` seconds (the whole call) or raise.

    websocket-client bounds each socket read by its timeout, so a server that answers one
    byte at a time could hold the handshake for ever: `schedule(delay, fn)` (the loop's
    timer, returning a cancel function) cuts the socket when the deadline passes.
    Raises nolag.ConnectionError with one line saying what failed and where.
    """
    deadline = time.monotonic() + timeout
    ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=False)
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        sock = ws.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    cancel = schedule(timeout, cut)
    try:
        ws.connect(  # type: ignore[no-untyped-call]
            url, timeout=timeout, suppress_origin=True, redirect_limit=0
        )
    except (OSError, websocket.WebSocketException, ValueError) as exc:
        if expired.is_set() or time.monotonic() >= deadline:
            raise ConnectionError(
                f"cannot open a WebSocket to {url}: no complete handshake within {timeout:.1f}s"
            ) from exc
        refusal = _redirect_refusal(url, ws, exc)
        raise ConnectionError(refusal or _handshake_error(url, exc)) from exc
    finally:
        cancel()
    status = getattr(getattr(ws, "handshake_response", None), "status", 101)
    if status != 101:  # older websocket-client versions return a redirect as if it were open
        refusal = _redirect_refusal(url, ws, ConnectionError(str(status)))
        with contextlib.suppress(OSError, websocket.WebSocketException):
            ws.shutdown()  # type: ignore[no-untyped-call]
        raise ConnectionError(
            refusal or f"cannot open a WebSocket to {url}: the server answered HTTP {status}"
        )
    sock = ws.sock
    if expired.is_set() or sock is None:
        with contextlib.suppress(OSError, websocket.WebSocketException):
            ws.shutdown()  # type: ignore[no-untyped-call]
        raise ConnectionError(
            f"cannot open a WebSocket to {url}: no complete handshake within {timeout:.1f}s"
        )
    return WebSocketTransport(url, ws, sock, max_message)


class WebSocketTransport:
    """A WebSocket opened by websocket-client, then driven without blocking."""

    def __init__(
        self, url: str, ws: websocket.WebSocket, sock: socket.socket, max_message: int
    ) -> None:
        self.url = url
        self._ws = ws  # keeps the library's object (and its socket) alive
        self._sock = sock
        self._fd = sock.fileno()
        self._reader = FrameReader(max_message)
        self._closed = False
        self._close_error: Optional[ConnectionClosedError] = None
        #: control frames to send (pongs, the close reply), taken by the loop
        self.control: list[bytes] = []
        sock.setblocking(False)

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._closed

    def frame(self, payload: bytes) -> bytes:
        framed: bytes = websocket.ABNF.create_frame(payload, _OP_BINARY).format()
        return framed

    def close_frame(self, code: int) -> bytes:
        framed: bytes = websocket.ABNF.create_frame(code.to_bytes(2, "big"), _OP_CLOSE).format()
        return framed

    def has_buffered(self) -> bool:
        if self._closed:
            return False
        pending = getattr(self._sock, "pending", None)  # TLS: decrypted bytes held
        if pending is None:
            return False
        try:
            return bool(pending())
        except (OSError, ValueError):
            return False

    def read(self) -> list[bytes]:
        if self._close_error is not None:
            raise self._close_error
        try:
            data = self._sock.recv(READ_CHUNK)
        except _WOULD_BLOCK:
            return []
        except (OSError, ValueError) as exc:  # ValueError: read on a closed SSL socket
            self.abort_now()
            raise ConnectionClosedError(str(exc) or type(exc).__name__) from exc
        if not data:
            self.abort_now()
            raise ConnectionClosedError("the server closed the connection (EOF)")
        try:
            events = self._reader.feed(data)
        except WebSocketViolation as exc:
            log.warning("the server broke the WebSocket framing: %s", exc)
            self.control.append(self.close_frame(exc.code))
            raise ConnectionClosedError(
                f"protocol violation by the server: {exc}", code=exc.code
            ) from exc
        if self._reader.only_binary:
            return events  # type: ignore[return-value]  # binary messages are bytes
        batch: list[bytes] = []
        for event in events:
            if type(event) is bytes:
                batch.append(event)
            elif type(event) is Message:
                batch.append(event.payload)
            elif type(event) is Ping:
                pong: bytes = websocket.ABNF.create_frame(event.payload, _OP_PONG).format()
                self.control.append(pong)
            elif type(event) is Close:
                self.control.append(self.close_frame(event.code or 1000))
                message = f"closed by the server (code {event.code}) {event.reason}".strip()
                self._close_error = ConnectionClosedError(
                    message, code=event.code, reason=event.reason
                )
            # a pong only proves life, which the read itself did
        if not batch and self._close_error is not None:
            raise self._close_error
        return batch

    def input_pending(self) -> bool:
        """True if bytes wait unread: the peer is alive, only our reading is behind."""
        if self._closed:
            return False
        if self.has_buffered():
            return True
        try:
            readable, _, _ = select.select([self._fd], [], [], 0)
        except (OSError, ValueError):
            return False
        return bool(readable)

    def send_some(self, data: memoryview) -> int:
        try:
            return self._sock.send(data)
        except _WOULD_BLOCK:
            return 0
        except (OSError, ValueError) as exc:
            self.abort_now()
            raise ConnectionClosedError(f"send failed: {exc}") from exc

    def abort_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()

    def discard(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            # this process's descriptor only: the parent still holds the connection, so
            # no FIN and no close frame leave this process
            self._sock.close()
