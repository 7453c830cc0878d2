"""Many nolag clients in one process: a join storm through the local broker until all converge.

N clients (distinct tokens, so distinct actors, on a `nolag broker --allow-all`
subprocess) connect one after another; then each sets its project-level presence, all at
once (the storm); the clock runs until every client's cache holds all N actors. Reported:
connect time, convergence time (bounded), threads per client, this process's RSS and the
broker's. Teardown (N disconnects; the broker tells the rest about each leave) is timed
too.

    python benchmarks/scale.py --clients 100 500 1000
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional

from common import broker, raise_fd_limit, rss_kib

CLIENTS = (100, 500, 1000)
RESULT = "RESULT "
TEARDOWN_S = 120.0


def run_one(
    n: int,
    limit_s: float = 300.0,
    log: Callable[[str], None] = print,
    report: Optional[Callable[[dict[str, Any]], None]] = None,
    heartbeat: Optional[float] = None,
) -> dict[str, Any]:
    """One storm of n clients against a fresh broker; `report` gets the result before teardown.

    `report` also gets the partial result after connecting and every 10 s (with "final"
    False), so a parent can say how far a storm that never ends got. `heartbeat` overrides
    the clients' heartbeat_interval (a diagnostic: it also sets how long a silent
    connection is tolerated).
    """
    from nolag import NoLag

    fd_limit = raise_fd_limit(4 * n + 1024)  # our sockets and the broker's (it inherits it)
    threads_before = threading.active_count()
    rss_before = rss_kib()
    result: dict[str, Any] = {"clients": n, "fd_limit": fd_limit}
    with broker(tokens=None, allow_all=True) as proc:
        broker_rss_idle = proc.rss_kib()
        opts = {} if heartbeat is None else {"heartbeat_interval": heartbeat}
        clients = [NoLag(f"scale-{n}-{i:05d}", url=proc.url, **opts) for i in range(n)]
        try:
            t0 = time.perf_counter()
            for c in clients:
                c.connect(timeout=30)
            result["connect_s"] = time.perf_counter() - t0
            result["threads_per_client"] = (threading.active_count() - threads_before) / n
            result.update(converged=False, clients_converged=0, final=False)
            if report is not None:
                report(result)
            t1 = time.perf_counter()
            for i, c in enumerate(clients):
                c.set_presence({"n": i, "status": "online"})
            result["storm_send_s"] = time.perf_counter() - t1
            deadline = time.monotonic() + limit_s
            next_report = time.monotonic() + 10
            pending = list(clients)
            while pending and time.monotonic() < deadline:
                still = []
                for j, c in enumerate(pending):
                    if time.monotonic() > deadline:  # each call may wait long for the GIL
                        still.extend(pending[j:])
                        break
                    if c.presence_count() < n:
                        still.append(c)
                pending = still
                if pending:
                    time.sleep(0.05)
                if time.monotonic() > next_report:
                    next_report = time.monotonic() + 10
                    result["clients_converged"] = n - len(pending)
                    result["frames_received"] = sum(c.stats.frames_received for c in clients)
                    result["reconnects"] = sum(c.stats.reconnects for c in clients)
                    result["rss_mib"] = rss_kib() / 1024
                    result["elapsed_s"] = time.perf_counter() - t1
                    log(
                        f"  scale {n}: {n - len(pending)} converged after "
                        f"{result['elapsed_s']:.0f}s, {result['frames_received']} frames, "
                        f"{result['reconnects']} reconnects"
                    )
                    if report is not None:
                        report(result)
            converged = not pending
            result["converged"] = converged
            result["converge_s"] = time.perf_counter() - t1 if converged else None
            result["clients_converged"] = n - len(pending)
            result["rss_mib"] = rss_kib() / 1024
            result["rss_per_client_kib"] = (rss_kib() - rss_before) / n
            result["broker_rss_mib"] = proc.rss_kib() / 1024
            result["broker_rss_per_client_kib"] = (proc.rss_kib() - broker_rss_idle) / n
            frames = sum(c.stats.frames_received for c in clients)
            result["frames_received"] = frames
            result["reconnects"] = sum(c.stats.reconnects for c in clients)
            if converged:
                result["frames_per_s"] = frames / result["converge_s"]
            result["final"] = True
            status = f"{result['converge_s']:.1f}s" if converged else "NOT converged"
            log(
                f"  scale {n}: connect {result['connect_s']:.1f}s, storm {status}, "
                f"{result['threads_per_client']:.1f} threads/client, "
                f"RSS {result['rss_mib']:.0f} MiB, {result['reconnects']} reconnects"
            )
            if report is not None:
                report(result)
        finally:
            t2 = time.perf_counter()
            for c in clients:
                c.disconnect()
            result["teardown_s"] = time.perf_counter() - t2
    result["threads_left"] = threading.active_count() - threads_before
    return result


def _run_child(
    n: int, limit_s: float, log: Callable[[str], None], heartbeat: Optional[float] = None
) -> dict[str, Any]:
    """run_one in a fresh process (its own session, so the broker it starts goes with it)."""
    args = [sys.executable, __file__, "--clients", str(n), "--limit", str(limit_s), "--one"]
    if heartbeat is not None:
        args += ["--heartbeat", str(heartbeat)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, start_new_session=True)
    result: dict[str, Any] = {"clients": n, "error": "no result"}
    lines: queue.Queue[Optional[str]] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + limit_s + 120  # connecting + converging
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                if "teardown" in result:
                    result["teardown"] = f"killed after {TEARDOWN_S:.0f}s"
                else:
                    result.setdefault("error", "timed out")
                break
            if line is None:
                break
            if line.startswith(RESULT):
                result = json.loads(line[len(RESULT) :])
                if result.pop("final", False):
                    result["teardown"] = "clean"
                    deadline = time.monotonic() + TEARDOWN_S  # a bounded teardown
                else:
                    result["error"] = "no final result in time (this is the last progress)"
            else:
                log(line)
        if proc.poll() is None:
            proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        if "teardown" in result:
            result["teardown"] = f"killed after {TEARDOWN_S:.0f}s"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this call created: child + broker
            proc.wait(10)
    return result


def run(
    sizes: tuple[int, ...] = CLIENTS,
    limit_s: float = 300.0,
    log: Callable[[str], None] = print,
    heartbeat: Optional[float] = None,
) -> dict[str, Any]:
    """A storm at every size, each in a fresh process with a fresh broker (clean RSS)."""
    runs = [_run_child(n, limit_s, log, heartbeat) for n in sizes]
    return {"runs": runs, "limit_s": limit_s, "heartbeat": heartbeat}


def main(argv: Optional[list[str]] = None) -> int:
    """Run the scale benchmark alone and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--limit", type=float, default=300.0, help="give up after S seconds")
    parser.add_argument("--heartbeat", type=float, help="clients' heartbeat_interval (diagnostic)")
    parser.add_argument("--one", action="store_true", help="in this process; JSON on one line")
    args = parser.parse_args(argv)
    if args.one:
        run_one(
            args.clients[0],
            args.limit,
            log=lambda line: print(line, flush=True),
            report=lambda r: print(RESULT + json.dumps(r), flush=True),
            heartbeat=args.heartbeat,
        )
        return 0
    print(json.dumps(run(tuple(args.clients), args.limit, heartbeat=args.heartbeat), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
