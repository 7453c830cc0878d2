"""Presence-data rules (nolag.values): the SDK and the broker accept and refuse the same data.

First property tests without sockets: any value, good or bad, is accepted by the SDK's
check (`protocol.validate_presence_data`) exactly when the broker's check accepts it,
and exactly when the broker's protocol logic (`BrokerCore`, fed the MessagePack frame a
client would send) answers with presence rather than an error frame. Then, through a
real local broker, the inputs that used to raise RecursionError in `set_presence`
(cyclic and 5,000-level data) raise the documented TypeError/ValueError naming the path,
and nothing is sent; and JSON text presence the broker could not broadcast (an int over
64 bits, a lone surrogate) is refused with an error frame instead of closing the sender.
"""

from __future__ import annotations

import collections
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Optional

import msgpack
import pytest
from helpers import TOKENS, Recorder, connected, wait_until
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rawclient import RawClient

from nolag import protocol, values
from nolag.broker import BrokerConfig, EmbeddedBroker, load_tokens
from nolag.broker.core import BrokerCore
from nolag.broker.payload import InvalidPresence, check_presence_data
from nolag.values import INT_MAX, INT_MIN, MAX_DEPTH

TOKEN_STORE = load_tokens(Path(__file__).parent / "fixtures" / "tokens.json")
BIG = 1 << 30  # no size limit in the rule tests: size is the SDK's own, separate check


def nest(levels: int, leaf: Any = "x", key: Optional[str] = None) -> dict[str, Any]:
    """A data map `levels` containers deep: the map, then lists (or maps under `key`)."""
    value: Any = leaf
    for _ in range(levels - 1):
        value = {key: value} if key is not None else [value]
    return {"a": value}


def sdk_verdict(data: Any) -> Optional[dict[str, Any]]:
    """The SDK's plain copy, or None when it refuses (with a TypeError/ValueError)."""
    try:
        plain, packed = protocol.validate_presence_data(data, BIG)
    except (TypeError, ValueError) as exc:
        assert isinstance(exc, values.InvalidPresenceData), repr(exc)
        assert str(exc).startswith("presence data"), exc
        return None
    assert msgpack.unpackb(packed, raw=False) == plain
    return plain


def broker_check_verdict(data: Any) -> Optional[dict[str, Any]]:
    """The broker's canonical copy, or None when its check refuses."""
    try:
        return check_presence_data(data)
    except InvalidPresence:
        return None


def broker_wire_verdict(data: Any) -> Optional[Any]:
    """What the broker's protocol logic does with the frame a client would send.

    Returns the presence the broker broadcasts, None when it answers with an error frame;
    raises NotEncodable when MessagePack cannot carry `data` at all.
    """
    frame = {"type": "presence", "roomId": "general", "data": data}
    try:
        payload = msgpack.packb(frame, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise NotEncodable(repr(exc)) from exc
    core = BrokerCore(TOKEN_STORE, BrokerConfig(), wall=lambda: 1000.0, mono=lambda: 1000.0)
    conn = core.open()
    auth: list[Any] = core.receive_binary(
        conn, msgpack.packb({"type": "auth", "token": "dev-token-alice"})
    )
    assert [frame["success"] for _, frame in auth] == [True]
    mine: list[Any] = [f for cid, f in core.receive_binary(conn, payload) if cid == conn.conn_id]
    assert mine, "the broker answered nothing"
    if mine[0]["type"] == "error":
        assert mine[0]["error"] in ("invalid_presence", "invalid_message"), mine[0]
        return None
    assert mine[-1]["type"] == "presence", mine
    return mine[-1]["data"]["presence"]


class NotEncodable(Exception):
    """MessagePack itself cannot encode the value (a set, a cycle, a 65-bit int...)."""


# ---------------------------------------------------------------- strategies

good_scalars = (
    st.none()
    | st.booleans()
    | st.integers(INT_MIN, INT_MAX)
    | st.sampled_from([INT_MIN, INT_MAX, 0, -1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
bad_scalars = st.sampled_from(
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        INT_MAX + 1,
        INT_MIN - 1,
        10**40,
        b"\xff\xfe",
        b"text",
        bytearray(b"x"),
        "lone \ud800 surrogate",
        msgpack.ExtType(1, b"x"),
        msgpack.Timestamp(1, 0),
        frozenset({1}),
        object(),
    ]
)
keys = st.text(max_size=6) | st.sampled_from([1, -2, 1.5, b"k", None, "bad\udcff"])


def weighted_leaf(n: int) -> st.SearchStrategy[Any]:
    """Mostly good scalars: one in ten is bad, so both verdicts are common."""
    return bad_scalars if n == 0 else good_scalars


leaves = st.integers(0, 9).flatmap(weighted_leaf)


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    good_keys = st.text(max_size=6)
    return (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(good_keys, children, max_size=4)
        | st.dictionaries(keys, children, max_size=3)
    )


trees = st.recursive(leaves, containers, max_leaves=16)


@st.composite
def deep_values(draw: st.DrawFn) -> Any:
    """A chain of maps and lists around the depth limit (MAX_DEPTH - 3 .. MAX_DEPTH + 3)."""
    levels = draw(st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3))
    value: Any = draw(good_scalars)
    for _ in range(levels - 1):
        value = [value] if draw(st.booleans()) else {draw(st.text(max_size=3)): value}
    return value  # the outer-most container is level 1 once wrapped as data below


presence_data = (
    st.dictionaries(st.text(max_size=6), trees, max_size=5)
    | st.dictionaries(keys, trees, max_size=3)
    | deep_values().map(lambda v: {"deep": v})
    | st.sampled_from([[1], "online", 7, 1.5, True, b"x", ("a",)])  # not a map
)


# ---------------------------------------------------------------- SDK == broker


@given(presence_data)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_sdk_and_broker_accept_and_refuse_the_same_values(data: Any) -> None:
    sdk = sdk_verdict(data)
    broker = broker_check_verdict(data)
    assert (sdk is None) == (broker is None), (data, sdk, broker)
    if sdk is not None:
        assert sdk == broker  # the same copy; only the key order may differ
    try:
        wire = broker_wire_verdict(data)
    except NotEncodable:
        assert sdk is None, "the SDK accepted data MessagePack cannot encode"
        event("not encodable: refused by the SDK")
        return
    event("accepted by both" if sdk is not None else "refused by both, and on the wire")
    # what the SDK accepts the broker broadcasts unchanged; what it refuses, the broker refuses
    assert wire == sdk, (data, sdk, wire)


@given(st.integers(1, MAX_DEPTH + 2), st.booleans())
@settings(max_examples=60, deadline=None)
def test_the_depth_limit_is_the_same_both_sides_and_on_the_wire(levels: int, maps: bool) -> None:
    data = nest(levels, key="k" if maps else None)
    accepted = levels <= MAX_DEPTH
    assert (sdk_verdict(data) is not None) == accepted
    assert (broker_check_verdict(data) is not None) == accepted
    assert (broker_wire_verdict(data) is not None) == accepted


def test_mappings_and_tuples_are_sent_as_maps_and_lists() -> None:
    ordered = collections.OrderedDict([("b", 1), ("a", (1, 2))])
    data = {"proxy": MappingProxyType({"x": ordered})}
    assert sdk_verdict(data) == {"proxy": {"x": {"b": 1, "a": [1, 2]}}}
    assert list(check_presence_data(data)["proxy"]["x"]) == ["a", "b"]  # broker: sorted keys


def test_a_value_shared_in_two_places_is_not_a_cycle() -> None:
    shared = {"id": 1}
    assert sdk_verdict({"a": shared, "b": [shared, shared]}) == {
        "a": {"id": 1},
        "b": [{"id": 1}, {"id": 1}],
    }


@pytest.mark.parametrize(
    "data, error, message",
    [
        ({"avatar": b"\x00"}, TypeError, r"presence data \['avatar'\]: bytes"),
        ({"a": [1, {"b": float("inf")}]}, TypeError, r"\['a'\]\[1\]\['b'\]: inf is not a finite"),
        ({"m": {3: "x"}}, TypeError, r"\['m'\]: key 3 is not a string \(int\)"),
        ({"n": 2**64}, TypeError, r"\['n'\]: integer 18446744073709551616 does not fit"),
        ({"n": -(10**5000)}, TypeError, r"\['n'\]: integer of 16610 bits does not fit"),
        ({"s": "a\udc80"}, TypeError, r"\['s'\]: str is not valid UTF-8"),
        ({"e": msgpack.ExtType(1, b"")}, TypeError, r"\['e'\]: ExtType is not JSON-like"),
        (
            nest(MAX_DEPTH + 1),
            ValueError,
            rf"\['a'\](\[0\]){{{MAX_DEPTH - 1}}}: nested deeper than 32 levels$",
        ),
        (["a"], TypeError, "presence data must be a mapping"),
    ],
)
def test_errors_name_the_path_and_the_rule(data: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        protocol.validate_presence_data(data, BIG)
    with pytest.raises(InvalidPresence, match=message):
        check_presence_data(data)


def cyclic_list() -> dict[str, Any]:
    loop: list[Any] = [1]
    loop.append(loop)
    return {"a": {"b": loop}}


def cyclic_map() -> dict[str, Any]:
    data: dict[str, Any] = {"x": 1}
    data["self"] = data
    return data


@pytest.mark.parametrize(
    "data, message",
    [
        (cyclic_list(), r"presence data \['a'\]\['b'\]\[1\]: refers to itself"),
        (cyclic_map(), r"presence data \['self'\]: refers to itself"),
        (nest(5000), r"presence data \['a'\](\[0\])+: nested deeper than 32 levels"),
        (nest(5000, key="k"), r"presence data \['a'\](\['k'\])+: nested deeper than 32 levels"),
    ],
    ids=["cyclic list", "cyclic map", "5000 lists", "5000 maps"],
)
def test_cyclic_and_very_deep_data_raise_value_error_not_recursion_error(
    data: Any, message: str
) -> None:
    for check in (
        lambda: protocol.validate_presence_data(data, BIG),
        lambda: check_presence_data(data),
    ):
        with pytest.raises(ValueError, match=message) as caught:
            check()
        assert not isinstance(caught.value, RecursionError)
        assert len(caught.value.path) <= MAX_DEPTH  # type: ignore[attr-defined]


# ---------------------------------------------------------------- through a real broker


@pytest.mark.parametrize(
    "data, message",
    [
        (cyclic_list(), r"\['a'\]\['b'\]\[1\]: refers to itself"),
        (cyclic_map(), r"\['self'\]: refers to itself"),
        (nest(5000), r"\['a'\](\[0\])+: nested deeper than 32 levels"),
        (nest(5000, key="k"), r"\['a'\](\['k'\])+: nested deeper than 32 levels"),
        (nest(MAX_DEPTH + 1), r"\['a'\](\[0\])+: nested deeper than 32 levels$"),
    ],
    ids=["cyclic list", "cyclic map", "5000 lists", "5000 maps", "one level too deep"],
)
def test_set_presence_refuses_cyclic_and_deep_data_and_sends_nothing(
    broker: EmbeddedBroker, data: Any, message: str
) -> None:
    with (
        connected(broker.url, TOKENS["bob"]) as bob,
        connected(broker.url, TOKENS["alice"]) as alice,
    ):
        seen = Recorder(bob)
        bob.set_presence({"name": "Bob"}, room="general")
        wait_until(lambda: bob.get_presence("bob", "general"))
        sent = alice.stats.presence_sent
        with pytest.raises(ValueError, match=r"^presence data " + message):
            alice.set_presence(data, room="general")
        assert alice.stats.presence_sent == sent  # refused before anything was queued
        alice.set_presence({"ok": True}, room="general")
        wait_until(lambda: seen.of("alice"))
        # bob's first news of alice is the valid data: the refused value never left
        assert seen.of("alice")[0] == ("presence:join", {"ok": True})


def test_data_at_the_depth_limit_goes_through_a_real_broker(broker: EmbeddedBroker) -> None:
    data = nest(MAX_DEPTH, leaf="deepest", key="k")
    with (
        connected(broker.url, TOKENS["bob"]) as bob,
        connected(broker.url, TOKENS["alice"]) as alice,
    ):
        seen = Recorder(bob)
        bob.set_presence({"name": "Bob"}, room="general")
        alice.set_presence(data, room="general")
        wait_until(lambda: seen.of("alice"))
        assert seen.of("alice")[0] == ("presence:join", data)


@pytest.mark.parametrize(
    "data_json, hint",
    [
        ('{"n": 1180591620717411303424}', "['n']: integer 1180591620717411303424 does not fit"),
        ('{"s": ["ok", "\\ud800"]}', "['s'][1]: str is not valid UTF-8"),
        ('{"f": {"x": NaN}}', "['f']['x']: nan is not a finite number"),
    ],
    ids=["int over 64 bits", "lone surrogate", "NaN"],
)
def test_json_presence_the_broker_could_not_broadcast_is_refused_and_the_socket_stays(
    connect: Callable[..., RawClient], data_json: str, hint: str
) -> None:
    # before the shared rules, the first two were accepted from a JSON text frame, then
    # failed to encode for the room: the sender was closed with 1011, the room saw a leave
    bob = connect(TOKENS["bob"])
    bob.send({"type": "presence", "roomId": "general", "data": {"n": "bob"}})
    bob.recv_type("presence")
    bob.drain()
    alice = connect(TOKENS["alice"])
    alice.send_text(f'{{"type": "presence", "roomId": "general", "data": {data_json}}}')
    reply = alice.recv()
    assert reply["type"] == "error" and reply["error"] == "invalid_presence", reply
    assert hint in reply["hint"], reply
    alice.send_raw(b"")  # a heartbeat: the socket is still open and served
    assert alice.recv(2) == b""
    bob.send({"type": "getPresence", "roomId": "general"})
    listed = bob.recv_type("presenceList")
    assert [entry["actorTokenId"] for entry in listed["data"]] == ["bob"]
    bob.expect_silence()  # no join, update or leave of alice reached the room
