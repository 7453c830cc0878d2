"""The presence cache at 1k, 10k and 100k actors: read costs and memory per cached actor.

Reads go through the public facade: a NoLag client is filled by the firehose (token
``joins:K``: K distinct actors join and stay), then get_all_presence() is timed while
nothing changes (it should return the same cached tuple: O(1)), get_presence() for
random actors, and the first get_all_presence() after one change (the client's own
presence, which the firehose echoes as the real broker does: an O(K) rebuild).

Memory per actor is measured on a bare `nolag.presence.PresenceStore` under tracemalloc:
every frame is decoded (`nolag.protocol.decode_frame`) and applied (`apply_event`) inside
the traced region, so what stays is exactly what the cache keeps.

    python benchmarks/cache.py --sizes 1000 10000 100000
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import random
import statistics
import sys
import time
import tracemalloc
from typing import Any, Callable, Optional

import common  # noqa: F401  (puts this tree's nolag first on sys.path)
from firehose import firehose_process, joins_payloads

SIZES = (1_000, 10_000, 100_000)


def _ns_per_call(fn: Callable[[], Any], calls: int, batches: int = 7) -> float:
    """The best over `batches` of the mean ns per call of `fn` (best: least disturbed by noise)."""
    results = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        results.append((time.perf_counter_ns() - start) / calls)
    return float(min(results))


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.005)


def measure_client(url: str, k: int, calls: int) -> dict[str, Any]:
    """Time the public reads of a NoLag client whose cache the firehose filled with K actors."""
    from nolag import NoLag

    client = NoLag(f"joins:{k}", url=url, sync_on_join=False, heartbeat_interval=30)
    start = time.perf_counter()
    client.connect(timeout=10)
    try:
        _wait(lambda: client.presence_count() >= k, 30 + k / 1000, f"{k} actors cached")
        fill_s = time.perf_counter() - start
        first = time.perf_counter_ns()
        snap = client.get_all_presence()
        first_ns = time.perf_counter_ns() - first
        assert len(snap) == k, len(snap)
        same = client.get_all_presence() is snap
        all_ns = _ns_per_call(client.get_all_presence, calls)
        ids = [f"actor-{random.randrange(k):06d}" for _ in range(1024)]
        it = itertools.cycle(ids)
        get_ns = _ns_per_call(lambda: client.get_presence(next(it)), calls // 5)
        assert client.get_presence(ids[0]) is not None
        after_change = []
        for i in range(5):
            client.set_presence({"probe": i})
            _wait(
                lambda i=i: (
                    (me := client.get_presence("bench-self")) is not None
                    and me.presence.get("probe") == i
                ),
                10,
                "own presence echoed",
            )
            t = time.perf_counter_ns()
            client.get_all_presence()
            after_change.append(time.perf_counter_ns() - t)
            time.sleep(0.06)  # the default presence rate (20/s) sends each probe at once
    finally:
        client.disconnect()
    return {
        "actors": k,
        "fill_s": fill_s,
        "first_get_all_ns": first_ns,
        "get_all_presence_ns": all_ns,
        "same_object_when_unchanged": same,
        "get_presence_ns": get_ns,
        "get_all_after_change_ns": float(statistics.median(after_change)),
    }


def measure_memory(k: int) -> dict[str, Any]:
    """Bytes the store keeps per actor after K joins (tracemalloc), snapshot tuple apart."""
    from nolag.presence import PresenceStore
    from nolag.protocol import decode_frame

    payloads = joins_payloads(k)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        store = PresenceStore()
        now = time.monotonic()
        for p in payloads:
            store.apply_event(decode_frame(p), None, now)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - base
        store.snapshot()
        with_snapshot = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert store.count() == k
    return {
        "actors": k,
        "bytes_per_actor": kept / k,
        "bytes_per_actor_with_snapshot": with_snapshot / k,
        "payload_bytes_per_actor": sum(len(p) for p in payloads) / k,
    }


def run(
    sizes: tuple[int, ...] = SIZES, calls: int = 20_000, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Client reads and store memory at every size; the O(1) ratio of the largest to smallest."""
    reads = []
    with firehose_process(0, 1) as url:
        for k in sizes:
            r = measure_client(url, k, calls)
            reads.append(r)
            log(
                f"  cache {k}: get_all {r['get_all_presence_ns']:.0f} ns, "
                f"get {r['get_presence_ns']:.0f} ns, after change "
                f"{r['get_all_after_change_ns'] / 1e3:.0f} us"
            )
    memory = []
    for k in sizes:
        m = measure_memory(k)
        memory.append(m)
        log(f"  cache {k}: {m['bytes_per_actor']:.0f} B/actor")
    lo, hi = reads[0], reads[-1]
    return {
        "reads": reads,
        "memory": memory,
        "get_all_ratio_largest_smallest": hi["get_all_presence_ns"] / lo["get_all_presence_ns"],
        "get_ratio_largest_smallest": hi["get_presence_ns"] / lo["get_presence_ns"],
        "after_change_ratio_largest_smallest": (
            hi["get_all_after_change_ns"] / lo["get_all_after_change_ns"]
        ),
    }


def main(argv: Optional[list[str]] = None) -> int:
    """Run the cache benchmark alone and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args(argv)
    print(json.dumps(run(tuple(args.sizes), args.calls), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
