"""Ingest throughput: presence events per second from a loopback firehose to the user's code.

Four readers of the same firehose (benchmarks/firehose.py, its own process) in one run:

(a) nolag: presence callbacks counted through the public API;
(b) websocket-client's own ``recv()`` + ``msgpack.unpackb`` per frame;
(c) the socket websocket-client opened, read in 1 MiB ``recv()`` batches and parsed by
    hand, ``msgpack.unpackb`` per payload: decode only, the ceiling of Python here;
(d) the official asyncio NoLag SDK, in a virtualenv of its own, driven as a subprocess.

After a discarded warm-up round, each variant is run `repeat` times, interleaved
(a, b, c, d, a, b, ...), and the median is reported.

    python benchmarks/ingest.py --n 60000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import common  # noqa: F401  (puts this tree's nolag first on sys.path)
import msgpack
import websocket
from firehose import firehose_process, mix_plan

HERE = Path(__file__).resolve().parent
OFFICIAL_DRIVER = HERE / "official_ingest.py"
OFFICIAL_VERSION = "2.6.0"  # the latest official `nolag` on the package index (2026-11-28)
OFFICIAL_VENV = HERE / ".official-venv"
INTEROP_VENV = HERE.parent / ".interop-venv"  # the interop tests' venv, reused when it fits


def _timeout(n: int) -> float:
    """A generous bound for one variant: never hang the whole run."""
    return 30.0 + n / 2_000


def run_nolag(url: str, n: int) -> dict[str, Any]:
    """(a) nolag: seconds from connect() returning (or the first callback) to the N-th callback."""
    from nolag import NoLag

    counts = {"presence:join": 0, "presence:update": 0, "presence:leave": 0}
    total = [0]
    first: list[float] = []
    last = [0.0]
    done = threading.Event()
    client = NoLag(f"mix:{n}", url=url, sync_on_join=False, heartbeat_interval=30)

    def counter(name: str) -> Callable[[Any], None]:
        def on_event(actor: Any) -> None:
            if not first:
                first.append(time.perf_counter())
            counts[name] += 1
            total[0] += 1
            if total[0] >= n:
                last[0] = time.perf_counter()
                done.set()

        return on_event

    for name in counts:
        client.on(name, counter(name))
    client.connect(timeout=10)
    start = time.perf_counter()
    try:
        finished = done.wait(_timeout(n))
        start = min([start, *first])  # callbacks may start before connect() has returned
        time.sleep(0.05)  # let any surplus callback land before counting
    finally:
        client.disconnect()
    if not finished:
        raise RuntimeError(f"nolag: {total[0]} of {n} events within {_timeout(n):.0f}s")
    return {"events": total[0], "seconds": last[0] - start, "by_kind": counts}


def _connect_raw(url: str, token: str) -> websocket.WebSocket:
    """websocket-client's connection, then the auth frame sent."""
    ws = websocket.create_connection(url, timeout=10, skip_utf8_validation=True)
    ws.send_binary(msgpack.packb({"type": "auth", "token": token, "protocolVersion": 2}))
    return ws


def run_recv_loop(url: str, n: int) -> dict[str, Any]:
    """(b) websocket-client's own recv() + msgpack.unpackb per frame, counting presence."""
    ws = _connect_raw(url, f"mix:{n}")
    try:
        auth = msgpack.unpackb(ws.recv(), raw=False)
        assert auth.get("success") is True, auth
        start = time.perf_counter()
        deadline = time.monotonic() + _timeout(n)
        events = 0
        while events < n:
            frame = msgpack.unpackb(ws.recv(), raw=False)
            if frame.get("type") == "presence":
                events += 1
            elif time.monotonic() > deadline:
                raise RuntimeError("recv loop: timed out")
        seconds = time.perf_counter() - start
    finally:
        ws.close()
    return {"events": events, "seconds": seconds}


def run_batched(url: str, n: int) -> dict[str, Any]:
    """(c) frames parsed in batches from 1 MiB recv() reads of websocket-client's socket."""
    ws = _connect_raw(url, f"mix:{n}")
    sock = ws.sock
    sock.settimeout(_timeout(n))
    unpackb = msgpack.unpackb
    unpack_h = struct.Struct("!H").unpack_from
    unpack_q = struct.Struct("!Q").unpack_from
    buf = b""
    events = 0
    authed = False
    start = 0.0
    try:
        while events < n:
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError("batched: connection closed early")
            buf = buf + data if buf else data
            pos = 0
            end = len(buf)
            view = memoryview(buf)
            while end - pos >= 2:
                length = buf[pos + 1] & 0x7F
                head = 2
                if length == 126:
                    if end - pos < 4:
                        break
                    length = unpack_h(buf, pos + 2)[0]
                    head = 4
                elif length == 127:
                    if end - pos < 10:
                        break
                    length = unpack_q(buf, pos + 2)[0]
                    head = 10
                stop = pos + head + length
                if stop > end:
                    break
                if length:
                    frame = unpackb(view[pos + head : stop], raw=False)
                    kind = frame.get("type")
                    if kind == "presence":
                        events += 1
                    elif kind == "auth" and not authed:
                        authed = True
                        start = time.perf_counter()
                pos = stop
            view.release()
            buf = buf[pos:]
        seconds = time.perf_counter() - start
    finally:
        ws.close()
    return {"events": events, "seconds": seconds}


def official_python() -> tuple[Optional[Path], str]:
    """The interpreter of a virtualenv holding the pinned official SDK, or None and why."""
    for venv in (OFFICIAL_VENV, INTEROP_VENV):
        python = venv / "bin" / "python"
        if python.exists() and _official_version(python) == OFFICIAL_VERSION:
            return python, ""
    return None, f"no virtualenv with nolag=={OFFICIAL_VERSION} (run with --install-official)"


def _official_version(python: Path) -> Optional[str]:
    """The official SDK version importable by `python` in isolated mode (not our nolag)."""
    try:
        out = subprocess.run(
            [str(python), "-I", "-c", "import nolag; print(nolag.__version__)"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def install_official() -> tuple[Optional[Path], str]:
    """Create benchmarks/.official-venv with the pinned official SDK; (python, why-not)."""
    python, _ = official_python()
    if python is not None:
        return python, ""
    venv = OFFICIAL_VENV
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         f"nolag=={OFFICIAL_VERSION}"],
    ]  # fmt: skip
    for step in steps:
        try:
            proc = subprocess.run(step, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{' '.join(step[:4])}: {exc}"
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return None, f"{' '.join(step[:4])} failed: {' | '.join(tail)}"
    return official_python()


def official_versions(python: Path) -> dict[str, str]:
    """Versions of the official SDK and of its transport inside its virtualenv."""
    code = (
        "import json, importlib.metadata as m; print(json.dumps({p: m.version(p) "
        "for p in ('nolag', 'websockets', 'msgpack')}))"
    )
    try:
        out = subprocess.run(
            [str(python), "-I", "-c", code], capture_output=True, text=True, timeout=60
        )
        versions: dict[str, str] = json.loads(out.stdout)
        return versions
    except Exception:
        return {}


def run_official(url: str, n: int, python: Path) -> dict[str, Any]:
    """(d) the official asyncio SDK in its own virtualenv: {events, seconds, by_kind}."""
    proc = subprocess.run(
        [str(python), "-I", str(OFFICIAL_DRIVER), url, f"mix:{n}", str(n), str(_timeout(n))],
        capture_output=True,
        text=True,
        timeout=_timeout(n) + 30,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError("official SDK driver failed: " + " | ".join(tail))
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def expected_by_kind(n: int, actors: int) -> dict[str, int]:
    """The callbacks per kind a correct client makes for the mix."""
    out = {"presence:join": 0, "presence:update": 0, "presence:leave": 0}
    for kind, _, _ in mix_plan(n, actors):
        out["presence:" + kind] += 1
    return out


def run(
    n: int = 60_000,
    actors: int = 10_000,
    repeat: int = 3,
    official: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every variant `repeat` times, interleaved; medians, ratios and checks.

    `official`: "auto" uses the official SDK's virtualenv if one exists, "install" creates
    it when missing, "skip" leaves (d) out.
    """
    python: Optional[Path] = None
    why = "skipped (--official skip)"
    if official == "install":
        python, why = install_official()
    elif official == "auto":
        python, why = official_python()
    variants: dict[str, Callable[[str, int], dict[str, Any]]] = {
        "nolag": run_nolag,
        "recv_loop": run_recv_loop,
        "batched": run_batched,
    }
    if python is not None:
        py = python
        variants["official"] = lambda url, n: run_official(url, n, py)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
    errors: dict[str, str] = {}
    expected = expected_by_kind(n, actors)
    with firehose_process(n, actors) as url:
        for name, fn in variants.items():  # warm-up round (imports, caches, page faults)
            try:
                fn(url, max(1, n // 6))
            except Exception as exc:
                log(f"  ingest {name} warm-up: FAILED {type(exc).__name__}: {exc}")
        for i in range(repeat):
            for name, fn in variants.items():
                if name in errors:
                    continue
                try:
                    r = fn(url, n)
                except Exception as exc:  # report, don't sink the whole run
                    errors[name] = f"{type(exc).__name__}: {exc}"
                    log(f"  ingest {name} #{i + 1}: FAILED {errors[name]}")
                    continue
                r["events_per_s"] = r["events"] / r["seconds"] if r["seconds"] > 0 else 0.0
                runs[name].append(r)
                log(f"  ingest {name} #{i + 1}: {r['events_per_s']:,.0f} events/s")
    result: dict[str, Any] = {
        "n": n,
        "actors": actors,
        "repeat": repeat,
        "expected_by_kind": expected,
        "variants": {},
        "errors": errors,
    }
    for name, rs in runs.items():
        if not rs:
            continue
        rates = [r["events_per_s"] for r in rs]
        entry: dict[str, Any] = {
            "median_events_per_s": statistics.median(rates),
            "runs_events_per_s": rates,
            "events": [r["events"] for r in rs],
        }
        if "by_kind" in rs[0]:
            entry["counts_exact"] = all(r["by_kind"] == expected for r in rs)
            entry["by_kind"] = rs[0]["by_kind"]
        result["variants"][name] = entry
    if python is None:
        result["official_unavailable"] = why
    else:
        result["official_versions"] = official_versions(python)
    v = result["variants"]

    def ratio(a: str, b: str) -> Optional[float]:
        if a in v and b in v and v[b]["median_events_per_s"] > 0:
            return float(v[a]["median_events_per_s"] / v[b]["median_events_per_s"])
        return None

    result["ratios"] = {
        "nolag/batched": ratio("nolag", "batched"),
        "nolag/official": ratio("nolag", "official"),
        "nolag/recv_loop": ratio("nolag", "recv_loop"),
        "official/batched": ratio("official", "batched"),
    }
    return result


def main(argv: Optional[list[str]] = None) -> int:
    """Run the ingest benchmark alone and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--actors", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--official", choices=("auto", "install", "skip"), default="auto",
        help="use the official SDK's venv if present (auto), create it (install), or skip",
    )  # fmt: skip
    parser.add_argument("--only", choices=("nolag", "recv_loop", "batched", "official"))
    args = parser.parse_args(argv)
    if args.only:  # a single variant, e.g. under a profiler
        with firehose_process(args.n, args.actors) as url:
            if args.only == "official":
                python, why = official_python()
                if python is None:
                    print(why, file=sys.stderr)
                    return 1
                r = run_official(url, args.n, python)
            else:
                fn = {"nolag": run_nolag, "recv_loop": run_recv_loop, "batched": run_batched}
                r = fn[args.only](url, args.n)
        print(json.dumps(r, indent=2))
        return 0
    print(json.dumps(run(args.n, args.actors, args.repeat, args.official), indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
