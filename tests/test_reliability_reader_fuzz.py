"""The reader survives anything a server sends: random bytes, random MessagePack, broken frames.

First sans-IO: hypothesis-generated payloads through `protocol.decode_frame` and on into a
`PresenceStore`, as the reader applies them. Then through a live socket: a real WebSocket
server on loopback (tests/evilserver.py) authenticates the client and sends the generated
payloads as frames; after each batch a sentinel event must still be applied on the same
connection, every undecodable frame must be counted in ``client.stats.protocol_errors``
and logged at debug level, and the reader thread must be the same live thread. Finally
raw garbage on the wire (broken WebSocket framing) may cost a reconnect, never the reader.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from evilserver import EvilServer, evil_threads
from helpers import wait_until
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nolag import NoLag, protocol
from nolag.presence import PresenceStore

ROOM = "general"
LIVE = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
UNIT = settings(max_examples=200, deadline=None, database=None)

# ---------------------------------------------------------------- strategies

_keys = (
    st.text(max_size=8)
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=6)
    | st.none()
    | st.booleans()
    | st.floats(allow_nan=False)
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
)
values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=10,
)
_actor = st.sampled_from(["x", "y", "alice", ""]) | values
_room = st.sampled_from([ROOM, "random", None]) | values
_presence_data = st.fixed_dictionaries(
    {"actor_token_id": _actor},
    optional={
        "presence": values | st.dictionaries(st.text(max_size=6), values, max_size=3),
        "connectionId": st.sampled_from(["c1", "c2"]) | values,
        "actorType": values,
    },
)
_entry = st.fixed_dictionaries(
    {"actorTokenId": _actor},
    optional={
        "presence": values,
        "joinedAt": st.integers(-(2**63), 2**64 - 1) | st.floats() | values,
        "connectionId": st.sampled_from(["c1", "c2"]) | values,
        "connections": values,
        "status": values,
    },
)
structured = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("presence"), "event": st.sampled_from(["join", "update", "leave"])},
        optional={"data": _presence_data | values, "roomId": _room, "connectionId": values},
    ),
    st.fixed_dictionaries(
        {"type": st.just("presenceList")},
        optional={"roomId": _room, "data": st.lists(_entry | values, max_size=4) | values},
    ),
    st.fixed_dictionaries(
        {"type": st.just("error")},
        optional={
            "error": st.sampled_from(["not_authorized", "rate_limit_exceeded", "x"]) | values,
            "code": values,
            "hint": values,
            "roomId": _room,
            "lobbyId": values,
        },
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["lobbyPresence", "lobbySubscribed", "lobbyPresenceList"])},
        optional={
            "lobbyId": st.just("main") | values,
            "event": st.sampled_from(["join", "update", "leave"]) | values,
            "roomId": _room,
            "actorId": _actor,
            "data": values,
            "presence": st.dictionaries(
                st.text(max_size=6), st.dictionaries(st.text(max_size=4), _entry, max_size=2)
            )
            | values,
        },
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["auth", "lobbyUnsubscribed", "message", "subscribed"]) | values},
        optional={"success": values, "actorTokenId": _actor, "lobbyId": values},
    ),
)


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


#: one server→client payload: raw bytes, any MessagePack value, or a frame of a known type
payloads = (
    st.binary(max_size=200)
    | values.map(_pack)
    | structured.map(_pack)
    | st.tuples(structured.map(_pack), st.binary(min_size=1, max_size=4)).map(b"".join)
)

# ---------------------------------------------------------------- sans-IO


@UNIT
@given(st.binary(max_size=512))
def test_random_bytes_never_raise_out_of_the_decoder(payload: bytes) -> None:
    frame = protocol.decode_frame(payload)
    assert frame is not None


@UNIT
@given(values | structured)
def test_random_messagepack_never_raises_out_of_the_decoder(value: Any) -> None:
    frame = protocol.decode_frame(_pack(value))
    assert frame is not None
    if not isinstance(value, dict):
        assert isinstance(frame, protocol.ProtocolError)


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(payloads, max_size=10))
def test_decoded_frames_never_break_the_store(batch: list[bytes]) -> None:
    """What the reader does with decoded frames (apply events and lists) never raises."""
    store = PresenceStore()
    for now, payload in enumerate(batch):
        frame = protocol.decode_frame(payload)
        if isinstance(frame, protocol.PresenceEvent):
            room = frame.room if frame.room_given else ROOM
            store.apply_event(frame, room, float(now))
        elif isinstance(frame, protocol.PresenceList):
            store.apply_list(frame, frame.room, store.mark(), float(now))
        store.snapshot()
    for actor in store.snapshot():
        assert actor.connections >= 1
        assert isinstance(actor.actor_token_id, str)


# ---------------------------------------------------------------- live socket


@pytest.fixture
def evil() -> Iterator[EvilServer]:
    with EvilServer() as server:
        yield server
    assert not evil_threads()


def _reader_thread() -> threading.Thread:
    (reader,) = [t for t in threading.enumerate() if t.name.startswith("nolag-loop")]
    return reader


def _bad_frames(records: list[logging.LogRecord]) -> int:
    return sum(
        1
        for r in records
        if r.levelno == logging.DEBUG and r.getMessage().startswith("ignored a bad frame")
    )


def _connect(evil: EvilServer, **options: Any) -> NoLag:
    options.setdefault("heartbeat_interval", 2.0)
    client = NoLag(
        "evil-token",
        url=evil.url,
        reconnect_initial_delay=0.01,
        reconnect_max_delay=0.05,
        **options,
    )
    client.connect(timeout=5)
    client.set_presence({"name": "Alice"}, room=ROOM)
    conn = evil.wait_authed()
    # confirm our room, as the broker would with our own join
    own = {"actor_token_id": "alice", "connectionId": "me", "presence": {"name": "Alice"}}
    evil.send_map({"type": "presence", "event": "join", "roomId": ROOM, "data": own}, conn.number)
    wait_until(lambda: client.get_presence("alice", ROOM) is not None)
    return client


def test_random_payloads_through_a_live_socket_never_kill_the_reader(
    evil: EvilServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="nolag")
    client = _connect(evil, heartbeat_interval=30.0)  # no echo may slip into the counts
    reader = _reader_thread()
    sentinels = itertools.count(1)
    try:

        @LIVE
        @given(st.lists(payloads, min_size=1, max_size=8))
        @example([b"\xc1", b"\x81\xa4type\xc1", _pack({"type": "presence", "event": "join"})])
        @example([_pack([1, 2]), _pack(msgpack.ExtType(1, b"x")), b"\x92\x01", b"\xdd\xff\xff"])
        @example([_pack({"type": "presence", "event": "join", "data": {"actor_token_id": 1}})])
        def run(batch: list[bytes]) -> None:
            before = (client.stats.frames_received, client.stats.protocol_errors)
            logged = _bad_frames(caplog.records)
            bad = sum(isinstance(protocol.decode_frame(p), protocol.ProtocolError) for p in batch)
            for payload in batch:
                evil.send(payload)
            k = next(sentinels)
            sentinel = {"actor_token_id": f"sentinel-{k}", "connectionId": f"s{k}"}
            sentinel["presence"] = {"k": k}
            evil.send_map({"type": "presence", "event": "join", "roomId": ROOM, "data": sentinel})
            wait_until(lambda: client.get_presence(f"sentinel-{k}", ROOM) is not None, timeout=5)
            assert reader.is_alive() and client.connected
            assert client.stats.reconnects == 0  # survived on the same connection
            assert client.stats.frames_received - before[0] == len(batch) + 1
            assert client.stats.protocol_errors - before[1] == bad
            assert _bad_frames(caplog.records) - logged == bad

        run()
    finally:
        client.disconnect()


@settings(max_examples=15, deadline=None, database=None)
@given(st.binary(min_size=1, max_size=64))
@example(b"\x82\x7f\xff\xff\xff\xff\xff\xff\xff\xff")  # a 64-bit length with the top bit set
@example(b"\x8f\x00")  # a reserved opcode
@example(b"\xf2\x00")  # reserved bits without an extension
@example(b"\x81\x02\xff\xfe")  # a text frame that is not UTF-8
@example(b"\x02\x01a\x82\x01b")  # a new message inside a fragmented one
@example(b"\x89\x7e\x00\x80" + b"p" * 128)  # a control frame over 125 bytes
def test_broken_framing_costs_at_most_a_reconnect_never_the_reader(garbage: bytes) -> None:
    """The read loop may end with its last connection and start again with the next one,
    but the loss must come through the framing checks, never as a crash of the reader."""
    crashes = _CrashLog()
    logging.getLogger("nolag").addHandler(crashes)
    with EvilServer() as evil:
        client = _connect(evil)
        try:
            _reader_thread()
            conns = len(evil.connections())
            evil.send_raw(garbage)
            try:  # the client refuses the connection itself, or waits for more bytes
                wait_until(lambda: len(evil.connections()) > conns, timeout=0.3)
            except AssertionError:
                evil.drop(conns)  # a frame that never ends: the server goes away
            evil.wait_authed(conns + 1)
            wait_until(lambda: client.connected, timeout=5)
            k = len(evil.connections())
            # a broker routes a room's events to a socket only once it has re-entered the
            # room: wait for the client's presence on the new connection, as a broker would
            wait_until(lambda: _sent_presence(evil, k), timeout=5)
            data = {"actor_token_id": f"after-{k}", "connectionId": "a", "presence": {}}
            evil.send_map({"type": "presence", "event": "join", "roomId": ROOM, "data": data})
            wait_until(lambda: client.get_presence(f"after-{k}", ROOM) is not None, timeout=5)
            assert _reader_thread().is_alive()
            assert not crashes.records, [r.getMessage() for r in crashes.records]
        finally:
            client.disconnect()
            logging.getLogger("nolag").removeHandler(crashes)
    assert not evil_threads()


def _sent_presence(evil: EvilServer, conn: int) -> bool:
    """Whether the client sent its room presence on connection `conn`."""
    return any(
        isinstance(f, dict) and f.get("type") == "presence" and f.get("roomId") == ROOM
        for f in evil.frames_from(conn)
    )


class _CrashLog(logging.Handler):
    """Collects the SDK's "unexpected error" records (a reader or handler that crashed)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "unexpected error" in record.getMessage():
            self.records.append(record)


def test_fuzz_strategies_really_produce_bad_and_good_frames() -> None:
    """A guard on the strategies above: both outcomes are generated, not only one."""
    kinds: set[str] = set()

    @settings(max_examples=80, deadline=None, database=None)
    @given(payloads)
    def look(payload: bytes) -> None:
        kinds.add(type(protocol.decode_frame(payload)).__name__)

    look()
    assert "ProtocolError" in kinds
    assert {"PresenceEvent", "ErrorFrame"} & kinds
