"""`nolag presence list|watch|set` as a user runs them: real processes, a real local broker."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pty
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from helpers import TOKENS, connected, free_port, wait_until

from nolag.broker import EmbeddedBroker
from nolag.cli import main, parse_assignments

ENV = {k: v for k, v in os.environ.items() if k not in ("NOLAG_URL", "NOLAG_TOKEN")}
ENV["PYTHONUNBUFFERED"] = "1"


def nolag(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the console script as `python -m nolag ...`."""
    return subprocess.run(
        [sys.executable, "-m", "nolag", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**ENV, **(env or {})},
    )


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nolag", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**ENV, **(env or {})},
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """Assert the command failed with `code` and exactly one stderr line; return it."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() tunes the 'nolag' logger as a CLI process would; undo that for other tests."""
    logger = logging.getLogger("nolag")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.mark.parametrize(
    "args",
    [[], ["presence"], ["presence", "list"], ["presence", "watch"], ["presence", "set"], ["demo"]],
)
def test_every_command_has_help_with_exit_codes(args: list[str]) -> None:
    result = nolag(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert "exit codes: 0 ok, 1 error" in " ".join(result.stdout.split())
    if args[:1] == ["presence"] and len(args) == 2:
        assert "NOLAG_URL" in result.stdout and "NOLAG_TOKEN" in result.stdout


def test_list_prints_the_servers_list_as_a_table_and_as_json(
    broker: EmbeddedBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    with ExitStack() as stack:
        alice = stack.enter_context(connected(broker.url, TOKENS["alice"]))
        bob = stack.enter_context(connected(broker.url, TOKENS["bob"]))
        alice.set_presence({"username": "Alice", "status": "online"}, room="general")
        bob.set_presence({"username": "Bob", "status": "away", "isTyping": True}, room="general")
        wait_until(lambda: len(alice.get_all_presence("general")) == 2)
        base = ["presence", "list", "--url", broker.url, "--token", TOKENS["carol"]]
        assert main([*base, "--room", "general"]) == 0
        table = capsys.readouterr().out
        assert table.splitlines()[0].split() == [
            "who",
            "actor",
            "type",
            "status",
            "since",
            "typing",
        ]
        bob_row = next(line for line in table.splitlines() if line.startswith("Bob"))
        assert bob_row.split()[:4] == ["Bob", "bob", "user", "away"] and "typing…" in bob_row
        assert "2 online in room 'general'" in table
        assert main([*base, "--room", "general", "--json"]) == 0
        body = json.loads(capsys.readouterr().out)
        # the REST answer's keys (GET /v1/presence)
        assert list(body) == ["roomId", "actors", "count"]
        assert body["count"] == 2 and body["roomId"] == "general"
        assert {p["actorTokenId"] for p in body["actors"]} == {"alice", "bob"}
        assert main(base) == 0  # project level: nobody announced there
        assert "(nobody)" in capsys.readouterr().out


def test_set_announces_data_from_the_environment_until_its_duration(
    broker: EmbeddedBroker,
) -> None:
    env = {"NOLAG_URL": broker.url, "NOLAG_TOKEN": TOKENS["carol"]}
    with connected(broker.url, TOKENS["alice"]) as alice:
        alice.set_presence({"username": "Alice"}, room="general")
        proc = spawn(
            "presence",
            "set",
            "--room",
            "general",
            "--duration",
            "2",
            "username=Carol",
            "isTyping=true",
            "age=3",
            "note=hello world",
            env=env,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("present in room 'general' as carol: ")
            carol = wait_until(lambda: alice.get_presence("carol", "general"))
            assert dict(carol.presence) == {
                "username": "Carol",
                "isTyping": True,
                "age": 3,
                "note": "hello world",
            }
            assert proc.wait(15) == 0
            wait_until(lambda: alice.get_presence("carol", "general") is None)
        finally:
            proc.kill()
            proc.communicate()


def test_watch_visible_redraws_a_table_in_place(broker: EmbeddedBroker) -> None:
    proc = spawn(
        "presence",
        "watch",
        "--room",
        "general",
        "--visible",
        "--live",
        "--duration",
        "3",
        "--url",
        broker.url,
        "--token",
        TOKENS["carol"],
    )
    try:
        with connected(broker.url, TOKENS["bob"]) as bob:
            bob.set_presence({"username": "Bob", "status": "busy"}, room="general")
            wait_until(lambda: bob.get_presence("carol", "general"))  # the watcher is there
            bob.set_presence(
                {"username": "Bob", "status": "busy", "isTyping": True}, room="general"
            )
            out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    frames = out.split("\x1b[H\x1b[2J")
    assert len(frames) >= 3  # redrawn, not appended
    last = frames[-1]
    assert "nolag presence watch — room 'general'" in last
    row = next(line for line in last.splitlines() if line.startswith("Bob"))
    # the type column is blank until a list names it (presence events carry no actor type)
    assert row.split()[:2] == ["Bob", "bob"] and " busy " in row and "typing…" in row
    assert any("1 online" in f for f in frames)
    assert "carol" not in last.split("-" * 68)[1]  # the watcher does not list itself


def test_watch_plain_prints_a_line_per_event(
    broker: EmbeddedBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    def bob_comes_and_goes() -> None:
        with connected(broker.url, TOKENS["bob"]) as bob:
            bob.set_presence({"username": "Bob"})  # project level
            bob.set_presence({"username": "Bob", "status": "away"})
            wait_until(lambda: getattr(bob.get_presence("bob"), "presence", {}).get("status"))

    timer = threading.Timer(0.5, bob_comes_and_goes)
    timer.start()
    try:
        args = ["presence", "watch", "--plain", "--duration", "2", "--url", broker.url]
        code = main([*args, "--token", TOKENS["carol"]])
    finally:
        timer.join(10)
    out = capsys.readouterr().out
    assert code == 0
    assert "watching the project on" in out
    assert '+ Bob joined {"username": "Bob"}' in out
    assert '~ Bob updated {"status": "away", "username": "Bob"}' in out
    assert "- Bob left" in out


def test_watch_is_invisible_by_default_and_polls_the_rooms_list(broker: EmbeddedBroker) -> None:
    proc = spawn(
        "presence",
        "watch",
        "--room",
        "general",
        "--plain",
        "--interval",
        "0.2",
        "--url",
        broker.url,
        "--token",
        TOKENS["carol"],
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"watching room 'general' on {broker.url} invisibly as carol" in first, first
        with connected(broker.url, TOKENS["bob"]) as bob:
            bob.set_presence({"username": "Bob"}, room="general")
            assert "+ Bob joined" in proc.stdout.readline()
            bob.set_presence({"username": "Bob", "status": "away"}, room="general")
            assert "~ Bob updated" in proc.stdout.readline()
            # the watcher is nowhere: not in bob's cache, not in the server's list
            assert [a.actor_token_id for a in bob.fetch_presence("general")] == ["bob"]
            assert bob.get_presence("carol", "general") is None
        assert "- Bob left" in proc.stdout.readline()
    finally:
        proc.kill()
        proc.communicate()


def test_bad_token_is_one_line_and_exit_1(broker: EmbeddedBroker) -> None:
    for verb in (["list"], ["watch", "--duration", "1"], ["set", "a=1"]):
        line = one_line_error(
            nolag("presence", *verb, "--url", broker.url, "--token", "not-a-token"), 1
        )
        assert (
            line
            == f"nolag presence {verb[0]}: error: token refused by {broker.url} (access_denied)"
        )


def test_unreachable_server_is_one_line_naming_the_url_once_and_exit_1() -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    line = one_line_error(nolag("presence", "list", "--url", url, "--token", "t"), 1)
    assert line.startswith(f"nolag presence list: error: cannot connect to {url}: ")
    assert line.count(url) == 1 and line.count("cannot") == 1, line  # said once
    assert line.endswith(
        "check the URL (--url or NOLAG_URL) and that a NoLag server is running there"
    )


def test_a_room_the_token_may_not_use_is_one_line_and_exit_1(broker: EmbeddedBroker) -> None:
    base = ["--url", broker.url, "--token", TOKENS["erin"], "--room", "random", "--timeout", "3"]
    line = one_line_error(nolag("presence", "list", *base), 1)
    assert line.startswith("nolag presence list: error: not allowed: ")
    line = one_line_error(nolag("presence", "set", *base, "a=1"), 1)
    assert line.startswith("nolag presence set: error: not allowed: ")
    line = one_line_error(nolag("presence", "watch", *base, "--plain", "--duration", "5"), 1)
    assert line.startswith("nolag presence watch: error: not allowed: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["presence", "list"], "no token: give --token or set NOLAG_TOKEN"),
        (["presence", "set", "--token", "t", "novalue"], "expected KEY=VALUE, got 'novalue'"),
        (["presence", "list", "--token", "t", "--url", "http://x/ws"], "must start with ws://"),
        (["presence", "list", "--timeout", "0"], "'0' must be > 0"),
        (["presence"], "give a verb: list, watch or set"),
        (["presence", "shout"], "invalid choice: 'shout'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    assert message in one_line_error(nolag(*args), 2)


def test_parse_assignments_reads_json_values_or_strings() -> None:
    assert parse_assignments(["a=1", "b=true", "c=null", "d=x y", "e=[1,2]", 'f="3"', "g="]) == {
        "a": 1,
        "b": True,
        "c": None,
        "d": "x y",
        "e": [1, 2],
        "f": "3",
        "g": "",
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_assignments(["=1"])


def test_ctrl_c_ends_set_with_a_newline_on_a_terminal(broker: EmbeddedBroker) -> None:
    # a pseudo-terminal as stdout: the shell's prompt must not land after the echoed "^C"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nolag", "presence", "set", "--url", broker.url, "a=1"],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
        env={**ENV, "NOLAG_TOKEN": TOKENS["carol"]},
    )
    os.close(slave)
    received = b""
    try:
        while b"Ctrl-C to leave" not in received:
            received += os.read(master, 4096)  # bounded by the test's timeout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        with contextlib.suppress(OSError):  # EIO once the child closed the terminal
            while chunk := os.read(master, 4096):
                received += chunk
    finally:
        proc.kill()
        proc.communicate()
        os.close(master)
    assert received.endswith(b"Ctrl-C to leave\r\n\r\n"), received


def test_doctor_and_version_say_where_nolag_comes_from(tmp_path: Path) -> None:
    import nolag

    # where a process started like the CLI imports nolag from: the installed package,
    # which is this checkout only in an editable install (tox installs a built one)
    where = subprocess.run(
        [sys.executable, "-c", "import nolag; print(nolag.__file__)"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=ENV,
    )
    here = str(Path(where.stdout.strip()).resolve())
    result = nolag_cli_in(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"nolag-sync {nolag.__version__} (import nolag: {here})"
    result = nolag_cli_in(tmp_path, "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"import nolag:  {here}" in result.stdout
    assert "ok: no other distribution provides the package 'nolag'" in result.stdout


def fake_official_sdk(site_dir: Path) -> Path:
    """Installed-package metadata of the official SDK, written by hand (no network needed).

    Only the .dist-info (METADATA, RECORD, top_level.txt), as pip writes it; the package
    files themselves are left out so that this process keeps importing this nolag.
    """
    info = site_dir / "nolag-2.6.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nolag\nVersion: 2.6.0\n")
    (info / "RECORD").write_text(
        "nolag/__init__.py,,\nnolag/client.py,,\nnolag-2.6.0.dist-info/METADATA,,\n"
    )
    (info / "top_level.txt").write_text("nolag\n")
    return info


def nolag_cli_in(cwd: Path, *args: str, pythonpath: str = "") -> subprocess.CompletedProcess[str]:
    env = {**ENV, "PYTHONPATH": pythonpath} if pythonpath else ENV
    return subprocess.run(
        [sys.executable, "-m", "nolag", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env=env,
    )


def test_doctor_warns_when_another_distribution_provides_nolag(tmp_path: Path) -> None:
    from nolag.doctor import diagnose

    site_dir = tmp_path / "site"
    fake_official_sdk(site_dir)
    diagnosis = diagnose(path=[str(site_dir), *sys.path])
    assert [(o.name, o.version, o.location) for o in diagnosis.others] == [
        ("nolag", "2.6.0", str(site_dir.resolve()))
    ]
    assert not diagnosis.ok and [o.name for o in diagnosis.ours] == ["nolag-sync"]

    result = nolag_cli_in(tmp_path, "doctor", pythonpath=str(site_dir))
    assert result.returncode == 1, result.stdout + result.stderr
    warning = next(line for line in result.stdout.splitlines() if line.startswith("warning:"))
    assert f"nolag 2.6.0 (in {site_dir.resolve()}) also installs the package 'nolag'" in warning
    assert "pip uninstall nolag" in warning
    result = nolag_cli_in(tmp_path, "--version", pythonpath=str(site_dir))
    assert result.returncode == 0
    assert result.stdout.splitlines()[1].startswith("warning: the distribution nolag 2.6.0")
    assert result.stdout.splitlines()[-1] == "run 'nolag doctor' for details"
