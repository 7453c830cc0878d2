"""No hang at exit: scripts that forget disconnect(), block in a callback or are reconnecting end.

Each case is a real Python process running a small script against the local broker; it
must end on its own within a few seconds (a hang is killed and fails the test), and the
broker must see its socket go (others get the leave: no ghost after a process ends).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
from helpers import TOKENS, free_port, wait_until
from rawclient import RawClient

from nolag.broker import EmbeddedBroker

PRELUDE = """
import sys, threading, time
from nolag import NoLag
url, TOKEN = sys.argv[1], sys.argv[2]
client = NoLag(TOKEN, url=url, reconnect_initial_delay=30.0, reconnect_max_delay=30.0)
"""

SCRIPTS = {
    "forgot disconnect": """
client.connect(timeout=5)
client.set_presence({"pid": 1}, room="general")
client.wait_for_presence("alice", room="general")
print("ready", flush=True)
""",
    "callback blocked for ever": """
client.on("presence:update", lambda actor: threading.Event().wait())
client.connect(timeout=5)
client.set_presence({"pid": 1}, room="general")
client.set_presence({"pid": 2}, room="general")
time.sleep(0.5)
print("ready", flush=True)
""",
    "disconnect with a blocked callback": """
client.on("presence:update", lambda actor: threading.Event().wait())
client.connect(timeout=5)
client.set_presence({"pid": 1}, room="general")
client.set_presence({"pid": 2}, room="general")
time.sleep(0.5)
print("ready", flush=True)
started = time.monotonic()
client.disconnect(timeout=1.0)
print("disconnected in %.1f" % (time.monotonic() - started), flush=True)
""",
    "with block": """
with NoLag(TOKEN, url=url) as other:
    other.set_presence({"pid": 3}, room="general")
    other.wait_for_presence("alice", room="general")
print("ready", flush=True)
""",
}


def _run(script: str, url: str, timeout: float = 15.0) -> tuple[int, str]:
    code = textwrap.dedent(PRELUDE + script)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, url, TOKENS["alice"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the process hung at exit:\n{out.decode()[-2000:]}") from None
    return proc.returncode, out.decode()


@pytest.mark.parametrize("case", list(SCRIPTS))
def test_a_process_with_a_client_ends_and_its_presence_goes(
    broker: EmbeddedBroker, case: str
) -> None:
    watcher = RawClient(broker.url, timeout=3)
    try:
        assert watcher.auth(TOKENS["bob"], 2)["success"] is True
        watcher.send({"type": "presence", "roomId": "general", "data": {"watch": True}})
        code, out = _run(SCRIPTS[case], broker.url)
        assert code == 0, out
        assert "ready" in out, out
        if case == "disconnect with a blocked callback":
            assert "disconnected in 1." in out or "disconnected in 0." in out, out
        events = [f for f in watcher.drain(0.3) if isinstance(f, dict)]
        leaves = [e for e in events if e.get("event") == "leave"]
        assert leaves and all(e["data"]["actor_token_id"] == "alice" for e in leaves)
        watcher.send({"type": "getPresence", "roomId": "general"})
        listed = watcher.recv_type("presenceList")
        assert [e["actorTokenId"] for e in listed["data"]] == ["bob"]  # no ghost
    finally:
        watcher.close()


def test_a_process_reconnecting_in_a_long_backoff_ends_at_once(tokens_path: object) -> None:
    port = free_port()
    broker = EmbeddedBroker(tokens_path=tokens_path, port=port).start()
    script = """
client.connect(timeout=5)
print("ready", flush=True)
while client.connected:
    time.sleep(0.05)
print("reconnecting", flush=True)
"""
    code = textwrap.dedent(PRELUDE + script)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, broker.url, TOKENS["alice"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        broker.stop()  # the server goes away: the client starts a 30 s backoff
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0 and b"reconnecting" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        broker.stop()


def test_ctrl_c_in_wait_ends_a_script_promptly(broker: EmbeddedBroker) -> None:
    script = """
client.connect(timeout=5)
try:
    print("ready", flush=True)
    client.wait()
except KeyboardInterrupt:
    print("interrupted", flush=True)
    client.disconnect()
"""
    code = textwrap.dedent(PRELUDE + script)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, broker.url, TOKENS["alice"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0 and b"interrupted" in out, out
        wait_until(lambda: broker.connection_count() == 0, timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
