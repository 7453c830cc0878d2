"""The local broker alone: presence fan-out deliveries per second, and idle connections held.

Fan-out: M members (raw websocket-client sockets, tokens without a rate limit) are present
in one room; one more member sends K presence updates as fast as it can; the clock runs
from the first send until every member has received all K (deliveries = M x K). The
members' frames are counted by one selector thread that parses only frame headers, so
the broker, not the receiving side, is what is measured.

Connections: C idle sockets open and authenticated, each then proven alive by a
heartbeat echo; the broker's RSS before and after.

    python benchmarks/broker_fanout.py --members 100 --updates 1000 --idle 2000
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable, Optional

import msgpack
import websocket
from common import broker, raise_fd_limit, token_file

ROOM = "bench"


def _open(url: str, token: str) -> websocket.WebSocket:
    """A websocket-client connection, authenticated (auth reply read)."""
    ws = websocket.create_connection(url, timeout=30, skip_utf8_validation=True)
    ws.send_binary(msgpack.packb({"type": "auth", "token": token, "protocolVersion": 2}))
    reply = msgpack.unpackb(ws.recv(), raw=False)
    if reply.get("success") is not True:
        raise RuntimeError(f"auth refused: {reply}")
    return ws


class _Counter:
    """Counts whole WebSocket frames arriving on many raw sockets, in one thread."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.counts = [0] * len(socks)
        self._bufs = [b""] * len(socks)
        self._sel = selectors.DefaultSelector()
        for i, s in enumerate(socks):
            s.setblocking(False)
            self._sel.register(s, selectors.EVENT_READ, i)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-counter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(0.1):
                i = key.data
                try:
                    data = key.fileobj.recv(1 << 20)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._sel.unregister(key.fileobj)
                    continue
                buf = self._bufs[i] + data
                pos, end, n = 0, len(buf), 0
                while end - pos >= 2:
                    length = buf[pos + 1] & 0x7F
                    head = 2
                    if length == 126:
                        if end - pos < 4:
                            break
                        length = struct.unpack_from("!H", buf, pos + 2)[0]
                        head = 4
                    elif length == 127:
                        if end - pos < 10:
                            break
                        length = struct.unpack_from("!Q", buf, pos + 2)[0]
                        head = 10
                    if pos + head + length > end:
                        break
                    pos += head + length
                    n += 1
                self._bufs[i] = buf[pos:]
                self.counts[i] += n

    def reset(self) -> None:
        """Zero the counts (frames in flight may still land: quiesce first)."""
        self.counts = [0] * len(self.counts)

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._thread.join(5)
        self._sel.close()


def fanout(members: int, updates: int, limit_s: float = 120.0) -> dict[str, Any]:
    """Deliveries per second for `updates` presence updates to a room of `members`."""
    tokens = [f"bench-member-{i:05d}" for i in range(members)] + ["bench-sender"]
    raise_fd_limit(2 * members + 1024)
    with token_file(tokens, ROOM) as path, broker(tokens=path) as proc:
        socks = [_open(proc.url, t) for t in tokens[:-1]]
        sender = _open(proc.url, tokens[-1])
        try:
            for ws in socks:
                ws.send_binary(msgpack.packb({"type": "presence", "roomId": ROOM, "data": {}}))
            counter = _Counter([ws.sock for ws in [*socks, sender]])  # sender's echo too
            sender.send_binary(
                msgpack.packb({"type": "presence", "roomId": ROOM, "data": {"seq": -1}})
            )
            # quiesce: every join has landed once the counts stop moving
            deadline = time.monotonic() + 30
            last = -1
            while time.monotonic() < deadline and sum(counter.counts) != last:
                last = sum(counter.counts)
                time.sleep(0.3)
            counter.reset()
            frames = [
                msgpack.packb({"type": "presence", "roomId": ROOM, "data": {"seq": i}})
                for i in range(updates)
            ]
            start = time.perf_counter()
            for f in frames:
                sender.send_binary(f)
            sent_s = time.perf_counter() - start
            deadline = time.monotonic() + limit_s
            while min(counter.counts[:members]) < updates and time.monotonic() < deadline:
                time.sleep(0.002)
            elapsed = time.perf_counter() - start
            delivered = sum(min(c, updates) for c in counter.counts[:members])
            counter.stop()
            broker_rss = proc.rss_kib()
        finally:
            for ws in [*socks, sender]:
                ws.close()
    return {
        "members": members,
        "updates": updates,
        "deliveries": delivered,
        "complete": delivered == members * updates,
        "seconds": elapsed,
        "send_s": sent_s,
        "deliveries_per_s": delivered / elapsed,
        "broker_rss_mib": broker_rss / 1024,
    }


def idle_connections(count: int) -> dict[str, Any]:
    """Open `count` authenticated idle sockets; how many answer a heartbeat; broker RSS."""
    raise_fd_limit(2 * count + 1024)
    with broker(tokens=None, allow_all=True) as proc:
        rss_before = proc.rss_kib()
        socks: list[websocket.WebSocket] = []
        start = time.perf_counter()
        try:
            for i in range(count):
                socks.append(_open(proc.url, f"bench-idle-{i:05d}"))
            open_s = time.perf_counter() - start
            for ws in socks:
                ws.send_binary(b"")
            alive = 0
            for ws in socks:
                ws.settimeout(10)
                try:
                    if ws.recv() == b"":
                        alive += 1
                except (OSError, websocket.WebSocketException):
                    pass
            rss_after = proc.rss_kib()
        finally:
            for ws in socks:
                ws.close()
    return {
        "connections": count,
        "alive": alive,
        "open_s": open_s,
        "broker_rss_idle_mib": rss_before / 1024,
        "broker_rss_mib": rss_after / 1024,
        "broker_kib_per_connection": (rss_after - rss_before) / count,
    }


def run(
    members: int = 100,
    updates: int = 1000,
    idle: int = 2000,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fan-out, then idle connections."""
    f = fanout(members, updates)
    log(
        f"  broker fan-out {members}x{updates}: {f['deliveries_per_s']:,.0f} deliveries/s"
        f"{'' if f['complete'] else ' (INCOMPLETE)'}"
    )
    c = idle_connections(idle)
    log(f"  broker idle: {c['alive']}/{idle} alive, {c['broker_kib_per_connection']:.1f} KiB each")
    return {"fanout": f, "idle": c}


def main(argv: Optional[list[str]] = None) -> int:
    """Run the broker benchmark alone and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=2000)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.members, args.updates, args.idle), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
