"""nolag.contrib.django and samples/django_app against the real local broker (pytest-django).

Django is configured here, with settings.configure(), and nowhere else: the rest of the
suite runs as if Django were not installed. Each test points settings.NOLAG at its own
broker through pytest-django's `settings` fixture; the change disconnects the client.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import urllib.request
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from helpers import TOKENS, connected, free_port, wait_until

from nolag.broker import EmbeddedBroker

django = pytest.importorskip("django")
pytest.importorskip("pytest_django")

from django.conf import settings as django_settings  # noqa: E402

if not django_settings.configured:
    import django_settings as test_settings

    django_settings.configure(
        **{name: getattr(test_settings, name) for name in dir(test_settings) if name.isupper()}
    )
    django.setup()

from django.core.management import CommandError, call_command  # noqa: E402
from django.template import Context, Template  # noqa: E402

import nolag.contrib.django as presence  # noqa: E402
from nolag.contrib.django.apps import check_settings  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "django_app"
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("NOLAG_", "DJANGO_"))}


@pytest.fixture
def nolag_settings(settings: Any, broker: EmbeddedBroker) -> Any:
    """settings.NOLAG on the test broker; restoring it at teardown disconnects the client."""
    settings.NOLAG = {
        "TOKEN": "dev-token-backend",
        "URL": broker.url,
        "ROOM": "general",
        "FETCH_TTL": 0,
    }
    yield settings
    presence.reset()


def test_sample_page_and_json_show_who_is_online(
    client: Any, nolag_settings: Any, broker: EmbeddedBroker
) -> None:
    assert broker.connection_count() == 0  # nothing connected at startup
    assert client.get("/api/online").json() == {"roomId": "general", "actors": [], "count": 0}
    assert broker.connection_count() == 1  # the first request did
    with ExitStack() as stack:
        alice = stack.enter_context(connected(broker.url, TOKENS["alice"]))
        bob = stack.enter_context(connected(broker.url, TOKENS["bob"]))
        alice.set_presence({"username": "Alice", "status": "online"}, room="general")
        bob.set_presence({"username": "Bob", "status": "away"}, room="random")
        wait_until(lambda: client.get("/api/online").json()["count"] == 1)
        page = client.get("/").content.decode()
        assert "1 online" in page and "<td>Alice</td>" in page and "<td>online</td>" in page
        assert "1 in random" in page  # {% nolag_count "random" %}
        body = client.get("/api/online?room=random").json()
        assert body["roomId"] == "random" and body["count"] == 1
        assert [p["actorTokenId"] for p in body["actors"]] == ["bob"]
        alice.disconnect()
        wait_until(lambda: client.get("/api/online").json()["count"] == 0)
        assert "nobody yet" in client.get("/").content.decode()
    wait_until(lambda: broker.connection_count() == 1)  # one client, shared by every request


def test_template_tags_and_filters(nolag_settings: Any, broker: EmbeddedBroker) -> None:
    with connected(broker.url, TOKENS["carol"]) as carol:
        carol.set_presence({"username": "Carol"}, room="general")
        wait_until(lambda: presence.count() == 1)
        html = Template(
            "{% load nolag %}{% nolag_online as people %}{% nolag_count 'general' as n %}"
            "{% for p in people %}{{ p|nolag_name }}:{{ p|nolag_since|date:'Y' }}{% endfor %}"
            "/{{ n }}"
        ).render(Context({}))
        assert html.startswith("Carol:20") and html.endswith("/1")
        assert presence.is_online("carol") and not presence.is_online("alice")


def test_a_settings_change_reconnects_with_the_new_settings(
    nolag_settings: Any, broker: EmbeddedBroker
) -> None:
    first = presence.get_client()
    assert first.actor_id == "backend" and presence.get_client() is first
    nolag_settings.NOLAG = {**nolag_settings.NOLAG, "TOKEN": TOKENS["dave"]}
    assert not first.connected  # the change disconnected it
    assert presence.get_client().actor_id == "dave"


def test_the_settings_check_reports_a_missing_token(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOLAG_TOKEN", raising=False)
    settings.NOLAG = {"URL": "ws://127.0.0.1:9/ws"}
    [error] = check_settings()
    assert error.id == "nolag.E001" and "no TOKEN given" in error.msg
    # what the README's settings give when the variable is unset or empty:
    # "TOKEN": os.environ.get("NOLAG_TOKEN")
    for unset in (None, ""):
        settings.NOLAG = {"TOKEN": unset, "URL": "ws://127.0.0.1:9/ws"}
        [error] = check_settings()
        assert error.id == "nolag.E001"
        assert error.msg == "settings.NOLAG: no TOKEN given and NOLAG_TOKEN is not set"
    settings.NOLAG = {"TOKEN": "t", "ROOMS": "typo"}
    [error] = check_settings()
    assert "unknown key(s) ROOMS" in error.msg
    settings.NOLAG = {"TOKEN": "t"}
    assert check_settings() == []


def test_management_command_lists_and_watches(nolag_settings: Any, broker: EmbeddedBroker) -> None:
    with connected(broker.url, TOKENS["alice"]) as alice:
        alice.set_presence({"username": "Alice", "status": "online"}, room="general")
        wait_until(lambda: alice.get_presence("alice", "general"))
        out = io.StringIO()
        call_command("nolag_presence", "list", stdout=out)
        assert "Alice" in out.getvalue() and "1 online in room 'general'" in out.getvalue()
        out = io.StringIO()
        call_command("nolag_presence", "list", "--json", "--room", "random", stdout=out)
        assert json.loads(out.getvalue()) == {"roomId": "random", "actors": [], "count": 0}
        out = io.StringIO()
        call_command("nolag_presence", "watch", "--plain", "--duration", "0.5", stdout=out)
        assert "watching room 'general'" in out.getvalue()
        assert "+ Alice joined" in out.getvalue()  # from the room's list: the watcher is invisible
        assert alice.get_presence("backend", "general") is None


def test_management_command_errors_are_command_errors(
    nolag_settings: Any, broker: EmbeddedBroker
) -> None:
    nolag_settings.NOLAG = {**nolag_settings.NOLAG, "TOKEN": "not-a-token"}
    with pytest.raises(CommandError, match="token refused"):
        call_command("nolag_presence", "list", stdout=io.StringIO())
    result = subprocess.run(
        [sys.executable, str(SAMPLE / "manage.py"), "nolag_presence", "list"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**ENV, "NOLAG_URL": broker.url, "NOLAG_TOKEN": "not-a-token"},
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"CommandError: token refused by {broker.url} (access_denied)"
    ]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_worker_builds_its_own_client(nolag_settings: Any) -> None:
    parent = presence.get_client()
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.close(read_fd)
            child = presence.get_client()
            report = {"new": child is not parent, "connected": child.connected}
            child.disconnect()
            os.write(write_fd, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        report = json.loads(pipe.read() or "{}")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == {"new": True, "connected": True}
    assert presence.get_client() is parent and parent.connected


def test_runserver_with_its_autoreloader_connects_one_client(broker: EmbeddedBroker) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(SAMPLE / "manage.py"), "runserver", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**ENV, "NOLAG_URL": broker.url, "NOLAG_TOKEN": TOKENS["erin"]},
        start_new_session=True,  # the autoreloader's child is in the group: stop both
    )
    try:

        def get(path: str) -> Any:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return json.loads(r.read())
            except OSError:
                return None

        with connected(broker.url, TOKENS["alice"]) as alice:
            alice.set_presence({"username": "Alice"}, room="general")
            wait_until(lambda: get("/api/online"), timeout=30)
            for _ in range(3):
                assert [p["actorTokenId"] for p in get("/api/online")["actors"]] == ["alice"]
            # alice and one client of the serving process: the reloader's parent has none
            assert broker.connection_count() == 2
            assert server.poll() is None
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.communicate()
