"""The batched frame reader: fuzzed, split at every boundary, and checked against
websocket-client's own parser on the same bytes."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websocket import _abnf

from nolag._io.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    FrameReader,
    Message,
    Ping,
    Pong,
    WebSocketViolation,
)


def frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, mask: bool = False) -> bytes:
    """A server frame built by websocket-client's own encoder (unmasked unless asked)."""
    abnf = _abnf.ABNF(int(fin), rsv & 4 and 1, rsv & 2 and 1, rsv & 1, opcode, int(mask), payload)
    data: bytes = abnf.format()
    return data


def feed_in_pieces(data: bytes, cuts: list[int], reader: FrameReader | None = None) -> list[Any]:
    reader = reader or FrameReader()
    events: list[Any] = []
    start = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        fed = reader.feed(data[start:cut])
        if reader.only_binary:  # the transport then returns the list as it is
            assert all(type(event) is bytes for event in fed), fed
        events += fed
        start = cut
    return events


def reference(data: bytes) -> list[Any]:
    """What websocket-client's frame_buffer + continuous_frame make of the same bytes."""
    stream = memoryview(data)
    pos = 0

    def recv(n: int) -> bytes:
        nonlocal pos
        chunk = bytes(stream[pos : pos + n])
        pos += len(chunk)
        return chunk

    buffer = _abnf.frame_buffer(recv, skip_utf8_validation=False)
    cont = _abnf.continuous_frame(fire_cont_frame=False, skip_utf8_validation=False)
    out: list[Any] = []
    while pos < len(data):
        f = buffer.recv_frame()
        if f.opcode in (OP_TEXT, OP_BINARY, OP_CONT):
            cont.validate(f)
            cont.add(f)
            if cont.is_fire(f):
                opcode, whole = cont.extract(f)
                value = whole.data
                if opcode == OP_BINARY:
                    out.append(value)
                else:
                    out.append(Message(opcode, value.encode() if isinstance(value, str) else value))
        elif f.opcode == OP_PING:
            out.append(Ping(f.data))
        elif f.opcode == OP_PONG:
            out.append(Pong(f.data))
        elif f.opcode == OP_CLOSE:
            code = struct.unpack("!H", f.data[:2])[0] if len(f.data) >= 2 else None
            out.append(Close(code, f.data[2:].decode()))
            break
    return out


# --------------------------------------------------------------- a stream of messages

payloads = st.binary(max_size=300) | st.sampled_from([b"x" * 125, b"y" * 126, b"z" * 70000])
texts = st.text(max_size=50).map(str.encode)


@st.composite
def message_streams(draw: Any) -> tuple[bytes, list[Any]]:
    """Server bytes for a few messages (some fragmented, with controls between fragments),
    and the events they must produce."""
    data = b""
    expected: list[Any] = []
    for _ in range(draw(st.integers(0, 6))):
        opcode = draw(st.sampled_from([OP_BINARY, OP_TEXT]))
        body = draw(texts if opcode == OP_TEXT else payloads)
        parts = draw(st.integers(1, 4))
        cuts = sorted(
            draw(st.lists(st.integers(0, len(body)), min_size=parts - 1, max_size=parts - 1))
        )
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]
        controls: list[Any] = []
        for index, piece in enumerate(pieces):
            first, last = index == 0, index == len(pieces) - 1
            data += frame(opcode if first else OP_CONT, piece, fin=last)
            if not last and draw(st.booleans()):
                ping = draw(st.binary(max_size=125))
                kind = draw(st.sampled_from([OP_PING, OP_PONG]))
                data += frame(kind, ping)
                controls.append(Ping(ping) if kind == OP_PING else Pong(ping))
        expected += [*controls, body if opcode == OP_BINARY else Message(opcode, body)]
    if draw(st.booleans()):
        data += frame(OP_CLOSE, struct.pack("!H", 1000) + b"bye")
        expected.append(Close(1000, "bye"))
    return data, expected


@settings(max_examples=300, deadline=None)
@given(message_streams(), st.lists(st.integers(0, 200_000), max_size=12))
def test_any_split_of_a_stream_gives_the_same_events(
    stream: tuple[bytes, list[Any]], cuts: list[int]
) -> None:
    data, expected = stream
    assert feed_in_pieces(data, cuts) == expected


@settings(max_examples=300, deadline=None)
@given(message_streams())
def test_same_events_as_websocket_client_on_the_same_bytes(stream: tuple[bytes, list[Any]]) -> None:
    data, expected = stream
    ours = feed_in_pieces(data, [])
    assert ours == reference(data) == expected


def test_every_single_byte_boundary() -> None:
    data = (
        frame(OP_BINARY, b"a" * 200)
        + frame(OP_TEXT, b"h\xc3\xa9llo", fin=False)
        + frame(OP_PING, b"p")
        + frame(OP_CONT, b" world")
        + frame(OP_BINARY, b"z" * 70_000)
        + frame(OP_CLOSE, struct.pack("!H", 1001))
    )
    expected = [
        b"a" * 200,
        Ping(b"p"),
        Message(OP_TEXT, "héllo world".encode()),
        b"z" * 70_000,
        Close(1001, ""),
    ]
    reader = FrameReader()
    events: list[Any] = []
    for i in range(len(data)):  # one byte at a time
        events += reader.feed(data[i : i + 1])
    assert events == expected
    for cut in range(0, 400):
        assert feed_in_pieces(data, [cut]) == expected


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512), st.lists(st.integers(0, 600), max_size=6))
def test_garbage_raises_a_violation_or_parses_never_anything_else(
    data: bytes, cuts: list[int]
) -> None:
    try:
        feed_in_pieces(data, cuts)
    except WebSocketViolation as exc:
        assert exc.code in (1002, 1007, 1009)


# --------------------------------------------------------------- violations


@pytest.mark.parametrize(
    ("data", "why", "code"),
    [
        (frame(OP_BINARY, b"x", mask=True), "masked", 1002),
        (frame(OP_BINARY, b"x", rsv=4), "reserved", 1002),
        (b"\x83\x01x", "unknown opcode", 1002),  # websocket-client will not encode it
        (frame(OP_PING, b"p" * 126), "longer than 125", 1002),
        (frame(OP_PING, b"p", fin=False), "fragmented control", 1002),
        (frame(OP_CONT, b"x"), "continuation frame without", 1002),
        (frame(OP_TEXT, b"a", fin=False) + frame(OP_BINARY, b"b"), "new message", 1002),
        (frame(OP_TEXT, b"\xff\xfe"), "not UTF-8", 1007),
        (frame(OP_CLOSE, b"\x03"), "1-byte", 1002),
        (frame(OP_CLOSE, struct.pack("!H", 999)), "invalid close code", 1002),
        (frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff"), "not UTF-8", 1007),
        (b"\x82\x7e\x00\x05hello", "non-minimal 16-bit", 1002),
        (b"\x82\x7f" + (5).to_bytes(8, "big") + b"hello", "non-minimal 64-bit", 1002),
        (b"\x82\x7f" + (1 << 63).to_bytes(8, "big"), "top bit", 1002),
    ],
)
def test_protocol_violations_are_refused(data: bytes, why: str, code: int) -> None:
    with pytest.raises(WebSocketViolation, match=why) as info:
        FrameReader().feed(data)
    assert info.value.code == code


def test_size_limit_covers_all_fragments() -> None:
    reader = FrameReader(max_message=100)
    assert reader.feed(frame(OP_BINARY, b"a" * 60, fin=False)) == []
    with pytest.raises(WebSocketViolation, match="100-byte limit") as info:
        reader.feed(frame(OP_CONT, b"b" * 41))
    assert info.value.code == 1009
    # the limit is checked from the header alone: no need to buffer the oversized body
    with pytest.raises(WebSocketViolation):
        FrameReader(max_message=100).feed(frame(OP_BINARY, b"c" * 101)[:4])


def test_nothing_after_the_close_frame() -> None:
    reader = FrameReader()
    events = reader.feed(frame(OP_CLOSE, b"") + frame(OP_BINARY, b"late"))
    assert events == [Close(None, "")]
    assert reader.closed
    with pytest.raises(WebSocketViolation, match="after the close"):
        reader.feed(b"more")


def test_buffered_counts_the_partial_frame() -> None:
    reader = FrameReader()
    data = frame(OP_BINARY, b"12345")
    assert reader.feed(data[:4]) == []
    assert reader.buffered == 4
    assert reader.feed(data[4:]) == [b"12345"]  # a binary message is just its bytes
    assert reader.buffered == 0
