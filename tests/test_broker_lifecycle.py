"""EmbeddedBroker start/stop/restart, allow-all mode, and the command line."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
from rawclient import RawClient

from nolag.broker import EmbeddedBroker, main


def enter(client: RawClient) -> None:
    """Join room 'general' and consume the own join + update."""
    client.send({"type": "presence", "roomId": "general", "data": {"x": 1}})
    client.recv()
    client.recv()


def test_stop_closes_sockets_and_start_reuses_the_port(tokens_path: Path) -> None:
    broker = EmbeddedBroker(tokens_path)
    assert broker.port == 0
    broker.start()
    try:
        port, url = broker.port, broker.url
        assert port > 0 and url == f"ws://127.0.0.1:{port}/ws"
        assert broker.http_url == f"http://127.0.0.1:{port}"
        names = [t.name for t in threading.enumerate() if t.name.startswith("nolag-broker-")]
        assert len(names) == 1 and re.fullmatch(r"nolag-broker-\d+", names[0])
        clients = [RawClient(url) for _ in range(3)]
        clients[0].auth("dev-token-alice")
        enter(clients[0])
        clients[1].auth("dev-token-bob")
        deadline = time.monotonic() + 5
        while broker.connection_count() != 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert broker.connection_count() == 3
        broker.stop()
        assert broker.connection_count() == 0
        for client in clients:  # each sees a close frame, then the TCP connection end
            assert client.wait_closed(5) == 1012  # service restart: clients reconnect
        with pytest.raises(OSError):
            RawClient(url, timeout=1)
        broker.start()
        assert broker.port == port
        with RawClient(url) as again:
            again.auth("dev-token-carol")
            again.send({"type": "getPresence", "roomId": "general"})
            assert again.recv()["data"] == []  # a fresh broker
    finally:
        broker.stop()
    broker.stop()  # idempotent


def test_context_manager_and_allow_all() -> None:
    with EmbeddedBroker(allow_all=True) as broker:
        with RawClient(broker.url) as client:
            reply = client.auth("whatever-token", 2)
            assert (reply["actorTokenId"], reply["projectId"], reply["actorType"]) == (
                "whatever-token",
                "dev",
                "user",
            )
            client.send({"type": "presence", "roomId": "any-room", "data": {}})
            assert client.recv()["event"] == "join"
            assert client.auth("")["success"] is False
        with pytest.raises(RuntimeError):
            broker.start()
    assert not broker.running


def test_constructor_and_start_errors(tokens_path: Path) -> None:
    with pytest.raises(ValueError):
        EmbeddedBroker()
    with pytest.raises(TypeError):
        EmbeddedBroker(tokens_path, no_such_option=1)
    with pytest.raises(ValueError):
        EmbeddedBroker(tokens_path, idle_timeout=0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = EmbeddedBroker(tokens_path, port=taken.getsockname()[1])
        with pytest.raises(OSError):
            broker.start(timeout=5)
    assert not broker.running
    assert not [t for t in threading.enumerate() if t.name.startswith("nolag-broker-")]


def test_connection_count_follows_sockets(make_broker: Callable[..., EmbeddedBroker]) -> None:
    broker = make_broker()
    client = RawClient(broker.url)
    deadline = time.monotonic() + 5
    while broker.connection_count() != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert broker.connection_count() == 1
    client.abort()
    while broker.connection_count() != 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert broker.connection_count() == 0


# -- command line ----------------------------------------------------------------------------


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--tokens", "--allow-all", "--idle-timeout"):
        assert option in out


def test_cli_refuses_allow_all_on_a_public_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--allow-all", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--i-know-allow-all-is-insecure" in err


def test_cli_bad_arguments_exit_2(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # without --tokens: the well-known development tokens, so loopback only
    assert main(["--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--tokens" in err and "loopback" in err
    assert main(["--compat", "nosuch", "--port", "0"]) == 2
    assert "--compat" in capsys.readouterr().err
    assert main(["--auth-timeout", "-1", "--port", "0"]) == 2
    assert "auth_timeout must be >= 0" in caplog.text
    assert main(["--tokens", str(tmp_path / "missing.json"), "--port", "0"]) == 2
    assert main(["--tokens", "x.json", "--port", "nope"]) == 2


def run_cli(*args: str, stdout: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """Start ``python -m nolag.broker`` on a free port."""
    return subprocess.Popen(
        [sys.executable, "-m", "nolag.broker", "--port", "0", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_listening(proc: subprocess.Popen[str]) -> tuple[int, list[str]]:
    """Read stderr until the 'listening' line; return the port and the lines read."""
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"listening on ws://127\.0\.0\.1:(\d+)/ws", line)
        if match:
            return int(match.group(1)), lines
    raise AssertionError(f"broker did not start: {lines}")


@pytest.mark.parametrize("args", [("--tokens", "TOKENS"), ("--allow-all",)])
def test_cli_serves_until_ctrl_c(tokens_path: Path, args: tuple[str, ...]) -> None:
    args = tuple(str(tokens_path) if a == "TOKENS" else a for a in args)
    proc = run_cli(*args)
    try:
        port, lines = wait_listening(proc)
        if "--allow-all" in args:
            assert any("WARNING" in line and "ALLOW-ALL" in line for line in lines)
        token = "dev-token-alice" if "--tokens" in args else "anyone"
        with RawClient(f"ws://127.0.0.1:{port}/ws") as client:
            assert client.auth(token)["success"] is True
            proc.send_signal(signal.SIGINT)
            assert client.wait_closed(10) == 1012
        assert proc.wait(15) == 0
        assert proc.stderr is not None
        rest = proc.stderr.read()
        assert "Traceback" not in rest and token not in "".join(lines) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()


def test_cli_without_a_token_file_serves_the_printed_dev_tokens(tmp_path: Path) -> None:
    # issue 15: the Quickstart works from an installed package (no tests/fixtures needed)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nolag.broker", "--port", "0", "--compat", "kraken"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(tmp_path),  # no token file anywhere near
    )
    try:
        port, lines = wait_listening(proc)
        assert any("compat mode 'kraken'" in line for line in lines)
        with RawClient(f"ws://127.0.0.1:{port}/ws") as client:
            reply = client.auth("dev-token-alice", 2)
            assert (reply["actorTokenId"], reply["projectId"]) == ("alice", "demo-project")
            assert "rateLimit" not in reply  # kraken mode: no extension keys
            client.send({"type": "lobbySubscribe", "lobbyId": "main"})
            assert client.recv()["type"] == "lobbySubscribed"
        with RawClient(f"ws://127.0.0.1:{port}/ws") as stranger:
            assert stranger.auth("not-a-dev-token")["success"] is False
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        assert proc.stdout is not None
        printed = proc.stdout.read()
        assert "DEVELOPMENT TOKENS" in printed and "dev-token-alice (alice)" in printed
        assert "dev-token-bob (bob)" in printed and "loopback only" in printed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
