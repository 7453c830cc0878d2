"""The samples and the console script, run as a user would: real processes, real broker."""

from __future__ import annotations

import contextlib
import io
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import TOKENS, connected, wait_until

from nolag import NoLag
from nolag.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _run(
    *args: str, timeout: float = 30, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        input=stdin,
    )


@pytest.mark.parametrize("sample", ["presence_watch.py", "typing_indicator.py"])
def test_samples_have_help(sample: str) -> None:
    result = _run(str(SAMPLES / sample), "--help")
    assert result.returncode == 0
    assert "--token" in result.stdout and "--url" in result.stdout


def test_presence_watch_prints_joins_updates_leaves_and_counts(broker_process: str) -> None:
    watch = subprocess.Popen(
        [
            sys.executable,
            str(SAMPLES / "presence_watch.py"),
            "--duration",
            "8",
            "--room",
            "general",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**ENV, "NOLAG_URL": broker_process, "NOLAG_TOKEN": TOKENS["carol"]},
    )
    try:
        assert watch.stdout is not None
        assert "watching room 'general'" in watch.stdout.readline()
        with connected(broker_process, TOKENS["dave"]) as dave:
            dave.set_presence({"username": "Dave", "status": "online"}, room="general")
            wait_until(lambda: dave.get_presence("carol"))
            dave.set_presence({"username": "Dave", "status": "away"}, room="general")
            wait_until(lambda: dave.get_presence("dave").presence["status"] == "away")  # type: ignore[union-attr]
        out, err = watch.communicate(timeout=20)
    finally:
        watch.kill()
        watch.wait(5)
    assert watch.returncode == 0, err
    # the broker sends map keys sorted, as the real one does
    assert "+ Dave joined {'status': 'online', 'username': 'Dave'} — 2 online" in out
    assert "~ Dave updated {'status': 'away', 'username': 'Dave'} — 2 online" in out
    assert "- Dave left — 1 online" in out


def test_presence_watch_reports_a_bad_token_in_one_line(broker_process: str) -> None:
    result = _run(str(SAMPLES / "presence_watch.py"), "--url", broker_process, "--token", "nope")
    assert result.returncode == 1
    assert result.stderr.strip() == "presence_watch: token refused: access_denied"


def test_typing_indicator_debounces_and_clears(broker_process: str) -> None:
    with connected(broker_process, TOKENS["erin"]) as erin:
        erin.set_presence({"username": "Erin"}, room="general")
        states: list[object] = []
        erin.on(
            "presence:update",
            lambda a: (
                states.append(a.presence.get("isTyping")) if a.actor_token_id == "bob" else None
            ),
        )
        typist = subprocess.Popen(
            [
                sys.executable,
                str(SAMPLES / "typing_indicator.py"),
                "--url",
                broker_process,
                "--token",
                TOKENS["bob"],
                "--name",
                "Bob",
                "--idle",
                "0.6",
                "--min-interval",
                "5",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        try:
            assert typist.stdin is not None and typist.stdout is not None
            assert "in room 'general' as Bob" in typist.stdout.readline()
            wait_until(lambda: erin.get_presence("bob"))
            for _ in range(5):  # a burst of keystrokes: one isTyping=true, not five
                typist.stdin.write("hello\n")
                typist.stdin.flush()
                time.sleep(0.05)
            wait_until(lambda: states[-1:] == [False], timeout=5)  # cleared after the idle time
            bob = erin.get_presence("bob")
            assert bob is not None
            assert dict(bob.presence) == {"username": "Bob", "status": "online", "isTyping": False}
            typist.stdin.close()
            typist.wait(10)
        finally:
            typist.kill()
            typist.wait(5)
        assert typist.returncode == 0
        assert states == [True, False]


def test_demo_in_plain_mode_shows_people_come_and_go() -> None:
    result = _run(
        "-m", "nolag", "demo", "--duration", "4", "--actors", "3", "--seed", "7", "--plain"
    )
    assert result.returncode == 0, result.stderr
    assert "embedded broker at ws://127.0.0.1:" in result.stdout
    assert result.stdout.count(" joined (") >= 3
    assert "nolag demo: stopped" in result.stdout


def test_demo_live_view_redraws_the_table() -> None:
    out = io.StringIO()
    assert run_demo(actors=2, duration=2.0, seed=3, out=out, live=True) == 0
    screen = out.getvalue()
    assert "\x1b[H\x1b[2J" in screen  # redrawn in place
    assert "who" in screen and "status" in screen and "online" in screen


def test_cli_help_and_usage_errors() -> None:
    assert _run("-m", "nolag", "--help").returncode == 0
    assert _run("-m", "nolag", "broker", "--help").returncode == 0
    bad = _run("-m", "nolag", "demo", "--actors", "0")
    assert bad.returncode == 2 and "actors" in bad.stderr
    assert _run("-m", "nolag").returncode == 2


@pytest.mark.parametrize("sample", ["chat_room.py", "lobby_dashboard.py"])
def test_room_samples_have_help(sample: str) -> None:
    result = _run(str(SAMPLES / sample), "--help")
    assert result.returncode == 0
    assert "--token" in result.stdout


def _read_until(fd: int, wanted: bytes, timeout: float) -> bytes:
    """Read a pseudo-terminal's output until `wanted` appears; fail after `timeout` seconds."""
    received = b""
    deadline = time.monotonic() + timeout
    while wanted not in received:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{wanted!r} not seen in {timeout} s: {received[-400:]!r}"
        if select.select([fd], [], [], remaining)[0]:
            received += os.read(fd, 4096)
    return received


def _drain(fd: int, timeout: float = 1.0) -> bytes:
    """A pseudo-terminal's output until its process has ended (EOF or EIO), or until
    nothing came for `timeout` seconds."""
    received = b""
    with contextlib.suppress(OSError):  # EIO: the other side is closed
        while select.select([fd], [], [], timeout)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            received += chunk
    return received


def test_chat_room_on_a_terminal_echoes_typing_and_ends_its_line_on_ctrl_c(
    broker_process: str,
) -> None:
    # a pseudo-terminal as stdin and stdout: the sample reads keys one by one, unechoed by
    # the terminal, so it must show what is typed itself
    master, slave = pty.openpty()
    args = ["--url", broker_process, "--token", TOKENS["dave"], "--name", "Dave"]
    chat = subprocess.Popen(
        [sys.executable, str(SAMPLES / "chat_room.py"), *args],
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        env={**ENV, "PYTHONFAULTHANDLER": "1"},  # SIGABRT below prints every thread's stack
    )
    os.close(slave)
    after: list[bytes] = []
    reader = threading.Thread(target=lambda: after.append(_drain(master, 20.0)), daemon=True)
    try:
        _read_until(master, b"Dave (you)", 20)  # connected and drawn
        os.write(master, "hé".encode())
        _read_until(master, "> hé".encode(), 10)
        # from now on a thread keeps reading the terminal: a full terminal would block
        # the sample's screen redraws (a terminal nobody reads is not what we test)
        reader.start()
        chat.send_signal(signal.SIGINT)
        try:
            code = chat.wait(15)
        except subprocess.TimeoutExpired:
            chat.send_signal(signal.SIGABRT)
            stacks = chat.communicate(timeout=10)[1].decode(errors="replace")
            raise AssertionError(f"chat_room did not end on Ctrl-C:\n{stacks}") from None
        assert code == 0
        reader.join(25)
    finally:
        chat.kill()
        chat.communicate()
        reader.join(25)
        os.close(master)
    # the shell's prompt then starts on a line of its own
    assert after and after[0].endswith(b"\r\n"), after


def test_chat_room_shows_typing_then_the_message(broker_process: str) -> None:
    with connected(broker_process, TOKENS["carol"]) as carol:
        carol.set_presence({"username": "Carol"}, room="general")
        seen: list[tuple[object, object]] = []
        carol.on(
            "presence:update",
            lambda a: (
                seen.append((a.presence.get("isTyping"), a.presence.get("said")))
                if a.actor_token_id == "dave"
                else None
            ),
        )
        chat = subprocess.Popen(
            [
                sys.executable,
                str(SAMPLES / "chat_room.py"),
                "--url",
                broker_process,
                "--token",
                TOKENS["dave"],
                "--name",
                "Dave",
                "--idle",
                "5",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        try:
            assert chat.stdin is not None and chat.stdout is not None
            assert "in room 'general' as Dave" in chat.stdout.readline()
            chat.stdin.write("hello there\n")
            chat.stdin.flush()
            wait_until(lambda: (False, "hello there") in seen, timeout=10)
            assert seen.index((True, None)) < seen.index((False, "hello there"))
            chat.stdin.write("/quit\n")
            chat.stdin.flush()
            out, err = chat.communicate(timeout=15)
        finally:
            chat.kill()
            chat.wait(5)
        assert chat.returncode == 0, err
        assert "Carol" not in out or "is typing" not in out  # only others' changes are shown


def test_lobby_dashboard_lists_people_across_rooms(broker_process: str) -> None:
    bob = NoLag(TOKENS["bob"], url=broker_process)
    dash = None
    try:
        bob.connect(timeout=5)
        bob.set_presence({"username": "Bob", "status": "online"}, room="random")
        bob.wait_for_presence("bob", timeout=5)
        dash = subprocess.Popen(
            [
                sys.executable,
                str(SAMPLES / "lobby_dashboard.py"),
                "--url",
                broker_process,
                "--token",
                TOKENS["carol"],
                "--duration",
                "4",
                "--plain",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        assert dash.stdout is not None
        first = [dash.stdout.readline() for _ in range(3)]
        assert "random (1)" in "".join(first)
        bob.set_presence({"username": "Bob", "status": "away"}, room="random")
        time.sleep(0.5)
        bob.disconnect()
        out, err = dash.communicate(timeout=20)
    finally:
        bob.disconnect()
        if dash is not None:
            dash.kill()
            dash.wait(5)
    assert dash.returncode == 0, err
    assert "update random: Bob {'status': 'away', 'username': 'Bob'}" in out
    assert "leave  random: Bob" in out


def test_lobby_dashboard_refused_lobby_is_one_line(broker_process: str) -> None:
    result = _run(
        str(SAMPLES / "lobby_dashboard.py"),
        "--url",
        broker_process,
        "--token",
        TOKENS["erin"],
        "--duration",
        "1",
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "lobby_dashboard: the token may not watch lobby 'main'"
