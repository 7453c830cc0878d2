"""The official asyncio NoLag SDK, installed in a virtualenv of its own and driven as a subprocess.

Both it and this project import as ``nolag``, so the official one never enters the test
process: ``official_driver.py`` runs it under the official virtualenv's interpreter and
speaks JSON lines (see that module). :class:`OfficialClient` is the test side of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

OFFICIAL_VERSION = "2.6.0"
"""The official SDK release the interop tests pin (the latest when they were written)."""

INTEROP_DIR = Path(__file__).resolve().parent
DRIVER = INTEROP_DIR / "official_driver.py"
REPO_ROOT = INTEROP_DIR.parents[1]
MARKER = "nolag-interop.json"
PIP_TIMEOUT = 300.0


class InstallError(Exception):
    """The official SDK's virtualenv could not be created or the package not installed."""


def venv_dir() -> Path:
    """Where the official SDK's virtualenv is cached: $NOLAG_INTEROP_VENV or .interop-venv/."""
    override = os.environ.get("NOLAG_INTEROP_VENV")
    return Path(override).resolve() if override else REPO_ROOT / ".interop-venv"


def venv_python(venv: Path) -> Path:
    """The interpreter inside a virtualenv (POSIX or Windows layout)."""
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command to completion within ``timeout``; InstallError names what failed."""
    try:
        proc = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{' '.join(args[:4])} ...: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise InstallError(
            f"{' '.join(args[:4])} ... exited {proc.returncode}: " + " | ".join(tail)
        )
    return proc


def _installed_version(python: Path) -> Optional[str]:
    """The official SDK's version importable by ``python`` (isolated mode), or None."""
    if not python.exists():
        return None
    try:
        proc = _run([str(python), "-I", "-c", "import nolag; print(nolag.__version__)"], 60)
    except InstallError:
        return None
    return proc.stdout.strip() or None


def base_interpreter() -> str:
    """A Python >= 3.10 to build the virtualenv with (the official SDK requires it)."""
    candidates = [sys.executable] if sys.version_info >= (3, 10) else []
    candidates += [f"python3.{minor}" for minor in range(14, 9, -1)] + ["python3"]
    for name in candidates:
        path = shutil.which(name) if not os.path.isabs(name) else name
        if not path:
            continue
        with contextlib.suppress(InstallError):
            check = "import sys; print(sys.version_info >= (3, 10))"
            if _run([path, "-c", check], 30).stdout.strip() == "True":
                return path
    raise InstallError("no Python >= 3.10 found to run the official SDK (it requires 3.10+)")


def ensure_official_venv(version: str = OFFICIAL_VERSION) -> Path:
    """The interpreter of a cached virtualenv holding ``nolag==version`` (built when missing)."""
    # a build happens in a sibling temporary folder renamed into place at the end, so an
    # interrupted or concurrent build never leaves a half-made cache behind
    target = venv_dir()
    if _installed_version(venv_python(target)) == version:
        return venv_python(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=target.name + ".build-", dir=target.parent))
    try:
        _run([base_interpreter(), "-m", "venv", str(build)], 120)
        python = venv_python(build)
        _run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--quiet",
                "--retries",
                "2",
                "--timeout",
                "30",
                f"nolag=={version}",
            ],
            PIP_TIMEOUT,
        )
        found = _installed_version(python)
        if found != version:
            raise InstallError(f"installed nolag=={version} but it imports as {found!r}")
        (build / MARKER).write_text(json.dumps({"nolag": version}) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        try:
            build.rename(target)
        except OSError:
            if _installed_version(venv_python(target)) != version:  # not a concurrent build
                raise
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    python = venv_python(target)
    if _installed_version(python) != version:
        raise InstallError(f"the virtualenv at {target} does not import nolag=={version}")
    return python


class DriverError(AssertionError):
    """The driver answered a command with an error (``kind`` is the exception's type)."""

    def __init__(self, cmd: str, message: str, kind: Optional[str]) -> None:
        """Keep what failed."""
        super().__init__(f"official client {cmd}: {kind}: {message}")
        self.message = message
        self.kind = kind


class OfficialClient:
    """One official SDK client in its own process; commands block with bounded timeouts."""

    def __init__(self, python: Path, name: str = "official") -> None:
        """Start the driver and wait for it to report the official SDK's version."""
        self.name = name
        self._cond = threading.Condition()
        self._events: list[dict[str, Any]] = []
        self._results: dict[int, dict[str, Any]] = {}
        self._next_id = 0
        self._stderr = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed by close()
        self._proc = subprocess.Popen(
            [str(python), "-I", "-u", str(DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self._reader = threading.Thread(
            target=self._read, name=f"interop-{name}-stdout", daemon=True
        )
        self._reader.start()
        try:
            ready = self.wait_event(lambda e: e.get("event") == "ready", timeout=30)
        except BaseException:
            self.close()
            raise
        self.version: str = ready["version"]
        self.module_file: str = ready["file"]

    # -- plumbing ---------------------------------------------------------------------

    def _read(self) -> None:
        """Sort the driver's lines into results (by id) and events, until its stdout ends."""
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                message = {"event": "garbage", "line": line}
            with self._cond:
                if "id" in message:
                    self._results[message["id"]] = message
                else:
                    self._events.append(message)
                self._cond.notify_all()
        with self._cond:
            self._events.append({"event": "driver-exit"})
            self._cond.notify_all()

    def stderr(self) -> str:
        """What the driver wrote to stderr so far (for failure messages)."""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-4000:]

    def call(self, cmd: str, timeout: float = 10.0, **args: Any) -> Any:
        """Run one command; return its result, raise DriverError on its error."""
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        line = json.dumps({"id": ident, "cmd": cmd, "args": args, "timeout": timeout})
        assert self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        deadline = time.monotonic() + timeout + 5.0  # the driver times out first
        with self._cond:
            while ident not in self._results:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._proc.poll() is not None:
                    raise AssertionError(
                        f"official client: no answer to {cmd} (exit={self._proc.poll()}); "
                        f"stderr: {self.stderr()}"
                    )
                self._cond.wait(min(remaining, 0.5))
            reply = self._results.pop(ident)
        if not reply["ok"]:
            raise DriverError(cmd, reply.get("error", ""), reply.get("type"))
        return reply.get("result")

    # -- events -----------------------------------------------------------------------

    def events(self, kind: Optional[str] = None) -> list[dict[str, Any]]:
        """Every event so far, or those named ``kind``."""
        with self._cond:
            return [e for e in self._events if kind is None or e.get("event") == kind]

    def mark(self) -> int:
        """A position in the event log, for ``since=``."""
        with self._cond:
            return len(self._events)

    def wait_event(
        self,
        predicate: Callable[[dict[str, Any]], Any],
        timeout: float = 5.0,
        since: int = 0,
    ) -> dict[str, Any]:
        """The first event from position ``since`` on that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self._events[since:]:
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"official client: no matching event within {timeout}s; "
                        f"last events: {self._events[-8:]}; stderr: {self.stderr()}"
                    )
                self._cond.wait(min(remaining, 0.5))

    def frames(self, direction: str, since: int = 0) -> list[dict[str, Any]]:
        """Decoded MessagePack frames the client sent or received (heartbeats excluded)."""
        return [
            e["frame"]
            for e in self.events()[since:]
            if e.get("event") == "frame" and e["dir"] == direction and "frame" in e
        ]

    def heartbeats(self, direction: str, since: int = 0) -> int:
        """How many empty binary frames (heartbeats) the client sent or received."""
        return sum(
            1
            for e in self.events()[since:]
            if e.get("event") == "frame" and e["dir"] == direction and e.get("heartbeat")
        )

    def presence_events(self, actor_id: Optional[str] = None, since: int = 0) -> list[Any]:
        """(event name, actor id, data) for the SDK's presence callbacks."""
        return [
            (e["event"], e["actor"]["actor_token_id"], e["actor"]["presence"])
            for e in self.events()[since:]
            if e.get("event", "").startswith("presence:")
            and (actor_id is None or e["actor"]["actor_token_id"] == actor_id)
        ]

    # -- teardown ---------------------------------------------------------------------

    def close(self) -> None:
        """End the driver (end of stdin, then kill) and join the reader; idempotent."""
        proc = self._proc
        if proc.poll() is None and proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.close()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        elif proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.close()
        self._reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
        self._stderr.close()
        assert not self._reader.is_alive(), "official client reader thread left behind"
