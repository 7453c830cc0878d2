"""A loopback WebSocket "firehose": after auth it writes pre-framed presence frames at full speed.

It is a real WebSocket server on raw sockets, meant to run in its own process so that
its sending never shares the measured client's GIL. It answers the `auth` frame exactly
like the real broker (MessagePack, keys sorted), echoes empty heartbeat frames, answers
`getPresence` with an empty list and answers a client's own `presence` frame with the
join + update pair the real broker sends the sender. Everything else a client sends is
ignored. What it streams after auth is chosen by the token:

* ``mix`` (or ``mix:N``): N frames (default ``--n``) over ``--actors`` actors, in the real
  broker's shape (no roomId); each actor goes join (data A) → update (data B) → leave →
  join ... and actors are interleaved, so every frame is exactly one user-visible event
  in nolag and in the official SDK (see `mix_plan`).
* ``joins:K``: K joins of K distinct actors, which then stay (for cache benchmarks).
* anything else: nothing after auth.

    python benchmarks/firehose.py --n 60000      # prints its ws:// URL, serves until killed
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import msgpack

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHUNK = 256 * 1024  # bytes per sendall(); chunks end on frame boundaries
SELF_ID = "bench-self"
KINDS = ("join", "update", "leave")


def sort_keys(value: Any) -> Any:
    """Maps with keys sorted, recursively, as the real broker emits them."""
    if isinstance(value, dict):
        return {k: sort_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [sort_keys(v) for v in value]
    return value


def pack(frame: dict[str, Any]) -> bytes:
    """One server message as the real broker encodes it."""
    packed: bytes = msgpack.packb(sort_keys(frame), use_bin_type=True)
    return packed


def ws_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """An unmasked (server-to-client) WebSocket frame, FIN set."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def presence_event(kind: str, actor: str, data: Optional[dict[str, Any]]) -> dict[str, Any]:
    """A presence event in the real broker's shape: snake_case data, no roomId."""
    body: dict[str, Any] = {"actor_token_id": actor}
    if kind != "leave":
        body["presence"] = data
    return {"type": "presence", "event": kind, "data": body}


def mix_plan(n: int, actors: int) -> Iterator[tuple[str, int, int]]:
    """(kind, actor, step) for n frames: per actor join → update → leave → join ...

    Round r visits every actor a whose step s = r - (a % 3) is >= 0, so after two rounds
    each round holds a third of each kind, interleaved, and about two thirds of the
    actors are present at any time. An actor's data differs at every step, so no update
    ever repeats what is cached and no join is followed by an equal update.
    """
    emitted = 0
    r = 0
    while emitted < n:
        for a in range(actors):
            s = r - (a % 3)
            if s < 0:
                continue
            yield KINDS[s % 3], a, s
            emitted += 1
            if emitted >= n:
                return
        r += 1


def actor_name(a: int) -> str:
    """The actor id of actor number a."""
    return f"actor-{a:06d}"


def mix_payloads(n: int, actors: int) -> list[bytes]:
    """The msgpack payloads of the mix, one per frame."""
    out = []
    for kind, a, s in mix_plan(n, actors):
        data = None
        if kind != "leave":
            data = {
                "name": f"User {a}",
                "status": "online" if kind == "join" else "away",
                "step": s,
            }
        out.append(pack(presence_event(kind, actor_name(a), data)))
    return out


def joins_payloads(k: int) -> list[bytes]:
    """K joins of K distinct actors (they stay present)."""
    return [
        pack(presence_event("join", actor_name(a), {"name": f"User {a}", "status": "online"}))
        for a in range(k)
    ]


def expected_events(kinds: list[str]) -> dict[str, int]:
    """How many join/update/leave callbacks a correct client makes for the plan's kinds."""
    return {k: kinds.count(k) for k in KINDS}


def chunked(frames: list[bytes], size: int = CHUNK) -> list[bytes]:
    """Concatenate WebSocket frames into chunks of about `size` bytes, on frame boundaries."""
    chunks: list[bytes] = []
    buf: list[bytes] = []
    length = 0
    for f in frames:
        buf.append(f)
        length += len(f)
        if length >= size:
            chunks.append(b"".join(buf))
            buf, length = [], 0
    if buf:
        chunks.append(b"".join(buf))
    return chunks


class Firehose:
    """The server: one thread accepting, two per connection (client reader, stream writer)."""

    def __init__(self, n: int, actors: int, host: str = "127.0.0.1", port: int = 0) -> None:
        self.n = n
        self.actors = actors
        self._streams: dict[tuple[str, int], list[bytes]] = {}
        self._lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)
        self.stream("mix")  # pre-frame the default stream before announcing the URL

    @property
    def url(self) -> str:
        """The WebSocket URL clients connect to."""
        host, port = self.sock.getsockname()[:2]
        return f"ws://{host}:{port}/ws"

    def stream(self, token: str) -> list[bytes]:
        """The pre-framed chunks a token asks for (built once per distinct stream).

        ``mix`` and ``mix:N`` with N the server's own n are one stream, framed before the
        URL was announced, so that no measured run pays for framing it.
        """
        kind, _, arg = token.partition(":")
        key = (kind, int(arg) if arg else self.n) if kind in ("mix", "joins") else ("", 0)
        with self._lock:
            chunks = self._streams.get(key)
            if chunks is None:
                if kind == "mix":
                    payloads = mix_payloads(key[1], self.actors)
                elif kind == "joins":
                    payloads = joins_payloads(key[1])
                else:
                    payloads = []
                chunks = self._streams[key] = chunked([ws_frame(p) for p in payloads])
            return chunks

    def serve_forever(self) -> None:
        """Accept connections until the process ends."""
        while True:
            conn, _ = self.sock.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        """One connection: handshake, then read client frames; auth starts the stream."""
        send_lock = threading.Lock()

        def send(data: bytes) -> None:
            with send_lock:
                conn.sendall(data)

        try:
            buf = self._handshake(conn)
            reader = _FrameReader(conn, buf)
            authed = False
            for opcode, payload in reader:
                if opcode == 0x8:  # close: answer and stop
                    send(ws_frame(payload[:2], 0x8))
                    break
                if opcode == 0x9:  # ping
                    send(ws_frame(payload, 0xA))
                    continue
                if opcode not in (0x1, 0x2):
                    continue
                if not payload:
                    if authed:
                        send(ws_frame(b""))
                    continue
                try:
                    msg = msgpack.unpackb(payload, raw=False)
                except Exception:
                    continue
                if not isinstance(msg, dict):
                    continue
                kind = msg.get("type")
                if kind == "auth" and not authed:
                    authed = True
                    token = str(msg.get("token", ""))
                    version = min(int(msg.get("protocolVersion") or 1), 2)
                    send(ws_frame(pack(_auth_ok(version))))
                    chunks = self.stream(token)
                    threading.Thread(target=self._write, args=(send, chunks), daemon=True).start()
                elif kind == "getPresence" and authed:
                    reply: dict[str, Any] = {"type": "presenceList", "data": []}
                    if msg.get("roomId") is not None:
                        reply["roomId"] = msg["roomId"]
                    send(ws_frame(pack(reply)))
                elif kind == "presence" and authed and isinstance(msg.get("data"), dict):
                    for ev in ("join", "update"):
                        send(ws_frame(pack(presence_event(ev, SELF_ID, msg["data"]))))
        except OSError:
            pass
        finally:
            conn.close()

    @staticmethod
    def _write(send: Any, chunks: list[bytes]) -> None:
        try:
            for chunk in chunks:
                send(chunk)
        except OSError:
            pass

    @staticmethod
    def _handshake(conn: socket.socket) -> bytes:
        """Read the HTTP upgrade and answer 101; return bytes read past the request."""
        data = b""
        while b"\r\n\r\n" not in data:
            more = conn.recv(4096)
            if not more:
                raise OSError("closed during handshake")
            data += more
        head, _, rest = data.partition(b"\r\n\r\n")
        key = b""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        return rest


def _auth_ok(version: int) -> dict[str, Any]:
    return {
        "type": "auth",
        "success": True,
        "actorTokenId": SELF_ID,
        "projectId": "bench-project",
        "actorType": "user",
        "protocolVersion": version,
        "restoredSubscriptions": [],
    }


class _FrameReader:
    """Iterates (opcode, unmasked payload) of the client's frames; ends at EOF."""

    def __init__(self, conn: socket.socket, buf: bytes) -> None:
        self.conn = conn
        self.buf = bytearray(buf)

    def _need(self, n: int) -> bool:
        while len(self.buf) < n:
            more = self.conn.recv(65536)
            if not more:
                return False
            self.buf += more
        return True

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        while self._need(2):
            b0, b1 = self.buf[0], self.buf[1]
            length = b1 & 0x7F
            pos = 2
            if length == 126:
                if not self._need(4):
                    return
                length = struct.unpack_from("!H", self.buf, 2)[0]
                pos = 4
            elif length == 127:
                if not self._need(10):
                    return
                length = struct.unpack_from("!Q", self.buf, 2)[0]
                pos = 10
            masked = b1 & 0x80
            if masked:
                pos += 4
            if not self._need(pos + length):
                return
            payload = bytes(self.buf[pos : pos + length])
            if masked:
                mask = self.buf[pos - 4 : pos]
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            del self.buf[: pos + length]
            yield b0 & 0x0F, payload


@contextmanager
def firehose_process(n: int, actors: int) -> Iterator[str]:
    """Run the firehose as its own process; yields its URL, kills it on exit."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--n", str(n), "--actors", str(actors)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("ws://"):
            raise RuntimeError(f"firehose did not start (got {line!r})")
        yield line
    finally:
        proc.kill()
        proc.wait(10)


def main(argv: Optional[list[str]] = None) -> int:
    """Serve until killed; print the URL once ready."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60_000, help="frames in the `mix` stream")
    parser.add_argument("--actors", type=int, default=10_000, help="actors in the mix")
    parser.add_argument("--port", type=int, default=0, help="port (0 picks a free one)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    server = Firehose(args.n, args.actors, port=args.port)
    print(server.url, flush=True)
    print(f"pre-framed {args.n} frames in {time.perf_counter() - started:.2f}s", file=sys.stderr)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
