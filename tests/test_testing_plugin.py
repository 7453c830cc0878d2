"""The pytest plugin users get (nolag.testing): fixtures used here directly and in a user suite."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from nolag import AuthenticationError
from nolag.testing import ClientFactory, LocalBroker, start_broker, token_document, wait_until


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    eps = entry_points()
    group = eps.select(group="pytest11") if hasattr(eps, "select") else eps.get("pytest11", [])
    assert any(ep.value == "nolag.testing" for ep in group)


def test_nolag_broker_is_a_fresh_broker_with_tokens(nolag_broker: LocalBroker) -> None:
    assert nolag_broker.url.startswith("ws://127.0.0.1:") and nolag_broker.url.endswith("/ws")
    assert nolag_broker.http_url.startswith("http://127.0.0.1:")
    assert nolag_broker.broker.connection_count() == 0
    assert nolag_broker.token("alice") == "test-token-alice"
    with pytest.raises(KeyError, match="no test actor 'zed'; declared: alice, bob"):
        nolag_broker.token("zed")


def test_nolag_client_connects_actors_that_see_each_other(nolag_client: ClientFactory) -> None:
    alice = nolag_client("alice", room="general", presence={"username": "Alice"})
    bob = nolag_client("bob", room="general")
    bob.set_presence({"username": "Bob"})  # the room given to the factory is the default
    seen = wait_until(lambda: alice.get_presence("bob", "general"))
    assert seen.presence == {"username": "Bob"}
    assert {a.actor_token_id for a in bob.fetch_presence()} == {"alice", "bob"}
    assert alice.actor_type == "user" and nolag_client("server").actor_type == "server"


def test_nolag_client_can_stay_unconnected_and_refuses_unknown_tokens(
    nolag_client: ClientFactory,
) -> None:
    idle = nolag_client("carol", connect=False)
    assert not idle.connected
    with pytest.raises(AuthenticationError):
        nolag_client("not-a-test-token")


def test_start_broker_and_token_document_outside_pytest_fixtures() -> None:
    document = token_document({"ann": "user", "bot": "server"}, ["lounge"], project="p1")
    assert set(document["tokens"]) == {"test-token-ann", "test-token-bot"}
    broker = start_broker(document)
    try:
        assert broker.tokens == {"ann": "test-token-ann", "bot": "test-token-bot"}
        from nolag import NoLag

        with NoLag(broker.token("bot"), url=broker.url) as bot:
            assert bot.project_id == "p1" and bot.actor_type == "server"
            bot.set_presence({"on": True}, room="lounge")
            wait_until(lambda: bot.get_presence("bot", "lounge"))
    finally:
        broker.stop()
    with pytest.raises(AssertionError, match=r"not met within 0\.05s"):
        wait_until(lambda: False, timeout=0.05)


USER_CONFTEST = """
import pytest
from nolag.testing import token_document


@pytest.fixture
def nolag_tokens():
    return token_document({"web": "server", "ann": "user"}, rooms=["lobby"])
"""

USER_TESTS = """
import threading

from nolag.testing import wait_until


def test_my_app_sees_ann(nolag_broker, nolag_client):
    web = nolag_client("web", room="lobby", presence={"role": "web"})
    nolag_client("ann", room="lobby", presence={"name": "Ann"})
    assert wait_until(lambda: web.get_presence("ann", "lobby")).presence == {"name": "Ann"}
    assert web.actor_type == "server"
    assert set(nolag_broker.tokens) == {"web", "ann"}


def test_clients_were_disconnected_at_teardown():
    names = [t.name for t in threading.enumerate()]
    assert not [n for n in names if n.startswith(("nolag-loop", "nolag-dispatcher"))], names
"""


def test_a_user_suite_uses_the_fixtures_through_the_entry_point(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(USER_CONFTEST))
    (tmp_path / "test_user_app.py").write_text(textwrap.dedent(USER_TESTS))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_fixture_teardown_leaves_no_client_threads(nolag_client: ClientFactory) -> None:
    nolag_client("dave")
    assert any(t.name.startswith("nolag-loop") for t in threading.enumerate())


TYPED_USE = """
from typing import Optional

from nolag.models import ActorPresence
from nolag.testing import token_document, wait_until


def lookup() -> Optional[ActorPresence]:
    return None


reveal_type(wait_until(lookup))
reveal_type(wait_until(lambda: [1, 2], timeout=1.0))
reveal_type(wait_until(lambda: 2 > 1))
document = token_document({"alice": "user"})
reveal_type(document["tokens"]["test-token-alice"]["actorTokenId"])
reveal_type(document["lobbies"]["lobby-main"]["rooms"])
"""


def test_helpers_are_precisely_typed_for_a_users_type_checker(tmp_path: Path) -> None:
    # what mypy tells a user about the helpers' results: no Any
    api = pytest.importorskip("mypy.api")
    (tmp_path / "use.py").write_text(TYPED_USE)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    out, err, _ = api.run(["--strict", "--no-error-summary", *cache, str(tmp_path / "use.py")])
    revealed = [
        line.split('Revealed type is "')[1].rstrip('"').replace("builtins.", "")
        for line in out.splitlines()
        if "Revealed type is" in line
    ]
    # an ActorPresence, not Optional (mypy spells a NamedTuple "tuple[..., fallback=...]")
    assert re.fullmatch(r"(tuple\[.*fallback=)?[\w.]*ActorPresence\]?", revealed[0]), out + err
    assert revealed[1:] == [
        "list[int]",
        "bool",
        "str",
        "list[str]",
    ], out + err
