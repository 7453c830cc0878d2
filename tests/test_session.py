"""The pure Session, driven without sockets: frames, intents and clock ticks in; effects out.

Every time here is a number we pass in, so these tests are exact and instant; what the
shell (nolag.client) does with the effects is covered by the socket tests.
"""

from __future__ import annotations

import inspect
import random
from typing import Any, Optional

import msgpack
import pytest

from nolag.errors import ConnectionClosedError, ConnectionError, ForbiddenError, NoLagError
from nolag.events import Lifecycle, LobbyEvent
from nolag.models import ActorPresence, ConnectionState, NoLagOptions, actor_presence
from nolag.presence import JOIN, LEAVE, PublicEvent, public_event
from nolag.protocol import AuthOk, PresenceEvent, PresenceList, presence_event
from nolag.session import STABLE_AFTER, TRANSITIONS, Effects, Session, State


def pack(frame: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(frame, use_bin_type=True)
    return packed


def sent(fx: Effects) -> list[Any]:
    """The frames a call asked to send, decoded (heartbeats as None)."""
    return [msgpack.unpackb(f, raw=False) if f else None for f in fx.frames]


def auth(actor: str = "me") -> AuthOk:
    return AuthOk(actor_token_id=actor, project_id="p", actor_type="user", protocol_version=2)


def event(kind: str, actor: str, data: Optional[dict[str, Any]] = None) -> bytes:
    body: dict[str, Any] = {"actor_token_id": actor}
    if kind != "leave":
        body["presence"] = data or {}
    return pack({"type": "presence", "event": kind, "data": body})


def listing(room: Optional[str], *actors: str) -> bytes:
    entries = [{"actorTokenId": a, "presence": {"n": a}, "joinedAt": 1} for a in actors]
    frame: dict[str, Any] = {"type": "presenceList", "data": entries}
    if room is not None:
        frame["roomId"] = room
    return pack(frame)


def connected(**options: Any) -> Session:
    """A session whose connection just authenticated, at time 0 (no rate limit, no sync)."""
    options.setdefault("max_presence_rate", None)
    options.setdefault("sync_on_join", False)
    session = Session(NoLagOptions(**options), "tok", rng=random.Random(7))
    session.begin("connect")
    session.opened(auth(), 0.0)
    return session


def public(fx: Effects) -> list[tuple[str, Optional[str], str]]:
    return [
        (e.name, e.room, e.actor.actor_token_id) for e in fx.events if isinstance(e, PublicEvent)
    ]


def lifecycle(fx: Effects) -> list[str]:
    return [e.name for e in fx.events if isinstance(e, Lifecycle)]


# ---------------------------------------------------------------- the state machine


def test_every_state_and_event_follows_the_transition_table() -> None:
    events = {event for _, event in TRANSITIONS}
    for state in State:
        for name in events:
            session = Session(NoLagOptions(), "tok")
            session.state = state
            if (state, name) in TRANSITIONS:
                assert session.can(name)
                session._go(name)
                assert session.state is TRANSITIONS[(state, name)]
            else:
                assert not session.can(name)
                with pytest.raises(NoLagError, match=f"{name} while {state.value}"):
                    session._go(name)


def test_the_public_state_hides_the_inner_steps() -> None:
    assert State.BACKOFF.public is ConnectionState.RECONNECTING
    assert State.REOPENING.public is ConnectionState.RECONNECTING
    assert State.CONNECTING.public is ConnectionState.CONNECTING


def test_connect_sends_auth_and_a_second_connect_is_refused() -> None:
    session = Session(NoLagOptions(protocol_version=2), "tok")
    frame = msgpack.unpackb(session.begin("connect"), raw=False)
    assert frame == {"type": "auth", "token": "tok", "protocolVersion": 2}
    with pytest.raises(NoLagError, match="connect while connecting"):
        session.begin("connect")
    fx = session.opened(auth(), 0.0)
    assert session.connected and lifecycle(fx) == ["connect"]


# ---------------------------------------------------------------- requests


def test_a_late_reply_is_consumed_by_the_request_that_timed_out() -> None:
    """Kind 4: a fetch times out, people change, the next fetch must get the new list."""
    session = connected()
    first = Effects()
    rid1 = session.fetch("general", first)
    session.abandon(rid1)  # the caller gave up
    second = Effects()
    rid2 = session.fetch("general", second)
    late = session.receive([listing("general", "old")], 1.0, listening=True)
    assert late.replies == []  # the abandoned request ate it; nobody is answered
    fresh = session.receive([listing("general", "new")], 1.1, listening=True)
    [(rid, result, error)] = fresh.replies
    assert rid == rid2 and error is None
    assert isinstance(result, PresenceList)
    assert [e.actor_token_id for e in result.entries] == ["new"]


def test_a_refusal_and_its_empty_list_are_one_answer() -> None:
    """Kind 4: two fetches of a forbidden room both fail; the empty list after an error
    does not answer the second one."""
    session = connected()
    fx = Effects()
    rid1 = session.fetch("secret", fx)
    rid2 = session.fetch("secret", fx)
    refusal = pack({"type": "error", "error": "not_authorized", "roomId": "secret"})
    empty = listing("secret")
    out = session.receive([refusal, empty, refusal, empty], 1.0, listening=True)
    assert [(rid, type(error)) for rid, _, error in out.replies] == [
        (rid1, ForbiddenError),
        (rid2, ForbiddenError),
    ]


def test_an_empty_list_that_follows_nothing_still_answers() -> None:
    session = connected()
    fx = Effects()
    rid = session.fetch("quiet", fx)
    out = session.receive([listing("quiet")], 1.0, listening=True)
    assert out.replies == [(rid, out.replies[0][1], None)]


def test_requests_fail_when_the_connection_is_lost() -> None:
    session = connected(reconnect=True)
    fx = Effects()
    rid = session.fetch(None, fx)
    out = session.lost(ConnectionClosedError("gone"), 1.0)
    [(got, result, error)] = out.replies
    assert got == rid and result is None and isinstance(error, ConnectionClosedError)


# ---------------------------------------------------------------- own presence


def test_a_burst_is_coalesced_and_disconnect_sends_the_last_value() -> None:
    """Kind 3: the last presence set goes out before a clean disconnect, past the budget."""
    session = connected(max_presence_rate=2.0)
    frames: list[Any] = []
    for n in range(31):
        frames += sent(session.set_presence({"n": n}, "general", 0.01 * n))
    assert len(frames) < 31  # the budget held most of them back
    final = session.disconnect(0.4)
    assert sent(final)[-1] == {"type": "presence", "roomId": "general", "data": {"n": 30}}
    assert session.status is ConnectionState.DISCONNECTED


def test_a_coalesced_value_is_flushed_when_the_budget_allows() -> None:
    session = connected(max_presence_rate=1.0)
    session.set_presence({"n": 1}, "general", 0.0)
    assert sent(session.set_presence({"n": 2}, "general", 0.1)) == []
    deadline = session.next_deadline()
    assert deadline is not None and deadline <= 1.0
    assert {"type": "presence", "roomId": "general", "data": {"n": 2}} in sent(session.tick(1.0))


def test_presence_set_before_connecting_is_sent_on_connect() -> None:
    session = Session(NoLagOptions(max_presence_rate=None, sync_on_join=False), "tok")
    session.set_presence({"a": 1}, "general", 0.0)
    session.begin("connect")
    fx = session.opened(auth(), 1.0)
    assert {"type": "presence", "roomId": "general", "data": {"a": 1}} in sent(fx)


def test_clear_presence_asks_for_a_fresh_connection_only_when_something_was_sent() -> None:
    session = connected()
    assert session.clear_presence(None) is False
    session.set_presence({"a": 1}, "general", 0.0)
    assert session.clear_presence("general") is True
    assert session.own_presence("general") is None


def test_events_without_a_room_belong_to_our_socket_room() -> None:
    session = connected()
    session.set_presence({"a": 1}, "general", 0.0)
    out = session.receive([event("join", "bob", {"b": 1})], 0.1, listening=True)
    assert public(out) == [(JOIN, "general", "bob")]
    moved = session.set_presence({"a": 1}, "random", 0.2)
    assert public(moved) == [(LEAVE, "general", "bob")]  # we left: its members leave


def test_a_late_broadcast_guess_is_confirmed_by_one_more_list() -> None:
    """Kraken's events carry no connection id: a join within join_grace (1 s) of a list
    that already showed that socket is taken for its late broadcast, and a genuinely new
    tab looks the same. The room gets one more list once the window is over; a join
    outside any window is no guess and asks for nothing."""
    session = connected()
    session.set_presence({"a": 1}, "general", 0.0)
    fx = Effects()
    session.refresh("general", fx)
    assert sent(fx) == [{"type": "getPresence", "roomId": "general"}]
    tabs = [{"actorTokenId": "carol", "presence": {"t": 1}, "joinedAt": 1}] * 2
    session.receive([pack({"type": "presenceList", "roomId": "general", "data": tabs})], 0.1, True)
    assert session.store.get("carol", "general").connections == 2  # type: ignore[union-attr]
    session.receive([event("join", "carol", {"t": 1})], 0.5, True)  # late, or a third tab?
    assert session.store.get("carol", "general").connections == 2  # type: ignore[union-attr]
    assert session.next_deadline() == 1.5
    asked = sent(session.tick(1.5))
    assert asked.count({"type": "getPresence", "roomId": "general"}) == 1
    assert session.next_deadline() == 30.0  # the heartbeat: nothing more to confirm
    session.receive([event("join", "carol", {"t": 1})], 5.0, True)  # no window: counted
    assert session.store.get("carol", "general").connections == 3  # type: ignore[union-attr]
    assert session.next_deadline() == 30.0


# ---------------------------------------------------------------- time


def test_a_silent_server_is_probed_before_it_is_dropped() -> None:
    """Two silent intervals send a probe; min(5, interval / 2) more without an answer drop.
    The total is the documented bound, 2 x interval + min(5, interval / 2)."""
    session = connected(heartbeat_interval=1.0)
    assert sent(session.tick(1.0)) == [None]  # the heartbeat
    assert session.next_deadline() == 2.0
    probe = session.tick(2.0)
    assert sent(probe) == [None] and probe.drop is None
    assert session.next_deadline() == 2.5  # the probe's answer is due
    session.received(2.25)  # the echo
    assert session.tick(2.5).drop is None
    assert sent(session.tick(3.25)) == [None]  # the regular heartbeat
    probe = session.tick(4.25)  # silent again for two intervals: probe
    assert sent(probe) == [None] and probe.drop is None
    assert session.tick(4.5).drop is None
    dropped = session.tick(4.75)
    assert dropped.drop is not None and "no frame from the server for 2.5s" in dropped.drop
    assert session.next_deadline() is None  # nothing more until the loss is reported


def test_a_stalled_process_probes_before_it_drops() -> None:
    """A loop that slept far past every deadline sends its probe first: no false drop."""
    session = connected(heartbeat_interval=1.0)
    fx = session.tick(30.0)  # woke after a 30 s stall
    assert sent(fx) == [None] and fx.drop is None
    session.received(30.05)
    assert session.tick(30.5).drop is None and session.tick(31.0).drop is None


def test_lobbies_are_kept_alive_before_the_broker_forgets_them() -> None:
    session = connected(lobby_refresh_interval=240.0)
    fx = Effects()
    session.lobby_subscribe("main", fx)
    assert sent(session.tick(239.0)) in ([], [None])
    refresh = [f for f in sent(session.tick(240.0)) if f]
    assert {"type": "lobbySubscribe", "lobbyId": "main"} in refresh
    assert {"type": "getLobbyPresence", "lobbyId": "main"} in refresh


# ---------------------------------------------------------------- reconnects and the end


def test_backoff_only_resets_after_a_connection_stayed_up() -> None:
    """Kind 5: a connection that drops right after opening does not restart at attempt 1."""
    session = connected(reconnect_initial_delay=1.0, reconnect_factor=2.0)
    attempts = []
    now = 0.0
    for _ in range(4):
        fx = session.lost(ConnectionClosedError("gone"), now + 1.0)
        attempts.append([e.args[0] for e in fx.events if isinstance(e, Lifecycle)][-1])
        session.retry()
        now += 2.0
        session.opened(auth(), now)
    assert attempts == [1, 2, 3, 4]
    fx = session.lost(ConnectionClosedError("gone"), now + STABLE_AFTER)
    reconnecting = [e for e in fx.events if isinstance(e, Lifecycle) and e.name == "reconnecting"]
    assert reconnecting[0].args[0] == 1


def test_a_session_lost_for_good_empties_the_cache_with_leave_events() -> None:
    """Kind 3: reconnect=False; nobody may stay shown online."""
    session = connected(reconnect=False)
    session.set_presence({"a": 1}, "general", 0.0)
    session.receive([event("join", "bob"), event("join", "me")], 0.1, listening=True)
    fx = Effects()
    session.lobby_subscribe("main", fx)
    session.receive(
        [
            pack(
                {
                    "type": "lobbyPresence",
                    "event": "join",
                    "lobbyId": "main",
                    "roomId": "r",
                    "actorId": "carol",
                    "data": {},
                }
            )
        ],
        0.2,
        listening=True,
    )
    out = session.lost(ConnectionClosedError("gone"), 1.0)
    assert out.ended and session.status is ConnectionState.DISCONNECTED
    assert sorted(public(out)) == [(LEAVE, "general", "bob"), (LEAVE, "general", "me")]
    assert [e.event.actor.actor_token_id for e in out.events if isinstance(e, LobbyEvent)] == [
        "carol"
    ]
    assert session.snapshot(None) == ()
    assert lifecycle(out)[0] == "disconnect"


def test_attempts_run_out_and_the_session_ends_with_an_error() -> None:
    session = connected(reconnect_max_attempts=1)
    fx = session.lost(ConnectionClosedError("gone"), 1.0)
    assert fx.reconnect_in is not None
    session.retry()
    out = session.open_failed(ConnectionError("refused"), 2.0)
    assert out.ended and out.reconnect_in is None
    errors = [e.args[0] for e in out.events if isinstance(e, Lifecycle) and e.name == "error"]
    assert "gave up reconnecting after 1 attempts" in str(errors[0])


def test_an_oversize_list_is_reported_once_and_not_asked_for_again() -> None:
    """Kind 5: a list over the receive cap must not cause a reconnect storm."""
    session = connected(sync_on_join=True)
    session.set_presence({"a": 1}, "big", 0.0)
    too_big = ConnectionClosedError("message too big", code=1009)
    fx = session.lost(too_big, 1.0)
    errors = [e for e in fx.events if isinstance(e, Lifecycle) and e.name == "error"]
    assert len(errors) == 1 and "larger than max_message_bytes" in str(errors[0].args[0])
    session.retry()
    reopened = session.opened(auth(), 2.0)
    asked = [f for f in sent(reopened) if f and f.get("type") == "getPresence"]
    assert {"type": "getPresence", "roomId": "big"} not in asked


# ---------------------------------------------------------------- lobbies


def _lobby_event(lobby_id: str, room: str, actor: str) -> bytes:
    return pack(
        {
            "type": "lobbyPresence",
            "event": "join",
            "lobbyId": lobby_id,
            "roomId": room,
            "actorId": actor,
            "data": {"x": 1},
        }
    )


def _lobby_snapshot(slug: str, rooms: dict[str, Any]) -> bytes:
    return pack({"type": "lobbyPresenceList", "lobbyId": slug, "presence": rooms})


def test_an_internal_lobby_id_shared_by_two_lobbies_reaches_both() -> None:
    """Kraken names a lobby by an internal id; with two lobbies listing the room, both get it."""
    session = connected()
    fx = Effects()
    session.lobby_subscribe("one", fx)
    session.lobby_subscribe("two", fx)
    for slug in ("one", "two"):
        session.receive(
            [pack({"type": "lobbySubscribed", "lobbyId": slug, "presence": {}})], 0.1, True
        )
        session.receive([_lobby_snapshot(slug, {"shared": {}})], 0.2, True)
    out = session.receive([_lobby_event("lobby-internal", "shared", "ann")], 0.3, True)
    assert sorted(e.slug for e in out.events if isinstance(e, LobbyEvent)) == ["one", "two"]


def test_a_lobby_snapshot_without_rooms_is_unknown_not_empty() -> None:
    """Kraken answers {} once it forgot the lobby's rooms: nobody leaves for that."""
    session = connected()
    fx = Effects()
    session.lobby_subscribe("main", fx)
    session.receive([_lobby_snapshot("main", {"r": {"ann": {"presence": {}}}})], 0.1, True)
    out = session.receive([_lobby_snapshot("main", {})], 0.2, True)
    assert [e for e in out.events if isinstance(e, LobbyEvent)] == []
    assert session.lobbies.get("main").store.get("ann") is not None


# ---------------------------------------------------------------- the hot path's factories


@pytest.mark.parametrize(
    ("factory", "fields"),
    [
        (actor_presence, ActorPresence._fields),
        (public_event, PublicEvent._fields),
        (presence_event, PresenceEvent._fields),
    ],
)
def test_each_factory_names_every_field_in_order(factory: Any, fields: tuple[str, ...]) -> None:
    """A field added to one of these types must be added to its factory, by name."""
    params = inspect.signature(factory).parameters
    assert tuple(params) == fields
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
