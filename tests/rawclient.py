"""A tiny raw WebSocket test client: sends and receives decoded MessagePack maps with timeouts."""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any, Callable, Optional

import msgpack
import websocket

Frame = dict[str, Any]


class Closed(Exception):
    """The server closed the connection; ``code`` is the close code (None if TCP ended)."""

    def __init__(self, code: Optional[int], reason: str = "") -> None:
        """Keep the close code and reason."""
        super().__init__(f"closed: code={code} reason={reason!r}")
        self.code = code
        self.reason = reason


class RawClient:
    """One WebSocket to the broker; every receive is bounded by a timeout."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        """Connect (no auth yet)."""
        self.url = url
        self.timeout = timeout
        self.ws = websocket.create_connection(url, timeout=timeout, enable_multithread=True)
        self.closed_code: Optional[int] = None

    # -- sending ----------------------------------------------------------------------

    def send(self, frame: Any) -> None:
        """Send any value as one binary MessagePack frame."""
        self.send_raw(msgpack.packb(frame, use_bin_type=True))

    def send_raw(self, data: bytes) -> None:
        """Send raw bytes as one binary frame (b"" is the heartbeat)."""
        self.ws.send(data, opcode=websocket.ABNF.OPCODE_BINARY)

    def send_text(self, text: str) -> None:
        """Send a text frame."""
        self.ws.send(text, opcode=websocket.ABNF.OPCODE_TEXT)

    def ping(self, payload: bytes = b"hi") -> None:
        """Send a WebSocket ping control frame."""
        self.ws.ping(payload)

    # -- receiving --------------------------------------------------------------------

    def recv_frame(self, timeout: Optional[float] = None) -> tuple[int, bytes]:
        """The next frame as (opcode, payload); raises Closed on close, TimeoutError on silence."""
        self.ws.settimeout(self.timeout if timeout is None else timeout)
        try:
            opcode, data = self.ws.recv_data(control_frame=True)
        except websocket.WebSocketTimeoutException:
            raise TimeoutError("no frame within timeout") from None
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            raise Closed(self.closed_code) from None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            self.closed_code = code
            raise Closed(code, data[2:].decode("utf-8", "replace"))
        if isinstance(data, str):
            data = data.encode()
        return opcode, data

    def recv_bytes(self, timeout: Optional[float] = None) -> bytes:
        """The next binary or text frame's payload (control frames skipped)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = max(0.01, deadline - time.monotonic())
            opcode, data = self.recv_frame(left)
            if opcode in (websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_TEXT):
                return data
            if time.monotonic() >= deadline:
                raise TimeoutError("no data frame within timeout")

    def recv(self, timeout: Optional[float] = None) -> Any:
        """The next data frame, decoded (b"" for a heartbeat)."""
        data = self.recv_bytes(timeout)
        if not data:
            return b""
        return msgpack.unpackb(data, raw=False, strict_map_key=False)

    def recv_until(
        self, predicate: Callable[[Any], bool], timeout: Optional[float] = None
    ) -> tuple[Any, list[Any]]:
        """Receive until a frame matches; returns (match, frames skipped before it)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        skipped: list[Any] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching frame; got {skipped!r}"[:2000])
            frame = self.recv(left)
            if predicate(frame):
                return frame, skipped
            skipped.append(frame)

    def recv_type(self, kind: str, timeout: Optional[float] = None) -> Frame:
        """Receive until a map of the given ``type`` arrives."""
        frame, _ = self.recv_until(lambda f: isinstance(f, dict) and f.get("type") == kind, timeout)
        result: Frame = frame
        return result

    def expect_silence(self, timeout: float = 0.3) -> None:
        """Assert that no data frame arrives within ``timeout`` seconds."""
        try:
            frame = self.recv(timeout)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame: {frame!r}"[:2000])

    def drain(self, timeout: float = 0.2) -> list[Any]:
        """Receive everything that arrives until ``timeout`` seconds of silence."""
        frames = []
        while True:
            try:
                frames.append(self.recv(timeout))
            except TimeoutError:
                return frames

    def wait_closed(self, timeout: Optional[float] = None) -> Optional[int]:
        """Read until the server closes; return its close code (None if TCP just ended)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("connection still open")
            try:
                self.recv_frame(left)
            except Closed as exc:
                return exc.code

    # -- helpers ----------------------------------------------------------------------

    def auth(self, token: str, protocol_version: Optional[int] = None, **extra: Any) -> Frame:
        """Authenticate and return the auth reply."""
        frame: Frame = {"type": "auth", "token": token}
        if protocol_version is not None:
            frame["protocolVersion"] = protocol_version
        frame.update(extra)
        self.send(frame)
        return self.recv_type("auth")

    def close(self) -> None:
        """Close cleanly (1000) if still open."""
        try:
            self.ws.close(timeout=1.0)
        except Exception:
            self.ws.shutdown()

    def abort(self) -> None:
        """Drop the TCP connection without a WebSocket close frame."""
        sock = self.ws.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.ws.shutdown()

    def __enter__(self) -> RawClient:
        """Use as a context manager."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close on exit."""
        self.close()
