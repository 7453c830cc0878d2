"""The client end to end against the real local broker over loopback sockets."""

from __future__ import annotations

import inspect
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import TOKENS, Recorder, connected, free_port, nolag_threads, wait_until

import nolag
from nolag import (
    ActorPresence,
    AuthenticationError,
    ConnectionState,
    NoLag,
    NoLagOptions,
)
from nolag.broker import EmbeddedBroker

# issue 14: presence, lobby and reconnect paths run against both broker modes
pytestmark = pytest.mark.both_brokers

FIXTURES = Path(__file__).parent / "fixtures"


# ------------------------------------------------------------------ construction and connect


def test_options_as_kwargs_or_object_are_validated() -> None:
    a = NoLag("t", url="ws://127.0.0.1:1/ws", heartbeat_interval=5)
    b = NoLag("t", options=NoLagOptions(url="ws://127.0.0.1:1/ws", heartbeat_interval=5))
    assert a.options == b.options
    c = NoLag("t", "ws://127.0.0.1:2/ws", options=b.options)
    assert c.options.url == "ws://127.0.0.1:2/ws" and c.options.heartbeat_interval == 5
    assert c.options.derived_rest_url() == "http://127.0.0.1:2"
    assert NoLagOptions(url="wss://h.example/ws").derived_rest_url() == "https://h.example"
    with pytest.raises(TypeError, match="heartbeat_intervall"):
        NoLag("t", heartbeat_intervall=5)
    with pytest.raises(ValueError, match="heartbeat_interval"):
        NoLag("t", heartbeat_interval=0)
    with pytest.raises(ValueError, match="url"):
        NoLag("t", url="http://nope")
    with pytest.raises(ValueError, match="token"):
        NoLag("  ")
    with pytest.raises(TypeError, match="token"):
        NoLag(None)  # type: ignore[arg-type]


def test_connect_authenticates_and_exposes_identity(broker: EmbeddedBroker) -> None:
    client = NoLag(TOKENS["alice"], url=broker.url)
    events: list[str] = []
    client.on("connect", lambda: events.append("connect"))
    client.on("disconnect", lambda reason: events.append(f"disconnect:{reason}"))
    assert client.status is ConnectionState.DISCONNECTED and not client.connected
    assert client.connect(timeout=5) is client
    assert client.connected and client.status is ConnectionState.CONNECTED
    assert (client.actor_id, client.project_id, client.actor_type) == (
        "alice",
        "demo-project",
        "user",
    )
    client.disconnect()
    assert client.status is ConnectionState.DISCONNECTED
    assert events == ["connect", "disconnect:client disconnected"]
    client.disconnect()  # twice is fine


def test_bad_token_raises_closes_the_socket_and_does_not_retry(broker: EmbeddedBroker) -> None:
    client = NoLag("not-a-real-token", url=broker.url)
    with pytest.raises(AuthenticationError) as info:
        client.connect(timeout=5)
    assert info.value.reason == "access_denied"
    assert client.status is ConnectionState.DISCONNECTED
    wait_until(lambda: broker.connection_count() == 0)  # the client closed it; the broker would not
    time.sleep(0.3)
    assert broker.connection_count() == 0  # and nothing reconnects
    assert not nolag_threads()


def test_unreachable_server_raises_connection_error_within_the_timeout() -> None:
    client = NoLag("t", url=f"ws://127.0.0.1:{free_port()}/ws")
    with pytest.raises(nolag.ConnectionError) as info:
        client.connect(timeout=2)
    assert isinstance(info.value, ConnectionError)  # also the builtin
    # a server that accepts TCP but never answers the handshake
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        client = NoLag("t", url=f"ws://127.0.0.1:{port}/ws")
        started = time.monotonic()
        with pytest.raises(nolag.ConnectionError):
            client.connect(timeout=1)
        assert time.monotonic() - started < 1 + 2.0  # bounded by the timeout, not hung
    assert client.status is ConnectionState.DISCONNECTED


def test_context_manager_connects_and_disconnects(broker: EmbeddedBroker) -> None:
    with NoLag(TOKENS["alice"], url=broker.url) as client:
        assert client.connected
        assert nolag_threads()
    assert not client.connected
    assert not nolag_threads()


# ------------------------------------------------------------------ presence end to end


def test_presence_join_update_leave_between_two_clients(broker: EmbeddedBroker) -> None:
    with connected(broker.url, TOKENS["alice"]) as alice:
        seen = Recorder(alice)
        alice.set_presence({"username": "Alice", "status": "online"}, room="general")
        wait_until(lambda: alice.get_presence("alice"))
        with connected(broker.url, TOKENS["bob"]) as bob:
            bob.set_presence({"username": "Bob", "status": "online"}, room="general")
            wait_until(lambda: seen.names("bob") == ["presence:join"])
            bob.set_presence({"username": "Bob", "status": "away"}, room="general")
            wait_until(lambda: len(seen.of("bob")) == 2)
            assert seen.of("bob") == [
                ("presence:join", {"username": "Bob", "status": "online"}),
                ("presence:update", {"username": "Bob", "status": "away"}),
            ]
            bob_seen = alice.get_presence("bob")
            assert bob_seen is not None
            assert bob_seen.presence == {"username": "Bob", "status": "away"}
            assert bob_seen.room == "general"
        wait_until(lambda: seen.names("bob")[-1:] == ["presence:leave"])
        assert alice.get_presence("bob") is None
        assert [a.actor_token_id for a in alice.get_all_presence("general")] == ["alice"]
        # the join + update pair the broker sends for our own first presence is one join
        assert seen.names("alice") == ["presence:join"]
        assert seen.threads == {f"nolag-dispatcher-{alice._number}"}


def test_newcomer_learns_who_was_already_there(broker: EmbeddedBroker) -> None:
    with (
        connected(broker.url, TOKENS["alice"]) as alice,
        connected(broker.url, TOKENS["bob"]) as bob,
    ):
        alice.set_presence({"name": "A"}, room="general")
        bob.set_presence({"name": "B"}, room="general")
        wait_until(lambda: alice.get_presence("bob"))
        with connected(broker.url, TOKENS["carol"]) as carol:
            joins: list[str] = []
            carol.on("presence:join", lambda a: joins.append(a.actor_token_id))
            carol.set_presence({"name": "C"}, room="general")
            wait_until(lambda: len(carol.get_all_presence("general")) == 3)
            assert {a.actor_token_id: dict(a.presence) for a in carol.get_all_presence()} == {
                "alice": {"name": "A"},
                "bob": {"name": "B"},
                "carol": {"name": "C"},
            }
            wait_until(lambda: sorted(joins) == ["alice", "bob", "carol"])
            joined_at = carol.get_presence("alice")
            assert joined_at is not None and joined_at.joined_at is not None


@pytest.mark.local_extension(
    "project-level (roomless) presence is a local extension; Kraken ignores it"
)
def test_project_level_presence_reaches_every_socket_of_the_project(
    broker: EmbeddedBroker,
) -> None:
    with (
        connected(broker.url, TOKENS["alice"]) as alice,
        connected(broker.url, TOKENS["bob"]) as bob,
        connected(broker.url, TOKENS["mallory"]) as mallory,
    ):
        alice.set_presence({"username": "Alice"})
        wait_until(lambda: bob.get_presence("alice"))
        seen = bob.get_presence("alice")
        assert seen is not None and seen.room is None
        time.sleep(0.2)
        assert mallory.get_all_presence() == ()  # another project sees nothing


def test_snapshot_is_the_same_object_while_nothing_changes(broker: EmbeddedBroker) -> None:
    with connected(broker.url, TOKENS["alice"]) as alice:
        alice.set_presence({"n": 1}, room="general")
        wait_until(lambda: alice.get_presence("alice"))
        first = alice.get_all_presence()
        assert alice.get_all_presence() is first
        assert isinstance(first, tuple)
        actor = first[0]
        assert isinstance(actor, ActorPresence)
        with pytest.raises(TypeError):
            actor.presence["n"] = 2  # type: ignore[index]
        alice.set_presence({"n": 2}, room="general")
        wait_until(lambda: alice.get_all_presence() is not first)
        assert first[0].presence == {"n": 1}  # the old snapshot did not change under us


def test_clear_presence_makes_others_see_a_leave(broker: EmbeddedBroker) -> None:
    with (
        connected(broker.url, TOKENS["alice"]) as alice,
        connected(broker.url, TOKENS["bob"]) as bob,
    ):
        seen = Recorder(bob)
        bob.set_presence({"watching": True}, room="general")
        alice.set_presence({"name": "A"}, room="general")
        wait_until(lambda: bob.get_presence("alice"))
        alice.clear_presence()
        wait_until(lambda: seen.names("alice") == ["presence:join", "presence:leave"])
        assert bob.get_presence("alice") is None
        assert alice.connected and alice.room is None
        assert alice.get_all_presence("general") == ()  # no longer in the room, nor its cache
        assert [a.actor_token_id for a in alice.fetch_presence("general")] == ["bob"]
        alice.set_presence({"name": "A again"}, room="general")  # and back in
        wait_until(lambda: seen.names("alice")[-1:] == ["presence:join"])


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        ({"avatar": b"\x00\xff"}, TypeError, r"\['avatar'\].*bytes"),
        ({"when": object()}, TypeError, r"\['when'\].*object"),
        ({"nested": {"set": {1}}}, TypeError, r"\['nested'\]\['set'\]"),
        ("online", TypeError, "mapping"),
        ({"blob": "x" * 20_000}, ValueError, "max_presence_bytes limit of 16384"),
    ],
)
def test_bad_presence_data_is_refused_before_anything_is_sent(
    broker: EmbeddedBroker, data: Any, error: type[Exception], match: str
) -> None:
    with connected(broker.url, TOKENS["alice"]) as alice:
        sent = alice.stats.frames_sent
        with pytest.raises(error, match=match):
            alice.set_presence(data, room="general")
        assert alice.stats.frames_sent == sent
        assert alice.room is None


def test_presence_set_before_connect_is_sent_on_connect(broker: EmbeddedBroker) -> None:
    with connected(broker.url, TOKENS["bob"]) as bob:
        bob.set_presence({"b": 1}, room="general")
        alice = NoLag(TOKENS["alice"], url=broker.url)
        alice.set_presence({"early": True}, room="general")
        try:
            alice.connect(timeout=5)
            wait_until(lambda: bob.get_presence("alice"))
            assert alice.room == "general"
        finally:
            alice.disconnect()


# ------------------------------------------------------------------ callbacks and threads


def test_raising_callback_is_logged_reported_and_others_still_run(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="nolag")
    with connected(broker.url, TOKENS["alice"]) as alice:
        errors: list[Exception] = []
        after: list[str] = []

        def boom(actor: ActorPresence) -> None:
            raise RuntimeError("callback bug")

        alice.on("presence:join", boom)
        alice.on("presence:join", lambda a: after.append(a.actor_token_id))
        alice.on("error", errors.append)
        alice.set_presence({"x": 1}, room="general")
        wait_until(lambda: after == ["alice"])
        wait_until(lambda: errors)
        assert isinstance(errors[0], RuntimeError)
        assert "callback bug" in caplog.text


def test_callbacks_may_call_client_methods_including_disconnect(broker: EmbeddedBroker) -> None:
    alice = NoLag(TOKENS["alice"], url=broker.url)
    done = threading.Event()

    @alice.on("presence:join")
    def joined(actor: ActorPresence) -> None:
        alice.set_presence({"from": "callback"}, room="general")
        alice.get_all_presence()

    @alice.on("presence:update")
    def updated(actor: ActorPresence) -> None:
        alice.disconnect()
        done.set()

    alice.connect(timeout=5)
    alice.set_presence({"from": "main"}, room="general")
    assert done.wait(5)
    wait_until(lambda: not nolag_threads())
    assert not alice.connected


def test_off_removes_a_handler(broker: EmbeddedBroker) -> None:
    with connected(broker.url, TOKENS["alice"]) as alice:
        calls: list[str] = []

        def handler(actor: ActorPresence) -> None:
            calls.append(actor.actor_token_id)

        assert alice.on("presence:update", handler) is handler
        alice.off("presence:update", handler)
        alice.set_presence({"v": 1}, room="general")
        wait_until(lambda: alice.get_presence("alice"))
        alice.set_presence({"v": 2}, room="general")
        wait_until(lambda: alice.get_presence("alice").presence == {"v": 2})  # type: ignore[union-attr]
        time.sleep(0.1)
        assert calls == []
        with pytest.raises(ValueError, match="unknown event 'presence:joined'"):
            alice.on("presence:joined", handler)


def test_heartbeats_are_sent_and_echoed(broker: EmbeddedBroker) -> None:
    with connected(broker.url, TOKENS["alice"], heartbeat_interval=0.2) as alice:
        sent, received = alice.stats.frames_sent, alice.stats.frames_received
        # three heartbeats out, and their echoes back (nothing else is in flight)
        wait_until(lambda: alice.stats.frames_sent >= sent + 3, timeout=5)
        wait_until(lambda: alice.stats.frames_received >= received + 3, timeout=5)
        assert alice.connected


def test_idle_client_with_heartbeat_outlives_the_broker_idle_timeout() -> None:
    tokens = str(FIXTURES / "tokens.json")
    with (
        EmbeddedBroker(tokens_path=tokens, idle_timeout=1.0) as b,
        connected(b.url, TOKENS["alice"], heartbeat_interval=0.3) as alice,
    ):
        time.sleep(2.5)
        assert alice.connected
        assert alice.stats.reconnects == 0


def test_disconnect_leaves_no_thread_and_clears_the_cache(broker: EmbeddedBroker) -> None:
    clients = [NoLag(TOKENS[name], url=broker.url) for name in ("alice", "bob", "carol")]
    for c in clients:
        c.connect(timeout=5)
        c.set_presence({"ok": True}, room="general")
    wait_until(lambda: len(clients[0].get_all_presence("general")) == 3)
    names = nolag_threads()
    # one per client (callbacks), one loop thread (sockets and timers) for the whole process
    assert len(names) == 4, names
    assert len([n for n in names if n.startswith("nolag-loop-")]) == 1, names
    for c in clients:
        c.disconnect()
    assert not nolag_threads()
    assert clients[0].get_all_presence() == ()


def test_a_starved_reader_is_not_mistaken_for_a_dead_server(broker: EmbeddedBroker) -> None:
    """Bytes waiting in the socket prove the server alive even when our reader is behind
    (many clients in one process starve each other's threads); only silence is death."""
    with (
        connected(broker.url, TOKENS["alice"], heartbeat_interval=0.2) as alice,
        connected(broker.url, TOKENS["bob"]) as bob,
    ):
        alice.set_presence({"a": 1}, room="general")
        wait_until(lambda: alice.get_presence("alice"))
        with alice._lock:  # the loop cannot apply anything for alice: it stops reading
            for i in range(20):
                bob.set_presence({"n": i}, room="general")
                time.sleep(0.05)
            time.sleep(1.0)  # well past 2 x heartbeat + margin (0.5 s)
        wait_until(lambda: (alice.get_presence("bob") or ActorPresence("x")).presence == {"n": 19})
        assert alice.connected
        assert alice.stats.reconnects == 0


def test_presence_events_are_queued_only_for_a_listener(broker: EmbeddedBroker) -> None:
    """A client that only reads its cache hands its dispatcher nothing; a handler on a
    room context alone is enough to get that room's events, and its errors are reported."""
    with (
        connected(broker.url, TOKENS["alice"]) as alice,
        connected(broker.url, TOKENS["bob"]) as bob,
    ):
        queued: list[Any] = []
        emit_many = bob._dispatcher.emit_many

        def spy(items: list[Any]) -> None:  # a spy on the real call, which still runs
            queued.extend(items)
            emit_many(items)

        bob._dispatcher.emit_many = spy  # type: ignore[method-assign]
        bob.set_presence({"n": 0}, room="general")
        alice.set_presence({"n": 1}, room="general")
        wait_until(lambda: bob.get_presence("alice", "general"))
        alice.set_presence({"n": 2}, room="general")
        wait_until(lambda: bob.get_presence("alice", "general").presence == {"n": 2})  # type: ignore[union-attr]
        assert queued == []
        assert bob.stats.events_emitted >= 2  # the cache did change

        updates: list[Any] = []
        errors: list[BaseException] = []
        bob.on("error", errors.append)
        general = bob.set_room("general")

        def on_update(actor: ActorPresence) -> None:
            updates.append(actor.presence["n"])
            raise RuntimeError("room handler failed")

        general.on("presence:update", on_update)
        alice.set_presence({"n": 3}, room="general")
        wait_until(lambda: updates == [3] and len(errors) == 1)
        assert isinstance(errors[0], RuntimeError)
        assert [e.name for e in queued] == ["presence:update"]


def test_the_constructor_takes_every_option_by_name_and_names_a_misspelt_one() -> None:
    params = inspect.signature(NoLag).parameters
    options = [name for name in NoLagOptions.field_names() if name != "url"]
    assert all(params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in options)
    with pytest.raises(
        TypeError, match="unknown option 'conect_timeout'; did you mean 'connect_timeout'"
    ):
        NoLag("t", conect_timeout=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="connect_timeout must be a number"):
        NoLag("t", connect_timeout="3")  # type: ignore[arg-type]
    base = NoLagOptions(heartbeat_interval=5.0, url="ws://example.invalid:1/ws")
    client = NoLag("t", options=base, reconnect=False)
    assert (client.options.heartbeat_interval, client.options.reconnect) == (5.0, False)
    assert client.options.url == "ws://example.invalid:1/ws"


def test_a_type_checker_sees_the_constructor_s_options(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    script = tmp_path / "use.py"
    script.write_text(
        "from nolag import NoLag\n"
        "NoLag('t', connect_timeout=3.0, default_room='general')\n"
        "NoLag('t', conect_timeout=3)\n"
        "NoLag('t', connect_timeout='3')\n"
    )
    out, _, status = api.run(
        ["--strict", "--no-error-summary", "--cache-dir", str(tmp_path / "c"), str(script)]
    )
    errors = [line for line in out.splitlines() if "error:" in line]
    assert status == 1 and len(errors) == 2, out
    assert "use.py:3:" in errors[0] and "use.py:4:" in errors[1], out


def test_debug_logs_tell_a_session_s_story_and_info_stays_quiet(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="nolag")
    with connected(broker.url, TOKENS["alice"]) as alice:
        alice.set_presence({"a": 1}, room="general")
        alice.fetch_presence(room="general", timeout=5)
    mine = [r for r in caplog.records if r.name == "nolag"]
    text = "\n".join(r.getMessage() for r in mine)
    for needle in ("opening ws://", "authenticated as 'alice'", "moves to room 'general'"):
        assert needle in text, text
    assert not [r for r in mine if r.levelno >= logging.INFO], text  # a normal session
    assert not any(r.getMessage().startswith("nolag:") for r in mine)  # no repeated prefix


def test_porting_from_the_official_sdk_once_room_id_and_connection_status(
    broker: EmbeddedBroker,
) -> None:
    assert nolag.ConnectionStatus is ConnectionState
    with (
        connected(broker.url, TOKENS["alice"]) as alice,
        connected(broker.url, TOKENS["bob"]) as bob,
    ):
        seen: list[Any] = []
        bob.once("presence:update", lambda a: seen.append(a.presence["n"]))
        dropped = bob.once("presence:update", lambda a: seen.append(("never", a)))
        bob.off("presence:update", dropped)  # off() finds a once() handler by itself
        bob.set_presence({"b": 1}, room_id="general")
        alice.set_presence({"n": 1}, room_id="general")
        wait_until(lambda: bob.get_presence("alice", "general"))
        alice.set_presence({"n": 2}, room="general")
        wait_until(lambda: bob.get_presence("alice", "general").presence == {"n": 2})  # type: ignore[union-attr]
        alice.set_presence({"n": 3}, room="general")
        wait_until(lambda: bob.get_presence("alice", "general").presence == {"n": 3})  # type: ignore[union-attr]
        bob.disconnect()  # runs what the dispatcher still holds
        assert seen in ([2], [1]) and len(seen) == 1  # once: the first update only
        assert [a.actor_token_id for a in bob.get_all_presence(room_id="general")] == []
        with pytest.raises(TypeError, match="room or room_id, not both"):
            alice.get_all_presence("general", room_id="random")
        assert {a.actor_token_id for a in alice.fetch_presence(room_id="general")} >= {"alice"}


def test_a_url_with_white_space_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match=r"url contains ' ' at position 21"):
        NoLag("t", url="ws://127.0.0.1:8080/w s")
    with pytest.raises(ValueError, match="rest_url contains"):
        NoLag("t", rest_url="http://127.0.0.1:8080\n")
