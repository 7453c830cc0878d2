"""Unit tests of the broker's pure parts: registry, tokens, core, codec, limits (no sockets)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from nolag.broker import BrokerConfig, RoomAccess, TokenFileError, load_tokens
from nolag.broker.codec import BadFrame, decode_binary, decode_text, encode
from nolag.broker.core import BrokerCore, Connection
from nolag.broker.frames import REAUTH_HINT
from nolag.broker.outbox import Outbox
from nolag.broker.payload import InvalidPresence, check_presence_data
from nolag.broker.ratelimit import TokenBucket
from nolag.broker.rest import RestPresence, bearer_token
from nolag.broker.state import Delivery, Registry
from nolag.broker.tokens import LobbyView, parse_tokens

TOKENS = Path(__file__).parent / "fixtures" / "tokens.json"
MAIN = LobbyView("demo", "lobby-main", "main", ("general", "random"))


def frames_for(deliveries: list[Delivery], conn_id: str) -> list[Any]:
    """The frames delivered to one connection, in order."""
    return [frame for cid, frame in deliveries if cid == conn_id]


def events(deliveries: list[Delivery], conn_id: str) -> list[tuple[str, ...]]:
    """Compact (type, event, actor) view of one connection's frames."""
    out = []
    for frame in frames_for(deliveries, conn_id):
        assert isinstance(frame, dict)
        if frame["type"] == "presence":
            out.append(("presence", frame["event"], frame["data"]["actor_token_id"]))
        elif frame["type"] == "lobbyPresence":
            out.append(("lobby", frame["event"], frame["actorId"], frame["roomId"]))
        else:
            out.append((frame["type"],))
    return out


@pytest.fixture
def reg() -> Registry:
    """A registry with alice (a1), bob (b1, b2 two sockets) and mallory (m1, other project)."""
    r = Registry()
    r.add("a1", "alice", "user", "demo")
    r.add("b1", "bob", "user", "demo")
    r.add("b2", "bob", "device", "demo")
    r.add("m1", "mallory", "user", "other")
    return r


# -- registry: rooms --------------------------------------------------------------------


def test_first_presence_sends_join_then_update_to_every_member_including_sender(
    reg: Registry,
) -> None:
    reg.set_room_presence("a1", "general", {"n": 1}, now=100.0)
    out = reg.set_room_presence("b1", "general", {"n": 2}, now=101.0)
    assert events(out, "a1") == [("presence", "join", "bob"), ("presence", "update", "bob")]
    assert events(out, "b1") == [("presence", "join", "bob"), ("presence", "update", "bob")]
    assert frames_for(out, "b2") == [] and frames_for(out, "m1") == []
    join = frames_for(out, "a1")[0]
    assert join == {
        "type": "presence",
        "event": "join",
        "roomId": "general",
        "data": {
            "actor_token_id": "bob",
            "connectionId": "b1",
            "presence": {"n": 2},
            "actorType": "user",  # extensions: the socket's actor type and joinedAt
            "joinedAt": 101,
        },
    }


def test_later_presence_is_one_update_and_keeps_joined_at(reg: Registry) -> None:
    reg.set_room_presence("a1", "general", {"n": 1}, now=100.9)
    out = reg.set_room_presence("a1", "general", {"n": 2}, now=200.0)
    assert events(out, "a1") == [("presence", "update", "alice")]
    [member] = reg.room_members("demo", "general")
    assert member.joined_at == 100 and member.data == {"n": 2}
    assert frames_for(out, "a1")[0]["data"]["joinedAt"] == 100  # the update keeps it too


def test_room_switch_leaves_old_room_sender_included_then_joins_new(reg: Registry) -> None:
    reg.set_room_presence("a1", "general", {}, now=1)
    reg.set_room_presence("b1", "general", {}, now=1)
    out = reg.set_room_presence("a1", "random", {"r": 1}, now=2)
    assert events(out, "a1") == [
        ("presence", "leave", "alice"),
        ("presence", "join", "alice"),
        ("presence", "update", "alice"),
    ]
    assert events(out, "b1") == [("presence", "leave", "alice")]
    leave = frames_for(out, "b1")[0]
    assert leave["roomId"] == "general" and "presence" not in leave["data"]
    assert reg.room_of("a1") == "random"
    assert [m.conn_id for m in reg.room_members("demo", "general")] == ["b1"]


def test_remove_sends_one_leave_per_socket_to_the_remaining_members(reg: Registry) -> None:
    for conn in ("a1", "b1", "b2"):
        reg.set_room_presence(conn, "general", {"c": conn}, now=1)
    out = reg.remove("b1")
    assert events(out, "a1") == [("presence", "leave", "bob")]
    assert events(out, "b2") == [("presence", "leave", "bob")]
    assert frames_for(out, "b1") == []
    out = reg.remove("b2")
    assert events(out, "a1") == [("presence", "leave", "bob")]
    assert "b1" not in reg and len(reg) == 2
    assert reg.remove("b1") == []  # twice is harmless


def test_projects_never_share_rooms(reg: Registry) -> None:
    reg.set_room_presence("a1", "general", {}, now=1)
    out = reg.set_room_presence("m1", "general", {}, now=1)
    assert frames_for(out, "a1") == []
    assert [m.actor_id for m in reg.room_members("other", "general")] == ["mallory"]
    assert [m.actor_id for m in reg.room_members("demo", "general")] == ["alice"]


def test_actor_summary_merges_sockets(reg: Registry) -> None:
    reg.set_room_presence("b1", "general", {"d": "phone"}, now=10)
    reg.set_room_presence("b2", "general", {"d": "laptop"}, now=20)
    reg.set_room_presence("b1", "general", {"d": "phone", "s": "away"}, now=30)
    [bob] = reg.actors("demo", "general")
    assert bob.actor_id == "bob" and bob.connections == 2 and bob.joined_at == 10
    assert bob.presence == {"d": "phone", "s": "away"}  # the most recently set
    assert bob.actor_type == "user"  # of the socket that set it last


# -- registry: project level ------------------------------------------------------------


def test_project_presence_goes_to_every_socket_of_the_project(reg: Registry) -> None:
    reg.set_room_presence("b1", "general", {}, now=1)
    out = reg.set_project_presence("a1", {"p": 1}, now=5)
    for conn in ("a1", "b1", "b2"):
        assert events(out, conn) == [("presence", "join", "alice"), ("presence", "update", "alice")]
        assert frames_for(out, conn)[0]["roomId"] is None
    assert frames_for(out, "m1") == []
    out = reg.set_project_presence("a1", {"p": 2}, now=6)
    assert events(out, "b2") == [("presence", "update", "alice")]
    # room presence and project presence are independent
    assert reg.room_of("a1") is None
    out = reg.remove("a1")
    assert events(out, "b1") == [("presence", "leave", "alice")]
    assert frames_for(out, "b1")[0]["roomId"] is None
    assert reg.project_members("demo") == []


# -- registry: lobbies ------------------------------------------------------------------


def test_lobby_snapshot_lists_every_room_even_empty(reg: Registry) -> None:
    reg.set_room_presence("a1", "general", {"x": 1}, now=7)
    snap = reg.lobby_subscribe("b1", MAIN)
    assert snap == {
        "general": {"alice": {"actorTokenId": "alice", "joinedAt": 7, "presence": {"x": 1}}},
        "random": {},
    }


def test_lobby_events_follow_joins_updates_switches_and_leaves(reg: Registry) -> None:
    reg.lobby_subscribe("m1", LobbyView("other", "lobby-main", "main", ("general",)))
    reg.lobby_subscribe("b1", MAIN)
    out = reg.set_room_presence("a1", "general", {"x": 1}, now=1)
    assert events(out, "b1") == [
        ("lobby", "join", "alice", "general"),
        ("lobby", "update", "alice", "general"),
    ]
    assert frames_for(out, "m1") == []  # other project, same lobby id and slug
    out = reg.set_room_presence("a1", "random", {"x": 2}, now=2)
    assert events(out, "b1") == [
        ("lobby", "leave", "alice", "general"),
        ("lobby", "join", "alice", "random"),
        ("lobby", "update", "alice", "random"),
    ]
    leave = frames_for(out, "b1")[0]
    assert leave == {
        "type": "lobbyPresence",
        "event": "leave",
        "lobbyId": "main",
        "roomId": "general",
        "actorId": "alice",
        "data": {},
    }
    out = reg.remove("a1")
    assert events(out, "b1") == [("lobby", "leave", "alice", "random")]
    reg.lobby_unsubscribe("b1", "lobby-main")
    reg.lobby_unsubscribe("b1", "lobby-main")  # twice is harmless
    out = reg.set_room_presence("b2", "general", {}, now=3)
    assert [f for f in frames_for(out, "b1") if f["type"] == "lobbyPresence"] == []


def test_lobby_sees_one_entry_per_actor_with_several_sockets(reg: Registry) -> None:
    reg.lobby_subscribe("a1", MAIN)
    out = reg.set_room_presence("b1", "general", {"d": "phone"}, now=1)
    assert events(out, "a1") == [
        ("lobby", "join", "bob", "general"),
        ("lobby", "update", "bob", "general"),
    ]
    out = reg.set_room_presence("b2", "general", {"d": "laptop"}, now=2)
    assert events(out, "a1") == [("lobby", "update", "bob", "general")]  # no second join
    snap = reg.lobby_presence(MAIN)
    assert snap["general"]["bob"] == {
        "actorTokenId": "bob",
        "joinedAt": 1,
        "presence": {"d": "laptop"},
    }
    out = reg.remove("b2")  # the latest socket goes: the view falls back to the other one
    assert events(out, "a1") == [("lobby", "update", "bob", "general")]
    assert frames_for(out, "a1")[0]["data"] == {"d": "phone"}
    out = reg.remove("b1")
    assert events(out, "a1") == [("lobby", "leave", "bob", "general")]


def test_lobby_no_update_when_an_older_socket_leaves(reg: Registry) -> None:
    reg.lobby_subscribe("a1", MAIN)
    reg.set_room_presence("b1", "general", {"d": "phone"}, now=1)
    reg.set_room_presence("b2", "general", {"d": "laptop"}, now=2)
    out = reg.remove("b1")
    assert events(out, "a1") == []


def test_lobby_subscription_is_dropped_with_the_socket(reg: Registry) -> None:
    reg.lobby_subscribe("a1", MAIN)
    reg.remove("a1")
    out = reg.set_room_presence("b1", "general", {}, now=1)
    assert events(out, "b1") == [("presence", "join", "bob"), ("presence", "update", "bob")]
    assert all(cid == "b1" for cid, _ in out)


def test_lobby_of_another_project_is_refused(reg: Registry) -> None:
    with pytest.raises(ValueError):
        reg.lobby_subscribe("m1", MAIN)


# -- tokens -----------------------------------------------------------------------------


def test_tokens_load_and_authenticate() -> None:
    store = load_tokens(TOKENS)
    alice = store.authenticate("dev-token-alice")
    assert alice is not None
    assert (alice.actor_token_id, alice.project_id, alice.actor_type) == (
        "alice",
        "demo-project",
        "user",
    )
    assert alice.rooms == {"general", "random"} and dict(alice.lobbies) == {"main": "lobby-main"}
    assert "dev-token-alice" not in repr(alice)
    assert store.authenticate("dev-token-alicf") is None
    assert store.authenticate("") is None
    slow = store.authenticate("dev-token-slow")
    fast = store.authenticate("dev-token-fast")
    assert slow is not None and slow.rate_limit == 3.0
    assert fast is not None and fast.rate_limit == 0.0  # unlimited


def test_room_checks_use_slugs_of_the_own_project_only() -> None:
    store = load_tokens(TOKENS)
    alice, erin, mallory = (
        store.authenticate(f"dev-token-{n}") for n in ("alice", "erin", "mallory")
    )
    assert alice and erin and mallory
    assert store.check_room(alice, "general") is RoomAccess.ALLOWED
    assert store.check_room(erin, "random") is RoomAccess.FORBIDDEN
    assert store.check_room(alice, "room-general") is RoomAccess.UNKNOWN  # internal id
    assert store.check_room(alice, "nosuch") is RoomAccess.UNKNOWN
    assert store.check_room(alice, "") is RoomAccess.UNKNOWN
    assert store.check_room(mallory, "general") is RoomAccess.ALLOWED
    assert store.check_room(mallory, "random") is RoomAccess.UNKNOWN  # demo's room


def test_lobby_lookup_resolves_rooms_in_the_own_project() -> None:
    store = load_tokens(TOKENS)
    alice, erin, oscar = (store.authenticate(f"dev-token-{n}") for n in ("alice", "erin", "oscar"))
    assert alice and erin and oscar
    assert store.lobby(alice, "main") == LobbyView(
        "demo-project", "lobby-main", "main", ("general", "random")
    )
    assert store.lobby(erin, "main") is None
    assert store.lobby(alice, "nosuch") is None
    assert store.lobby(oscar, "main") == LobbyView(
        "other-project", "lobby-other", "main", ("general",)
    )


def test_allow_all_accepts_any_non_empty_token() -> None:
    store = load_tokens(None, allow_all=True)
    ident = store.authenticate("whoever")
    assert ident is not None and ident.actor_token_id == "whoever"
    assert ident.project_id == "dev" and ident.actor_type == "user" and ident.allow_all
    assert store.check_room(ident, "anything") is RoomAccess.ALLOWED
    assert store.authenticate("") is None
    with_file = load_tokens(TOKENS, allow_all=True)
    alice = with_file.authenticate("dev-token-alice")
    assert alice is not None and alice.actor_token_id == "alice"  # file tokens keep their identity
    dev = with_file.authenticate("someone")
    assert dev is not None
    view = with_file.lobby(dev, "main")
    assert view is not None and view.project_id == "dev" and view.rooms == ("general", "random")


@pytest.mark.parametrize(
    "document, message",
    [
        ([], "object"),
        ({"tokens": {"t": {"projectId": "p"}}}, "actorTokenId"),
        ({"tokens": {"t": {"actorTokenId": "a", "projectId": "p", "rateLimit": "x"}}}, "rateLimit"),
        ({"tokens": {}, "lobbies": {"l": {"rooms": []}}}, "slug"),
    ],
)
def test_bad_token_documents_are_refused(document: Any, message: str) -> None:
    with pytest.raises(TokenFileError, match=message):
        parse_tokens(document)


def test_unreadable_token_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="cannot read"):
        load_tokens(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope", encoding="utf-8")
    with pytest.raises(TokenFileError, match="not valid JSON"):
        load_tokens(bad)
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"tokens": {}}), encoding="utf-8")
    assert len(load_tokens(ok)) == 0


# -- codec and payload ------------------------------------------------------------------


def test_encode_sorts_keys_at_every_level() -> None:
    data = encode({"type": "x", "b": {"z": 1, "a": [{"y": 2, "c": 3}]}})
    pairs = msgpack.unpackb(data, object_pairs_hook=lambda p: [k for k, _ in p])
    assert pairs == ["b", "type"]
    assert msgpack.unpackb(data) == {"type": "x", "b": {"z": 1, "a": [{"y": 2, "c": 3}]}}
    assert encode({"s": "é"}) == b"\x81\xa1s\xa2\xc3\xa9"  # strings as str, never bin


@pytest.mark.parametrize(
    "payload",
    [
        bytes.fromhex("c1ff0067617262616765"),  # never-used byte
        bytes.fromhex("82a474797065a870726573656e6365"),  # truncated map
        msgpack.packb([1, 2, 3]),
        msgpack.packb("hello"),
        msgpack.packb(42),
        msgpack.packb(None),
        b"\x91" * 5000 + b"\xc0",  # too deep
    ],
)
def test_decode_binary_refuses_non_maps_and_garbage(payload: bytes) -> None:
    with pytest.raises(BadFrame):
        decode_binary(payload)


@pytest.mark.parametrize("text", ["", "{not json", "[1,2]", "42", "[" * 100000])
def test_decode_text_refuses_non_objects(text: str) -> None:
    with pytest.raises(BadFrame):
        decode_text(text)


def test_decode_text_accepts_json_objects() -> None:
    assert decode_text('{"type": "getPresence"}') == {"type": "getPresence"}


@pytest.mark.parametrize(
    "data, hint",
    [
        ("online", "must be a map"),
        (7, "must be a map"),
        (["a"], "must be a map"),
        (None, "must be a map"),
        ({"b": b"\x00\xff"}, "binary"),
        ({"b": b"abc"}, "binary"),
        ({1: "a"}, "keys must be strings"),
        ({"f": float("nan")}, "finite"),
        ({"t": msgpack.Timestamp(1)}, "Timestamp"),
        ({"e": msgpack.ExtType(1, b"x")}, "ExtType"),
    ],
)
def test_presence_data_must_be_json_like(data: Any, hint: str) -> None:
    with pytest.raises(InvalidPresence, match=hint):
        check_presence_data(data)


def test_presence_data_depth_is_bounded_and_copies_are_canonical() -> None:
    deep: Any = {}
    node = deep
    for _ in range(40):
        node["k"] = {}
        node = node["k"]
    with pytest.raises(InvalidPresence, match="nested"):
        check_presence_data(deep)
    value = {"z": [1, {"b": True, "a": None}], "a": 1.5, "u": 2**64 - 1}
    checked = check_presence_data(value)
    assert checked == value and list(checked) == ["a", "u", "z"]


# -- rate limit and outbox --------------------------------------------------------------


def test_token_bucket_allows_bursts_then_refills() -> None:
    bucket = TokenBucket(3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after(0.0) == pytest.approx(1 / 3)
    assert bucket.take(0.34)
    assert not bucket.take(0.34)
    assert bucket.full(10.0)
    assert all(TokenBucket(0, now=0).take(0) for _ in range(1000))  # 0 = unlimited


def test_outbox_is_bounded_and_drains_in_order() -> None:
    asyncio.run(_outbox_checks())


async def _outbox_checks() -> None:
    box = Outbox(max_bytes=1000, max_frames=3)
    assert box.put(b"1") and box.put(b"2") and box.put(b"3")
    assert not box.put(b"4")
    assert await box.get() == b"1"
    assert box.put(b"x" * 2000) is False  # over the byte bound with frames queued
    box.close()
    assert not box.put(b"5")
    assert [await box.get(), await box.get(), await box.get()] == [b"2", b"3", None]
    big = Outbox(max_bytes=10, max_frames=10)
    assert big.put(b"y" * 100)  # a single frame larger than the bound still goes alone


# -- core -------------------------------------------------------------------------------


class Clock:
    """A settable clock for the core's wall and monotonic time."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def core() -> BrokerCore:
    """A core over the test tokens with a settable clock."""
    clock = Clock()
    return BrokerCore(load_tokens(TOKENS), BrokerConfig(), wall=clock, mono=clock)


def send(core: BrokerCore, conn: Connection, frame: Any) -> list[Any]:
    """Feed one MessagePack frame; return what the sender itself receives."""
    return frames_for(core.receive_binary(conn, msgpack.packb(frame)), conn.conn_id)


def authed(core: BrokerCore, token: str, pv: int | None = None) -> Connection:
    """A connection authenticated with ``token``."""
    conn = core.open()
    auth: dict[str, Any] = {"type": "auth", "token": token}
    if pv is not None:
        auth["protocolVersion"] = pv
    [reply] = send(core, conn, auth)
    assert reply["success"] is True
    return conn


def test_core_before_auth(core: BrokerCore) -> None:
    conn = core.open()
    assert core.receive_binary(conn, b"") == []  # heartbeat ignored
    assert send(core, conn, {"type": "getPresence", "roomId": "general"}) == [
        {"type": "error", "error": "not_authenticated"}
    ]
    assert send(core, conn, [1, 2, 3]) == [{"type": "error", "error": "not_authenticated"}]
    assert send(core, conn, {"type": "auth"}) == [{"type": "error", "error": "not_authenticated"}]
    assert send(core, conn, {"type": "auth", "token": "nope"}) == [
        {"type": "auth", "success": False, "error": "access_denied"}
    ]
    assert send(core, conn, {"type": "auth", "token": 5}) == [
        {"type": "auth", "success": False, "error": "access_denied"}
    ]


@pytest.mark.parametrize(
    "sent, answered", [(None, 1), (1, 1), (2, 2), (3, 2), ("2", 1), (True, 1), (0, 1), (2.0, 1)]
)
def test_core_protocol_version(core: BrokerCore, sent: Any, answered: int) -> None:
    conn = core.open()
    frame: dict[str, Any] = {"type": "auth", "token": "dev-token-alice"}
    if sent is not None:
        frame["protocolVersion"] = sent
    [reply] = send(core, conn, frame)
    assert reply["protocolVersion"] == answered


def test_core_second_auth_neither_refills_the_bucket_nor_broadcasts() -> None:
    now = [0.0]
    core = BrokerCore(load_tokens(TOKENS), BrokerConfig(), mono=lambda: now[0])
    slow = authed(core, "dev-token-slow")  # 3 frames/s, burst 3
    b = authed(core, "dev-token-bob")
    send(core, b, {"type": "presence", "roomId": "general", "data": {}})
    accepted = 0
    for _ in range(20):  # the probe: auth, presence, auth, presence, ...
        out = core.receive_binary(slow, msgpack.packb({"type": "auth", "token": "dev-token-slow"}))
        assert [f.get("type") for f in frames_for(out, slow.conn_id)] in (["auth"], ["error"])
        out = core.receive_binary(
            slow, msgpack.packb({"type": "presence", "roomId": "general", "data": {}})
        )
        if events(out, b.conn_id):
            accepted += 1
    # the bucket holds 3; every frame, the auths included, took one: one presence got in
    assert accepted == 1
    assert [e[1] for e in events(out, b.conn_id)] == []
    out = core.receive_binary(b, msgpack.packb({"type": "auth", "token": "dev-token-carol"}))
    assert frames_for(out, b.conn_id) == [
        {
            "type": "auth",
            "success": False,
            "error": "already_authenticated",
            "hint": REAUTH_HINT,
        }
    ]
    assert b.identity is not None and b.identity.actor_token_id == "bob"


def test_core_room_refusals_depend_on_protocol_version(core: BrokerCore) -> None:
    v1 = authed(core, "dev-token-erin")
    v2 = authed(core, "dev-token-erin", 2)
    for room in ("random", "nosuch", "room-general"):
        assert send(core, v1, {"type": "presence", "roomId": room, "data": {}}) == []
        assert send(core, v1, {"type": "getPresence", "roomId": room}) == [
            {"type": "presenceList", "roomId": room, "data": []}
        ]
    assert send(core, v2, {"type": "presence", "roomId": "random", "data": {}}) == [
        {"type": "error", "error": "not_authorized", "roomId": "random"}
    ]
    err, empty = send(core, v2, {"type": "getPresence", "roomId": "room-general", "msgRef": "r"})
    assert err["error"] == "unknown_topic" and err["code"] == 42940
    assert err["roomId"] == "room-general" and err["hint"] and err["msgRef"] == "r"
    # the empty list still follows, so a client waiting for the list is answered
    assert empty == {"type": "presenceList", "roomId": "room-general", "data": []}


def test_core_bad_input_gets_defined_errors(core: BrokerCore) -> None:
    conn = authed(core, "dev-token-alice")
    cases: list[tuple[Any, str]] = [
        ({"type": "frobnicate"}, "invalid_message"),
        ({"hello": "world"}, "invalid_message"),
        ({"type": 5}, "invalid_message"),
        ({"type": "presence"}, "invalid_presence"),
        ({"type": "presence", "roomId": 5, "data": {}}, "invalid_message"),
        ({"type": "presence", "roomId": "general", "data": "online"}, "invalid_presence"),
        ({"type": "getPresence", "roomId": ["x"]}, "invalid_message"),
        ({"type": "lobbySubscribe"}, "invalid_message"),
        ({"type": "subscribe"}, "unsupported"),
        ({"type": "publish", "topic": "a/b/c", "data": {}}, "unsupported"),
        ([1, 2], "invalid_message"),
    ]
    for frame, name in cases:
        [reply] = send(core, conn, frame)
        assert reply["type"] == "error" and reply["error"] == name, (frame, reply)
        if name != "unsupported":
            assert reply["hint"]
    assert (
        frames_for(core.receive_binary(conn, b"\xc1"), conn.conn_id)[0]["error"]
        == "invalid_message"
    )
    [reply] = frames_for(core.receive_text(conn, "{not json"), conn.conn_id)
    assert reply["error"] == "invalid_message"


def test_core_rate_limit_and_size_limit(core: BrokerCore) -> None:
    conn = authed(core, "dev-token-slow")
    frame = {"type": "getPresence", "roomId": "general"}
    replies = [send(core, conn, frame)[0]["type"] for _ in range(4)]
    assert replies == ["presenceList"] * 3 + ["error"]
    assert send(core, conn, frame) == [
        {"type": "error", "error": "rate_limit_exceeded", "code": 42910, "roomId": "general"}
    ]
    assert send(core, conn, {"type": "lobbySubscribe", "lobbyId": "main", "msgRef": 7}) == [
        {
            "type": "error",
            "error": "rate_limit_exceeded",
            "code": 42910,
            "lobbyId": "main",
            "msgRef": 7,
        }
    ]
    assert send(core, conn, [1]) == [
        {"type": "error", "error": "rate_limit_exceeded", "code": 42910}
    ]  # undecodable or not, every frame costs a token
    assert core.receive_binary(conn, b"") == [(conn.conn_id, b"")]  # heartbeats exempt
    core.mono.t += 1.0  # type: ignore[attr-defined]
    big = msgpack.packb({"type": "presence", "roomId": "general", "data": {"b": "x" * 921600}})
    assert frames_for(core.receive_binary(conn, big), conn.conn_id) == [
        {"type": "error", "error": "message_too_large", "code": 42930, "maxSizeBytes": 921600}
    ]


def test_core_close_drops_presence_once(core: BrokerCore) -> None:
    a = authed(core, "dev-token-alice")
    b = authed(core, "dev-token-bob")
    send(core, a, {"type": "presence", "roomId": "general", "data": {}})
    send(core, b, {"type": "presence", "roomId": "general", "data": {}})
    assert events(core.close(a), b.conn_id) == [("presence", "leave", "alice")]
    assert core.close(a) == []
    assert core.close(core.open()) == []


# -- REST logic -------------------------------------------------------------------------


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None
    assert bearer_token(None) is None


def test_rest_logic(core: BrokerCore) -> None:
    rest = RestPresence(core)
    b1 = authed(core, "dev-token-bob")
    b2 = authed(core, "dev-token-bob")
    send(core, b1, {"type": "presence", "roomId": "general", "data": {"d": 1}})
    core.wall.t += 5  # type: ignore[attr-defined]
    send(core, b2, {"type": "presence", "roomId": "general", "data": {"d": 2}})
    reply = rest.presence("Bearer dev-token-alice", "general")
    assert reply.status == 200
    assert reply.body == {
        "roomId": "general",
        "count": 1,
        "actors": [
            {
                "actorTokenId": "bob",
                "actorType": "user",
                "presence": {"d": 2},
                "joinedAt": 1000,
                "connections": 2,
            }
        ],
    }
    assert rest.presence(None, None).status == 401
    assert rest.presence("Bearer nope", None).status == 401
    assert rest.presence("Bearer dev-token-erin", "random").status == 403
    assert rest.presence("Bearer dev-token-erin", "nosuch").body["error"] == "unknown_topic"
    assert rest.presence("Bearer dev-token-mallory", "general").body["count"] == 0
    statuses = [rest.presence("Bearer dev-token-slow", None).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert rest.presence("Bearer dev-token-slow", None).headers["Retry-After"] == "1"


def test_rest_rate_can_be_configured_apart_from_the_token() -> None:
    clock = Clock()
    config = BrokerConfig(rest_rate=1.0)
    rest = RestPresence(BrokerCore(load_tokens(TOKENS), config, wall=clock, mono=clock))
    statuses = [rest.presence("Bearer dev-token-fast", None).status for _ in range(2)]
    assert statuses == [200, 429]  # the token itself is unlimited
    with pytest.raises(ValueError):
        BrokerConfig(rest_rate=-1)
