"""A real WebSocket server on loopback that authenticates clients, then sends whatever a test says.

It speaks just enough of RFC 6455 over plain sockets to be a server a NoLag client can
connect to (the HTTP upgrade, masked client frames, unmasked server frames) and nothing
more, so a test can put any bytes on the wire: valid frames holding hypothesis-generated
payloads, error frames, or raw garbage that breaks the framing itself.

Every client frame is recorded (`received`); an ``auth`` frame is answered with a
success for actor ``alice`` (or by `auth_reply`); heartbeats (empty binary frames) are
echoed unless ``echo_heartbeats`` is False. Threads are daemons named ``evilserver-...``;
``stop()`` closes every socket and joins them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import select
import socket
import struct
import threading
import time
from typing import Any, Callable, Optional

import msgpack

__all__ = ["AUTH_OK", "EvilServer", "evil_threads", "server_frame"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_numbers = itertools.count(1)

AUTH_OK = {
    "type": "auth",
    "success": True,
    "actorTokenId": "alice",
    "projectId": "demo-project",
    "actorType": "user",
    "protocolVersion": 2,
    "restoredSubscriptions": [],
}


def evil_threads() -> list[str]:
    """Names of live evilserver threads (a test leaves none behind)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("evilserver-")]


def server_frame(payload: bytes, opcode: int = 0x2, fin: bool = True, rsv: int = 0) -> bytes:
    """One unmasked server→client frame."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


class _Conn:
    """One accepted client: its socket, its reader thread and its parse buffer."""

    def __init__(self, number: int, sock: socket.socket) -> None:
        self.number = number
        self.sock = sock
        self.buffer = b""
        self.lock = threading.Lock()  # one writer at a time
        self.closed = threading.Event()
        self.authed = threading.Event()
        #: the client closed TCP after its close frame before our close reply went out
        self.hung_up_early = False
        #: set: the server stops reading this socket (its receive buffer fills, then ours)
        self.paused = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def send(self, data: bytes) -> None:
        with self.lock:
            self.sock.sendall(data)


class EvilServer:
    """The server: ``start()``, point a client at ``url``, drive it, ``stop()``."""

    def __init__(
        self,
        *,
        echo_heartbeats: bool = True,
        auth_reply: Optional[Callable[[int, dict[str, Any]], Optional[dict[str, Any]]]] = None,
        drip: Optional[float] = None,
        redirect_to: Optional[str] = None,
        close_reply_after: Optional[float] = 0.0,
    ) -> None:
        """`drip`: send the upgrade reply one byte every `drip` seconds; `redirect_to`:
        answer the upgrade with a 302 to that URL instead; `close_reply_after`: seconds
        between a client's close frame and our close reply (a data frame goes out
        meanwhile), None for no reply at all (the connection `hung_up_early` if the
        client closed TCP before our reply)."""
        self.number = next(_numbers)
        self.echo_heartbeats = echo_heartbeats
        self.drip = drip
        self.redirect_to = redirect_to
        self.close_reply_after = close_reply_after
        self.auth_reply = auth_reply or (lambda conn, frame: AUTH_OK)
        self.received: list[tuple[int, int, bytes]] = []  # (connection, opcode, payload)
        self.conns: list[_Conn] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"evilserver-{self.number}-accept", daemon=True
        )

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    # ------------------------------------------------------------ lifecycle

    def start(self) -> EvilServer:
        self._acceptor.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close everything and join every thread."""
        self._stopping.set()
        self._acceptor.join(timeout)
        with contextlib.suppress(OSError):
            self._listener.close()
        for conn in self.connections():
            self.drop(conn.number)
        for conn in self.connections():
            if conn.thread is not None:
                conn.thread.join(timeout)
        if evil_threads():
            raise RuntimeError(f"evilserver threads did not stop: {evil_threads()}")

    def __enter__(self) -> EvilServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ driving

    def connections(self) -> list[_Conn]:
        with self._lock:
            return list(self.conns)

    def wait_authed(self, count: int = 1, timeout: float = 5.0) -> _Conn:
        """Wait until `count` connections authenticated; return the latest."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            authed = [c for c in self.connections() if c.authed.is_set()]
            if len(authed) >= count:
                return authed[-1]
            time.sleep(0.01)
        raise AssertionError(f"{count} authenticated connection(s) not seen in {timeout}s")

    def latest(self) -> _Conn:
        conns = self.connections()
        assert conns, "no client connected"
        return conns[-1]

    def send(self, payload: bytes, opcode: int = 0x2, conn: Optional[int] = None) -> None:
        """Send one data frame (binary by default) to a connection (default: the latest)."""
        self.send_raw(server_frame(payload, opcode), conn)

    def send_map(self, frame: Any, conn: Optional[int] = None) -> None:
        """Send any value as one binary MessagePack frame."""
        self.send(msgpack.packb(frame, use_bin_type=True), conn=conn)

    def send_raw(self, data: bytes, conn: Optional[int] = None) -> None:
        """Put raw bytes on the wire."""
        target = self.latest() if conn is None else self.connections()[conn - 1]
        target.send(data)

    def drop(self, conn: int) -> None:
        """Close a connection abruptly (RST)."""
        target = self.connections()[conn - 1]
        if target.closed.is_set():
            return
        target.closed.set()
        with contextlib.suppress(OSError):
            target.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            target.sock.shutdown(socket.SHUT_RDWR)

    def frames_from(self, conn: Optional[int] = None) -> list[Any]:
        """Decoded data frames a connection sent (b"" for heartbeats)."""
        with self._lock:
            items = [(c, op, p) for c, op, p in self.received]
        out: list[Any] = []
        for c, op, p in items:
            if (conn is None or c == conn) and op == 0x2:
                out.append(msgpack.unpackb(p, raw=False) if p else b"")
        return out

    # ------------------------------------------------------------ server side

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            readable, _, _ = select.select([self._listener], [], [], 0.02)
            if not readable:
                continue
            try:
                sock, _ = self._listener.accept()
            except OSError:
                continue
            with self._lock:
                conn = _Conn(len(self.conns) + 1, sock)
                self.conns.append(conn)
            conn.thread = threading.Thread(
                target=self._serve,
                args=(conn,),
                name=f"evilserver-{self.number}-conn{conn.number}",
                daemon=True,
            )
            conn.thread.start()

    def _serve(self, conn: _Conn) -> None:
        sock = conn.sock
        try:
            sock.settimeout(5.0)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                request += chunk
            head, _, conn.buffer = request.partition(b"\r\n\r\n")
            key = b""
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
            if self.redirect_to is not None:
                location = self.redirect_to.encode()
                conn.send(b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\n\r\n")
                return
            reply = (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            if self.drip is not None:
                for i in range(len(reply)):
                    if self._stopping.wait(self.drip):
                        return
                    conn.send(reply[i : i + 1])
            else:
                conn.send(reply)
            while not conn.closed.is_set() and not self._stopping.is_set():
                if conn.paused.is_set():
                    time.sleep(0.02)
                    continue
                for opcode, payload in self._parse(conn):
                    self._on_frame(conn, opcode, payload)
                readable, _, _ = select.select([sock], [], [], 0.02)
                if readable:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    conn.buffer += chunk
        except OSError:
            return
        finally:
            conn.closed.set()
            with contextlib.suppress(OSError):
                sock.close()

    def _linger(self, conn: _Conn, seconds: float) -> None:
        """After the client's close frame: send one data frame, then watch the socket for
        `seconds` (bounded); the client hanging up meanwhile is noted, not an error."""
        deadline = time.monotonic() + seconds
        try:
            conn.send(server_frame(msgpack.packb({"type": "late"}, use_bin_type=True)))
            while time.monotonic() < deadline and not self._stopping.is_set():
                readable, _, _ = select.select([conn.sock], [], [], 0.02)
                if readable and not conn.sock.recv(65536):
                    conn.hung_up_early = True
                    return
        except OSError:
            conn.hung_up_early = True

    def _parse(self, conn: _Conn) -> list[tuple[int, bytes]]:
        out = []
        data = conn.buffer
        while len(data) >= 2:
            opcode, length, pos = data[0] & 0x0F, data[1] & 0x7F, 2
            if length == 126:
                if len(data) < 4:
                    break
                (length,) = struct.unpack("!H", data[2:4])
                pos = 4
            elif length == 127:
                if len(data) < 10:
                    break
                (length,) = struct.unpack("!Q", data[2:10])
                pos = 10
            if len(data) < pos + 4 + length:
                break
            mask = data[pos : pos + 4]
            body = data[pos + 4 : pos + 4 + length]
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(body))
            out.append((opcode, payload))
            data = data[pos + 4 + length :]
        conn.buffer = data
        return out

    def _on_frame(self, conn: _Conn, opcode: int, payload: bytes) -> None:
        with self._lock:
            self.received.append((conn.number, opcode, payload))
        if opcode == 0x8:  # close: answer (perhaps late, perhaps never) and end
            if self.close_reply_after:
                self._linger(conn, self.close_reply_after)
            if self.close_reply_after is None:
                self._linger(conn, 10.0)  # until the client gives up and hangs up
            else:
                try:
                    conn.send(server_frame(payload[:2], 0x8))
                except OSError:
                    conn.hung_up_early = True
            conn.closed.set()
            return
        if opcode == 0x9:  # ping
            conn.send(server_frame(payload, 0xA))
            return
        if opcode != 0x2:
            return
        if not payload:
            if self.echo_heartbeats and conn.authed.is_set():
                conn.send(server_frame(b""))
            return
        try:
            frame = msgpack.unpackb(payload, raw=False)
        except Exception:
            return
        if isinstance(frame, dict) and frame.get("type") == "auth":
            reply = self.auth_reply(conn.number, frame)
            if reply is not None:
                conn.send(server_frame(msgpack.packb(reply, use_bin_type=True)))
                if reply.get("success") is True:
                    conn.authed.set()
