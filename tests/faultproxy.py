"""A loopback TCP proxy that injects network faults between a client and a broker.

Put it between `NoLag` and the local broker (``NoLag(token, url=proxy.url())``) and make
the network misbehave on demand:

- ``cut()``: every live connection is reset (RST) both ways at once;
- ``stall()`` / ``resume()``: live connections stop forwarding in both directions but
  stay open, so each end sees a silent peer (no FIN, no data); new connections are
  forwarded normally unless ``stall(new_links=True)``;
- ``block()`` / ``unblock()``: new connections are accepted and reset at once (refused);
- ``delay(seconds)``: every chunk is forwarded that much later (latency, not throttling);
- ``reset_mid_frame()``: the next server→client chunk is forwarded in part, then the
  connection is reset, so the client sees a frame cut in the middle.

Threads are daemons named ``faultproxy-<n>-...``: one acceptor and two pumps per
connection, at most ``max_links`` connections at a time (more are refused). ``stop()``
closes everything and joins every thread. Client→server bytes are recorded per
connection (bounded) so that tests can read what the client sent (``client_messages``).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import select
import socket
import struct
import threading
import time
from typing import Optional

__all__ = ["FaultProxy", "Link", "client_messages", "proxy_threads"]

POLL = 0.02
"""Seconds a pump or the acceptor waits at most before re-reading the fault switches."""

_proxy_numbers = itertools.count(1)


def proxy_threads() -> list[str]:
    """Names of live faultproxy threads (a test leaves none behind)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("faultproxy-")]


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class Link:
    """One proxied connection: the accepted client socket and its upstream twin."""

    def __init__(
        self, proxy: FaultProxy, number: int, client: socket.socket, server: socket.socket
    ) -> None:
        self.number = number
        self._proxy = proxy
        self.client = client
        self.server = server
        self.c2s = bytearray()  # what the client sent, up to proxy.record_limit bytes
        self.s2c_count = 0  # bytes forwarded to the client
        self.stalled = threading.Event()
        self.ending = threading.Event()  # pumps stop at their next wake-up
        self.abrupt = False  # close with RST (else FIN)
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._alive = 2
        self.threads: list[threading.Thread] = []

    def start(self, prefix: str) -> None:
        """Start the two pump threads."""
        for name, src, dst in (
            ("c2s", self.client, self.server),
            ("s2c", self.server, self.client),
        ):
            thread = threading.Thread(
                target=self._pump,
                args=(name, src, dst),
                name=f"{prefix}-link{self.number}-{name}",
                daemon=True,
            )
            self.threads.append(thread)
        for thread in self.threads:
            thread.start()

    def end(self, abrupt: bool) -> None:
        """Ask both pumps to stop; the sockets are closed (RST if abrupt) when both did."""
        if abrupt:
            self.abrupt = True
        self.ending.set()

    def join(self, timeout: float) -> None:
        """Wait for both pumps (and so for the sockets to be closed)."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _pump(self, direction: str, src: socket.socket, dst: socket.socket) -> None:
        """Forward src→dst until EOF, an error or the end of the link, honouring faults."""
        proxy = self._proxy
        pending: collections.deque[tuple[float, bytes]] = collections.deque()
        src_eof = False
        try:
            while not self.ending.is_set():
                if self.stalled.is_set():
                    time.sleep(POLL)
                    continue
                now = time.monotonic()
                while pending and pending[0][0] <= now:
                    dst.sendall(pending.popleft()[1])
                if src_eof:
                    if not pending:
                        with contextlib.suppress(OSError):
                            dst.shutdown(socket.SHUT_WR)
                        return
                    time.sleep(min(POLL, max(0.0, pending[0][0] - now)))
                    continue
                wait = POLL if not pending else min(POLL, max(0.0, pending[0][0] - now))
                readable, _, _ = select.select([src], [], [], wait)
                if not readable:
                    continue
                data = src.recv(65536)
                if not data:
                    src_eof = True
                    continue
                if direction == "c2s":
                    room = proxy.record_limit - len(self.c2s)
                    if room > 0:
                        self.c2s += data[:room]
                elif proxy._take_reset():
                    # forward part of the chunk, then reset both ways
                    for _, earlier in pending:
                        dst.sendall(earlier)
                    pending.clear()
                    dst.sendall(data[: len(data) // 2])
                    self.end(abrupt=True)
                    proxy._reset_done.set()
                    return
                if direction == "s2c":
                    self.s2c_count += len(data)
                pending.append((time.monotonic() + proxy._delay, data))
        except (OSError, ValueError):
            self.end(abrupt=True)  # a reset on one side is passed on as a reset
        finally:
            self._exit()

    def _exit(self) -> None:
        """The last pump out closes both sockets."""
        with self._lock:
            self._alive -= 1
            last = self._alive == 0
        if not last:
            if self.abrupt:
                self.ending.set()  # a clean EOF leaves the other direction running
            return
        for sock in (self.client, self.server):
            if self.abrupt:
                _reset(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()
        self.closed.set()


class FaultProxy:
    """A threaded TCP proxy on 127.0.0.1 in front of ``upstream`` (host, port)."""

    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = "127.0.0.1",
        *,
        max_links: int = 32,
        record_limit: int = 1 << 20,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.max_links = max_links
        self.record_limit = record_limit
        self.number = next(_proxy_numbers)
        self.accepted = 0  # connections accepted and forwarded
        self.refused = 0  # connections reset at once (blocked, over max_links, no upstream)
        self._links: list[Link] = []
        self._lock = threading.Lock()
        self._blocked = threading.Event()
        self._stall_new = threading.Event()
        self._stopping = threading.Event()
        self._delay = 0.0
        self._reset_armed = False
        self._reset_done = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"faultproxy-{self.number}-accept", daemon=True
        )

    # ------------------------------------------------------------ lifecycle

    def start(self) -> FaultProxy:
        """Start accepting."""
        self._acceptor.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection, join every thread (idempotent)."""
        self._stopping.set()
        if self._acceptor.is_alive():
            self._acceptor.join(timeout)
        with contextlib.suppress(OSError):
            self._listener.close()
        for link in self.links:
            link.end(abrupt=False)
        for link in self.links:
            link.join(timeout)
        alive = [t.name for link in self.links for t in link.threads if t.is_alive()]
        if self._acceptor.is_alive():
            alive.append(self._acceptor.name)
        if alive:
            raise RuntimeError(f"faultproxy threads did not stop: {alive}")

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path: str = "/ws") -> str:
        """The WebSocket URL clients use instead of the broker's."""
        return f"ws://127.0.0.1:{self.port}{path}"

    # ------------------------------------------------------------ state

    @property
    def links(self) -> list[Link]:
        """Every connection accepted so far, oldest first (ended ones included)."""
        with self._lock:
            return list(self._links)

    def live_links(self) -> list[Link]:
        """Connections still forwarding."""
        return [link for link in self.links if not link.closed.is_set()]

    # ------------------------------------------------------------ faults

    def cut(self, timeout: float = 5.0) -> int:
        """Reset every live connection both ways (RST); returns how many were cut."""
        links = self.live_links()
        for link in links:
            link.end(abrupt=True)
        for link in links:
            link.join(timeout)
        return len(links)

    def stall(self, new_links: bool = False) -> int:
        """Stop forwarding on every live connection, keeping it open; returns how many.

        With `new_links`, connections accepted later are stalled too (a server that
        accepts TCP and then says nothing).
        """
        if new_links:
            self._stall_new.set()
        links = self.live_links()
        for link in links:
            link.stalled.set()
        return len(links)

    def resume(self) -> None:
        """Forward again on stalled connections (what they held is delivered)."""
        self._stall_new.clear()
        for link in self.links:
            link.stalled.clear()

    def block(self) -> None:
        """Refuse new connections (accept, then reset at once)."""
        self._blocked.set()

    def unblock(self) -> None:
        """Accept new connections again."""
        self._blocked.clear()

    def delay(self, seconds: float) -> None:
        """Forward every later chunk `seconds` after it arrived (0 for no delay)."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._delay = float(seconds)

    def reset_mid_frame(self) -> threading.Event:
        """Arm: the next server→client chunk is forwarded in part, then reset both ways.

        Returns an event that is set once the reset happened.
        """
        with self._lock:
            self._reset_done = threading.Event()
            self._reset_armed = True
            return self._reset_done

    def _take_reset(self) -> bool:
        with self._lock:
            armed, self._reset_armed = self._reset_armed, False
            return armed

    # ------------------------------------------------------------ acceptor

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            readable, _, _ = select.select([self._listener], [], [], POLL)
            if not readable:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            if self._blocked.is_set() or len(self.live_links()) >= self.max_links:
                self.refused += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=2.0)
            except OSError:
                self.refused += 1
                _reset(client)
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(5.0)  # bounds sendall to a peer that stopped reading
            with self._lock:
                link = Link(self, len(self._links) + 1, client, server)
                if self._stall_new.is_set():
                    link.stalled.set()
                self._links.append(link)
            self.accepted += 1
            link.start(f"faultproxy-{self.number}")


def client_messages(data: bytes) -> list[tuple[int, bytes]]:
    """Parse what a WebSocket client sent (HTTP upgrade, then masked frames).

    Returns (opcode, unmasked payload) per complete frame; a trailing partial frame is
    ignored. Fragmented messages are returned frame by frame.
    """
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return []
    pos = head_end + 4
    out: list[tuple[int, bytes]] = []
    while pos + 2 <= len(data):
        b0, b1 = data[pos], data[pos + 1]
        opcode, masked, length = b0 & 0x0F, b1 & 0x80, b1 & 0x7F
        pos += 2
        if length == 126:
            if pos + 2 > len(data):
                break
            (length,) = struct.unpack("!H", data[pos : pos + 2])
            pos += 2
        elif length == 127:
            if pos + 8 > len(data):
                break
            (length,) = struct.unpack("!Q", data[pos : pos + 8])
            pos += 8
        mask: Optional[bytes] = None
        if masked:
            if pos + 4 > len(data):
                break
            mask = data[pos : pos + 4]
            pos += 4
        if pos + length > len(data):
            break
        payload = data[pos : pos + length]
        pos += length
        if mask is not None:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        out.append((opcode, bytes(payload)))
    return out
