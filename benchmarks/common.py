"""Shared pieces of the benchmarks: a broker subprocess, memory and thread readings, the machine."""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
TOKENS = ROOT / "tests" / "fixtures" / "tokens.json"

# measure the nolag of the tree these benchmarks sit in, whatever else is installed
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    """A free loopback TCP port (racy, as all such helpers, but fine here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class BrokerProcess:
    """A running `nolag broker` subprocess: its URL and its pid."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.proc = proc

    @property
    def pid(self) -> int:
        """The broker's process id."""
        return self.proc.pid

    def rss_kib(self) -> int:
        """The broker's resident set size, KiB."""
        return rss_kib(self.proc.pid)


@contextmanager
def broker(
    tokens: Optional[Path] = TOKENS, allow_all: bool = False, idle_timeout: float = 60.0
) -> Iterator[BrokerProcess]:
    """A `nolag broker` subprocess on a free loopback port (its own process, its own GIL)."""
    port = free_port()
    args = [sys.executable, "-m", "nolag", "broker", "--port", str(port)]
    args += ["--log-level", "ERROR", "--idle-timeout", str(idle_timeout)]
    if tokens is not None:
        args += ["--tokens", str(tokens)]
    if allow_all:
        args.append("--allow-all")
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(ROOT)
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("broker did not start") from None
                time.sleep(0.05)
        yield BrokerProcess(f"ws://127.0.0.1:{port}/ws", proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def token_file(tokens: list[str], room: str = "bench", rate_limit: int = 0) -> Iterator[Path]:
    """A temporary token file: each token its own actor (named like it) in one project."""
    entries = {
        t: {
            "actorTokenId": t,
            "projectId": "bench-project",
            "organizationId": "bench-org",
            "actorType": "user",
            "rateLimit": rate_limit,
            "allowedTopics": [
                {
                    "pattern": f"bench/{room}/#",
                    "topic": f"bench-{room}",
                    "permission": "pubSub",
                    "room_id": f"room-{room}",
                    "room_slug": room,
                    "app_id": "bench-app",
                    "app_name": "bench",
                }
            ],
        }
        for t in tokens
    }
    with tempfile.TemporaryDirectory(prefix="nolag-bench-") as tmp:
        path = Path(tmp) / "tokens.json"
        path.write_text(json.dumps({"tokens": entries}))
        yield path


def rss_kib(pid: Optional[int] = None) -> int:
    """VmRSS of a process (default: this one) in KiB, from /proc; 0 where there is none."""
    path = f"/proc/{pid or 'self'}/status"
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def raise_fd_limit(want: int) -> int:
    """Raise this process's open-file soft limit towards `want` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "-"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine() -> dict[str, Any]:
    """What the run ran on: cores, CPU, memory, Python, package versions, the commit."""
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    dirty = _git("status", "--porcelain", "--", "nolag")
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
        "packages": {
            d: _version(d) for d in ("nolag-sync", "websocket-client", "msgpack", "aiohttp")
        },
        "commit": _git("rev-parse", "--short", "HEAD"),
        "nolag_dirty": bool(dirty),
        "load_avg": os.getloadavg(),
    }
