"""nolag.contrib.flask against the real local broker, driven through Flask's test client."""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import warnings
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import TOKENS, connected, wait_until

from nolag.broker import EmbeddedBroker

flask = pytest.importorskip("flask")

from nolag.contrib.flask import NoLagPresence  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "flask_app" / "app.py"


def load_sample() -> ModuleType:
    """Import samples/flask_app/app.py afresh (its extension object is module level)."""
    spec = importlib.util.spec_from_file_location("flask_sample_app", SAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_made: list[tuple[NoLagPresence, flask.Flask]] = []


@pytest.fixture(autouse=True)
def _reset_made_apps() -> Any:
    """Disconnect every app's client after the test, even one that failed half-way, so a
    failure never leaves a client thread running into the next tests."""
    yield
    while _made:
        presence, app = _made.pop()
        presence.reset(app)


def make_app(broker: EmbeddedBroker, **config: Any) -> tuple[flask.Flask, NoLagPresence]:
    app = flask.Flask(__name__)
    app.config.update(NOLAG_TOKEN=TOKENS_BACKEND, NOLAG_URL=broker.url, **config)
    presence = NoLagPresence(app)
    _made.append((presence, app))
    return app, presence


TOKENS_BACKEND = "dev-token-backend"


@pytest.fixture
def sample(broker: EmbeddedBroker) -> Any:
    """The sample app on the test broker, its presence client closed afterwards."""
    module = load_sample()
    app = module.create_app(
        {
            "NOLAG_URL": broker.url,
            "NOLAG_TOKEN": TOKENS_BACKEND,
            "NOLAG_ROOM": "general",
            "NOLAG_FETCH_TTL": 0,
        }
    )
    app.testing = True
    yield app
    module.presence.reset(app)


def test_sample_page_and_json_endpoint_show_who_is_online(
    sample: flask.Flask, broker: EmbeddedBroker
) -> None:
    web = sample.test_client()
    assert web.get("/api/online").get_json() == {"roomId": "general", "actors": [], "count": 0}
    assert "nobody yet" in web.get("/").get_data(as_text=True)
    with ExitStack() as stack:
        alice = stack.enter_context(connected(broker.url, TOKENS["alice"]))
        bob = stack.enter_context(connected(broker.url, TOKENS["bob"]))
        alice.set_presence({"username": "Alice", "status": "online"}, room="general")
        bob.set_presence({"username": "Bob", "status": "away"}, room="general")
        wait_until(lambda: web.get("/api/online").get_json()["count"] == 2)
        body = web.get("/api/online").get_json()
        assert sorted(p["actorTokenId"] for p in body["actors"]) == ["alice", "bob"]
        bob_entry = next(p for p in body["actors"] if p["actorTokenId"] == "bob")
        assert bob_entry["presence"] == {"username": "Bob", "status": "away"}
        assert bob_entry["roomId"] == "general"
        page = web.get("/").get_data(as_text=True)
        assert "2 online" in page and "<td>Alice</td>" in page and "<td>away</td>" in page
        bob.disconnect()
        wait_until(lambda: web.get("/api/online").get_json()["count"] == 1)
        assert "<td>Bob</td>" not in web.get("/").get_data(as_text=True)


def test_extension_is_registered_and_reads_config_on_first_use(broker: EmbeddedBroker) -> None:
    app = flask.Flask(__name__)
    presence = NoLagPresence()
    presence.init_app(app)
    _made.append((presence, app))
    assert app.extensions["nolag"] is presence
    app.config.update(NOLAG_TOKEN=TOKENS_BACKEND, NOLAG_URL=broker.url)  # after init_app
    with app.app_context():
        assert broker.connection_count() == 0  # nothing connects before first use
        client = presence.client
        assert client.connected and client.actor_id == "backend"
        assert presence.client is client
        assert flask.render_template_string("{{ nolag.count() }}") == "0"
        assert flask.current_app.extensions["nolag"].client is client
    presence.reset(app)
    wait_until(lambda: broker.connection_count() == 0)


def test_missing_token_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOLAG_TOKEN", raising=False)
    app = flask.Flask(__name__)
    presence = NoLagPresence(app)
    with app.app_context(), pytest.raises(ValueError, match="NOLAG_TOKEN is not set"):
        presence.online()


def test_unregistered_app_is_a_clear_error() -> None:
    presence = NoLagPresence()
    with flask.Flask(__name__).app_context(), pytest.raises(RuntimeError, match="init_app"):
        presence.online()


def test_request_threads_share_one_client_per_process(broker: EmbeddedBroker) -> None:
    app, presence = make_app(broker)
    clients: list[object] = []
    barrier = threading.Barrier(8)

    def request() -> None:
        with app.app_context():
            barrier.wait()
            clients.append(presence.client)

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(clients) == 8 and len({id(c) for c in clients}) == 1
    assert broker.connection_count() == 1
    presence.reset()


def test_announcing_app_serves_its_live_cache_from_the_first_request(
    broker: EmbeddedBroker,
) -> None:
    with connected(broker.url, TOKENS["carol"]) as carol:
        carol.set_presence({"username": "Carol"}, room="general")
        wait_until(lambda: carol.get_presence("carol", "general"))
        app, presence = make_app(
            broker, NOLAG_ROOM="general", NOLAG_PRESENCE={"username": "web", "role": "server"}
        )
        with app.app_context():
            # carol was there before the app's client existed: the warm-up waited for her
            assert [p.actor_token_id for p in presence.online()] == ["carol"]
            assert presence.client.room == "general"
            assert presence.is_online("carol") and not presence.is_online("backend")
            wait_until(lambda: carol.get_presence("backend", "general"))  # announced itself
        app.config["NOLAG_INCLUDE_SELF"] = True
        presence.reset(app)
        with app.app_context():  # its own join may come back just after the warm-up
            wait_until(
                lambda: {p.actor_token_id for p in presence.online()} == {"carol", "backend"}
            )
        presence.reset(app)


def test_two_apps_have_separate_clients(broker: EmbeddedBroker) -> None:
    presence = NoLagPresence()
    apps = []
    for token in (TOKENS_BACKEND, TOKENS["dave"]):
        app = flask.Flask(__name__)
        app.config.update(NOLAG_TOKEN=token, NOLAG_URL=broker.url)
        presence.init_app(app)
        _made.append((presence, app))
        apps.append(app)
    ids = []
    for app in apps:
        with app.app_context():
            ids.append(presence.client.actor_id)
    assert ids == ["backend", "dave"]
    for app in apps:
        presence.reset(app)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_worker_builds_its_own_client(broker: EmbeddedBroker) -> None:
    app, presence = make_app(broker, NOLAG_ROOM="general", NOLAG_PRESENCE={"username": "web"})
    with app.app_context():
        parent_client = presence.client  # built before the fork, as with gunicorn --preload
    assert broker.connection_count() == 1
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.close(read_fd)
            with app.app_context():
                child_client = presence.client
                report = {
                    "new": child_client is not parent_client,
                    "connected": child_client.connected,
                    "online": [p.actor_token_id for p in presence.online()],
                }
                child_client.disconnect()
            os.write(write_fd, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        report = json.loads(pipe.read() or "{}")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == {"new": True, "connected": True, "online": []}
    # the parent's connection was not touched by the child: it still works
    with app.app_context():
        assert presence.client is parent_client and parent_client.connected
        with connected(broker.url, TOKENS["alice"]) as alice:
            alice.set_presence({"username": "Alice"}, room="general")
            wait_until(lambda: presence.is_online("alice"))
    presence.reset(app)


def test_presence_without_a_room_is_announced_at_project_level(broker: EmbeddedBroker) -> None:
    with connected(broker.url, TOKENS["alice"]) as alice:
        alice.set_presence({"username": "Alice"})  # project level
        wait_until(lambda: alice.get_presence("alice"))
        app, presence = make_app(broker, NOLAG_PRESENCE={"username": "web"})
        with app.app_context():
            assert [p.actor_token_id for p in presence.online()] == ["alice"]  # warmed up
            assert presence.client.room is None
            wait_until(lambda: alice.get_presence("backend"))  # the app announced itself
        presence.reset(app)
