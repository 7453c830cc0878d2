"""Presence latency through the local broker: one client's update to another's callback.

A `nolag broker` runs as its own process (so its event loop does not share our GIL).
The sender sets presence at a fixed rate with a sequence number; the receiver's
`presence:update` callback records the time from set_presence() to the callback. The
baseline does the same with two bare websocket-client sockets and msgpack, measured in
the same run, in alternating blocks, so the ratio is meaningful on a noisy shared machine.

    python benchmarks/latency.py --rate 100 --count 1000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Optional

import msgpack
import websocket
from common import broker

from nolag import ActorPresence, NoLag

SENDER, RECEIVER = "dev-token-fast", "dev-token-alice"  # fast: no message rate limit


def _pace(rate: float, count: int) -> Iterator[int]:
    """Yield 0..count-1 at `rate` per second (absolute schedule, no drift)."""
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield i


def run_nolag(url: str, rate: float, count: int) -> list[float]:
    """Seconds from set_presence() to the other client's presence:update callback."""
    sent: dict[int, float] = {}
    got: list[float] = []
    done = threading.Event()
    receiver = NoLag(RECEIVER, url=url)
    sender = NoLag(SENDER, url=url, max_presence_rate=None)  # no coalescing: every update

    @receiver.on("presence:update")
    def on_update(actor: ActorPresence) -> None:
        seq = actor.presence.get("seq")
        if actor.actor_token_id == "fast" and isinstance(seq, int) and seq in sent:
            got.append(time.perf_counter() - sent.pop(seq))
            if len(got) >= count:
                done.set()

    receiver.connect(timeout=10)
    sender.connect(timeout=10)
    try:
        receiver.set_presence({"role": "receiver"}, room="general")
        sender.set_presence({"seq": -1}, room="general")
        deadline = time.monotonic() + 10
        while receiver.get_presence("fast") is None and time.monotonic() < deadline:
            time.sleep(0.01)
        for i in _pace(rate, count):
            sent[i] = time.perf_counter()
            sender.set_presence({"seq": i}, room="general")
        done.wait(30)
    finally:
        sender.disconnect()
        receiver.disconnect()
    return got


def _bare(url: str, token: str) -> websocket.WebSocket:
    ws = websocket.create_connection(url, timeout=10, enable_multithread=True)
    ws.send_binary(msgpack.packb({"type": "auth", "token": token, "protocolVersion": 2}))
    ws.recv()
    return ws


def run_bare(url: str, rate: float, count: int) -> list[float]:
    """The same trip with raw sockets: msgpack frames out, a recv()+unpackb loop in."""
    sent: dict[int, float] = {}
    got: list[float] = []
    receiver, sender = _bare(url, RECEIVER), _bare(url, SENDER)
    receiver.send_binary(msgpack.packb({"type": "presence", "roomId": "general", "data": {}}))
    sender.send_binary(
        msgpack.packb({"type": "presence", "roomId": "general", "data": {"seq": -1}})
    )
    stop = threading.Event()

    def read() -> None:
        receiver.settimeout(0.5)
        while not stop.is_set() and len(got) < count:
            try:
                payload = receiver.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception:
                return
            if not payload:
                continue
            frame: Any = msgpack.unpackb(payload, raw=False)
            if frame.get("type") != "presence" or frame.get("event") != "update":
                continue
            seq = (frame["data"].get("presence") or {}).get("seq")
            if isinstance(seq, int) and seq in sent:
                got.append(time.perf_counter() - sent.pop(seq))

    reader = threading.Thread(target=read, name="bench-bare-reader", daemon=True)
    reader.start()
    time.sleep(0.3)
    try:
        for i in _pace(rate, count):
            sent[i] = time.perf_counter()
            sender.send_binary(
                msgpack.packb({"type": "presence", "roomId": "general", "data": {"seq": i}})
            )
        deadline = time.monotonic() + 30
        while len(got) < count and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        reader.join(5)
        receiver.close()
        sender.close()
    return got


def summary(samples: list[float]) -> dict[str, float]:
    """Median, p99 and max in milliseconds."""
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "n": len(ordered),
        "p50_ms": statistics.median(ordered) * 1e3,
        "p99_ms": p99 * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


def run(rates: list[float], count: int, blocks: int = 4) -> list[dict[str, Any]]:
    """Bare and nolag at each rate, against one broker; p50/p99/max and the ratios.

    Each side sends `count` updates in `blocks` alternating blocks (bare, nolag, bare, ...),
    so both see the same spells of noise on a shared machine.
    """
    results = []
    with broker() as proc:
        url = proc.url
        for rate in rates:
            samples: dict[str, list[float]] = {"bare": [], "nolag": []}
            sizes = [count // blocks + (1 if i < count % blocks else 0) for i in range(blocks)]
            for size in sizes:
                if size:
                    samples["bare"] += run_bare(url, rate, size)
                    samples["nolag"] += run_nolag(url, rate, size)
            bare, ours = summary(samples["bare"]), summary(samples["nolag"])
            results.append(
                {
                    "rate": rate,
                    "count": count,
                    "blocks": blocks,
                    "bare": bare,
                    "nolag": ours,
                    "p50_ratio": ours["p50_ms"] / bare["p50_ms"],
                    "p99_ratio": ours["p99_ms"] / bare["p99_ms"],
                }
            )
    return results


def main(argv: Optional[list[str]] = None) -> int:
    """Run the latency benchmark alone and print a table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, action="append", help="updates/s (repeatable)")
    parser.add_argument("--count", type=int, default=1000, help="updates per rate and side")
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks per side")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    results = run(args.rate or [100.0, 1000.0], args.count, args.blocks)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; count={args.count}")
    print(f"{'rate/s':>7} {'who':<6} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for r in results:
        for who in ("bare", "nolag"):
            s = r[who]
            print(
                f"{r['rate']:>7.0f} {who:<6} {s['n']:>5} {s['p50_ms']:>8.3f} "
                f"{s['p99_ms']:>8.3f} {s['max_ms']:>8.3f}"
            )
        print(f"{'':>7} p99 nolag/bare = {r['p99_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
