"""The codec against the real broker's frames: each received one decodes, each sent one matches."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
import transcripts
from hypothesis import given, settings
from hypothesis import strategies as st

from nolag import protocol as p

TRANSCRIPTS = transcripts.transcripts_dir()


def _lines() -> list[tuple[str, dict[str, Any]]]:
    if not TRANSCRIPTS.is_dir():
        return []
    out = []
    for path in sorted(TRANSCRIPTS.glob("*.jsonl")):
        for raw in path.read_text().splitlines():
            out.append((path.name, json.loads(raw)))
    return out


LINES = _lines()
needs_transcripts = pytest.mark.skipif(not LINES, reason=f"no transcripts at {TRANSCRIPTS}")


def _frames(direction: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, d)
        for name, d in LINES
        if d["dir"] == direction
        and d.get("opcode") == "binary"
        and "hex" in d
        and not d.get("hex_truncated")  # the ~1 MB frames are stored cut short
    ]


def _expect(decoded: Any, event: Any) -> None:
    """Check one decoded event against the frame's JSON rendering in the transcript."""
    kind = decoded["type"]
    if kind == "presence":
        assert isinstance(event, p.PresenceEvent)
        assert event.kind == decoded["event"]
        assert event.actor_token_id == decoded["data"]["actor_token_id"]
        assert event.room_given is False  # the real broker never says which room
        if event.kind == "leave":
            assert event.presence is None
        else:
            assert event.presence == decoded["data"]["presence"]
    elif kind == "presenceList":
        assert isinstance(event, p.PresenceList)
        assert event.room == decoded.get("roomId")
        assert [e.actor_token_id for e in event.entries] == [
            e["actorTokenId"] for e in decoded["data"]
        ]
        assert [e.joined_at for e in event.entries] == [e["joinedAt"] for e in decoded["data"]]
        assert [e.presence for e in event.entries] == [e["presence"] for e in decoded["data"]]
    elif kind == "auth" and decoded.get("success"):
        assert isinstance(event, p.AuthOk)
        assert event.actor_token_id == decoded["actorTokenId"]
        assert event.project_id == decoded["projectId"]
        assert event.actor_type == decoded["actorType"]
        assert event.protocol_version == decoded["protocolVersion"]
    elif kind == "auth":
        assert event == p.AuthRefused(decoded["error"])
    elif kind == "error":
        assert isinstance(event, p.ErrorFrame)
        assert event.error == decoded["error"]
        assert event.code == decoded.get("code")
        assert event.hint == decoded.get("hint")
        assert event.lobby_id == decoded.get("lobbyId")
        assert event.topic == decoded.get("topic")
        assert event.max_size_bytes == decoded.get("maxSizeBytes")
    elif kind in ("lobbySubscribed", "lobbyPresenceList"):
        assert isinstance(event, p.LobbySnapshot)
        assert event.initial == (kind == "lobbySubscribed")
        assert event.lobby_id == decoded["lobbyId"]
        assert {r: set(a) for r, a in event.rooms.items()} == {
            r: set(a) for r, a in decoded["presence"].items()
        }
        for room, actors in decoded["presence"].items():
            for actor_id, entry in actors.items():
                assert event.rooms[room][actor_id].presence == entry["presence"]
                assert event.rooms[room][actor_id].joined_at == entry["joinedAt"]
    elif kind == "lobbyPresence":
        assert isinstance(event, p.LobbyPresence)
        assert (event.kind, event.lobby_id, event.room, event.actor_token_id) == (
            decoded["event"],
            decoded["lobbyId"],
            decoded["roomId"],
            decoded["actorId"],
        )
        assert event.presence == (None if event.kind == "leave" else decoded["data"])
    elif kind == "lobbyUnsubscribed":
        assert event == p.LobbyUnsubscribed(decoded["lobbyId"])
    else:
        assert isinstance(event, p.OtherFrame)
        assert event.type == kind


@needs_transcripts
def test_every_received_frame_of_every_transcript_decodes_to_its_event() -> None:
    seen: set[str] = set()
    frames = _frames("recv")
    assert len(frames) > 100
    for name, line in frames:
        payload = bytes.fromhex(line["hex"])
        event = p.decode_frame(payload)
        assert not isinstance(event, p.ProtocolError), (name, line["seq"], event)
        if not payload:
            assert isinstance(event, p.Heartbeat)
            seen.add("heartbeat")
            continue
        decoded = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        _expect(decoded, event)
        seen.add(decoded["type"])
    # every server frame type PROTOCOL.md lists for presence appears in the transcripts
    assert {
        "heartbeat",
        "auth",
        "presence",
        "presenceList",
        "error",
        "lobbySubscribed",
        "lobbyPresenceList",
        "lobbyPresence",
        "lobbyUnsubscribed",
    } <= seen


_ENCODERS = {
    "presence": lambda d: p.encode_presence(d["data"], d.get("roomId")),
    "getPresence": lambda d: p.encode_get_presence(d.get("roomId")),
    "lobbySubscribe": lambda d: p.encode_lobby_subscribe(d["lobbyId"]),
    "lobbyUnsubscribe": lambda d: p.encode_lobby_unsubscribe(d["lobbyId"]),
    "getLobbyPresence": lambda d: p.encode_get_lobby_presence(d["lobbyId"]),
}


@needs_transcripts
def test_encoders_produce_the_bytes_clients_sent_to_the_real_broker() -> None:
    matched = 0
    for _name, line in _frames("send"):
        payload = bytes.fromhex(line["hex"])
        if not payload:
            assert payload == p.HEARTBEAT
            continue
        try:
            decoded = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except Exception:
            continue  # the deliberately broken frames of transcript 07
        if not isinstance(decoded, dict) or decoded.get("type") not in _ENCODERS:
            continue
        if decoded["type"] == "presence" and (
            not isinstance(decoded.get("data"), dict)
            or list(decoded) != ["type", "roomId", "data"][: len(decoded)]
            or "roomId" not in decoded
            or decoded["roomId"] is None
        ):
            continue  # malformed on purpose (no data, nil room, non-map data)
        try:
            expected = _ENCODERS[decoded["type"]](decoded)
        except (TypeError, ValueError):
            continue
        if decoded["type"] == "presence" and any(
            isinstance(v, bytes) for v in decoded["data"].values()
        ):
            continue
        assert expected == payload, line["seq"]
        matched += 1
    assert matched > 50


@needs_transcripts
def test_auth_frames_match_the_transcript() -> None:
    sent = {
        (
            d["decoded"]["token"],
            d["decoded"].get("protocolVersion"),
            d["decoded"].get("reconnect"),
        ): bytes.fromhex(d["hex"])
        for _n, d in _frames("send")
        if isinstance(d.get("decoded"), dict)
        and d["decoded"].get("type") == "auth"
        and list(d["decoded"]) == ["type", "token", "protocolVersion"]
    }
    assert sent
    for (token, version, _), payload in sent.items():
        assert p.encode_auth(token, version) == payload


def test_auth_frame_carries_version_2_and_reconnect_only_when_asked() -> None:
    assert msgpack.unpackb(p.encode_auth("t")) == {
        "type": "auth",
        "token": "t",
        "protocolVersion": 2,
    }
    assert msgpack.unpackb(p.encode_auth("t", reconnect=True))["reconnect"] is True
    with pytest.raises(ValueError, match="token"):
        p.encode_auth("")


def test_project_level_presence_and_clear_frames() -> None:
    assert msgpack.unpackb(p.encode_presence({"a": 1})) == {"type": "presence", "data": {"a": 1}}
    assert msgpack.unpackb(p.encode_clear_presence("general")) == {
        "type": "presence",
        "roomId": "general",
        "data": {},
    }
    assert msgpack.unpackb(p.encode_get_presence()) == {"type": "getPresence"}


def test_both_key_casings_are_accepted() -> None:
    snake = p.decode_map(
        {"type": "presenceList", "room_id": "r", "data": [{"actor_token_id": "a", "joined_at": 5}]}
    )
    camel = p.decode_map(
        {"type": "presenceList", "roomId": "r", "data": [{"actorTokenId": "a", "joinedAt": 5}]}
    )
    assert snake == camel
    event = p.decode_map(
        {
            "type": "presence",
            "event": "join",
            "roomId": "r",
            "data": {"actorTokenId": "a", "presence": {}, "connectionId": "c1"},
        }
    )
    assert isinstance(event, p.PresenceEvent)
    assert (event.room, event.room_given, event.connection_id) == ("r", True, "c1")


def test_local_broker_project_level_events_say_room_none_explicitly() -> None:
    event = p.decode_map(
        {"type": "presence", "event": "update", "roomId": None, "data": {"actor_token_id": "a"}}
    )
    assert isinstance(event, p.PresenceEvent)
    assert event.room is None and event.room_given is True


def test_joined_at_in_milliseconds_is_normalised_to_seconds() -> None:
    lst = p.decode_map(
        {"type": "presenceList", "data": [{"actorTokenId": "a", "joinedAt": 1795861313000}]}
    )
    assert isinstance(lst, p.PresenceList)
    assert lst.entries[0].joined_at == 1795861313.0


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",
        b"\x82\xa4type",
        msgpack.packb([1, 2, 3]),
        msgpack.packb("hello"),
        msgpack.packb(None),
        msgpack.packb({"hello": "world"}),
        msgpack.packb({"type": "presence"}),
        msgpack.packb({"type": "presence", "event": "join", "data": "x"}),
        msgpack.packb({"type": "presence", "event": "wave", "data": {"actor_token_id": "a"}}),
        msgpack.packb({"type": "presence", "event": "join", "data": {"presence": {}}}),
        msgpack.packb({"type": "presenceList", "data": {"a": 1}}),
        msgpack.packb({"type": "presenceList", "data": [1]}),
        msgpack.packb({"type": "lobbySubscribed", "lobbyId": "l", "presence": [1]}),
        msgpack.packb({"type": "lobbyPresence", "event": "join", "lobbyId": "l"}),
        msgpack.packb({"type": "auth", "success": True}),
        msgpack.packb({1: 2}),
    ],
)
def test_garbage_becomes_a_protocol_error_value(payload: bytes) -> None:
    event = p.decode_frame(payload)
    assert isinstance(event, p.ProtocolError)
    assert event.reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_never_raise(payload: bytes) -> None:
    event = p.decode_frame(payload)
    assert event is not None


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["type", "event", "data", "roomId", "lobbyId", "actorId", "presence"]),
        st.sampled_from(
            ["presence", "presenceList", "auth", "lobbyPresence", "lobbySubscribed", "error"]
        )
        | _json,
        max_size=6,
    )
)
def test_random_frames_of_known_types_never_raise(frame: dict[str, Any]) -> None:
    event = p.decode_frame(msgpack.packb(frame))
    assert event is not None


def test_presence_data_validation_names_the_key_and_refuses_bytes() -> None:
    with pytest.raises(TypeError, match=r"\['avatar'\].*bytes"):
        p.validate_presence_data({"avatar": b"\x00\xff"}, 1024)
    with pytest.raises(TypeError, match=r"\['tags'\]\[1\].*set"):
        p.validate_presence_data({"tags": ["a", {1, 2}]}, 1024)
    with pytest.raises(TypeError, match="keys must be str"):
        p.validate_presence_data({"m": {1: "x"}}, 1024)
    with pytest.raises(TypeError, match="mapping"):
        p.validate_presence_data(["not", "a", "map"], 1024)
    with pytest.raises(TypeError, match="finite"):
        p.validate_presence_data({"x": float("nan")}, 1024)
    with pytest.raises(ValueError, match="max_presence_bytes limit of 64"):
        p.validate_presence_data({"blob": "x" * 100}, 64)
    plain, packed = p.validate_presence_data({"a": (1, 2), "b": {"c": None}}, 1024)
    assert plain == {"a": [1, 2], "b": {"c": None}}
    assert msgpack.unpackb(packed) == plain


@st.composite
def _presence_frames(draw: st.DrawFn) -> dict[str, Any]:
    """Presence frames near the real broker's plain shape, and some way off it."""
    kind = draw(st.sampled_from(["join", "update", "leave", "wave"]) | _json)
    data: Any = {
        draw(st.sampled_from(["actor_token_id", "actorTokenId"])): draw(
            st.sampled_from(["alice", ""]) | _json
        )
    }
    if draw(st.booleans()):
        data["presence"] = draw(_json)
    extras = st.sampled_from(["actorType", "connection_id"])
    data.update(draw(st.dictionaries(extras, st.sampled_from(["tab-1", "user"]) | _json)))
    frame = {"type": "presence", "event": kind, "data": draw(st.just(data) | _json)}
    frame.update(draw(st.dictionaries(st.sampled_from(["roomId", "extra"]), _json, max_size=1)))
    for key in draw(st.lists(st.sampled_from(["event", "data"]), max_size=1)):
        del frame[key]
    return frame


@settings(max_examples=500, deadline=None)
@given(st.lists(_presence_frames(), max_size=6))
def test_the_batch_decoder_s_inline_presence_path_matches_decode_map(
    frames: list[dict[str, Any]],
) -> None:
    """decode_frames decodes the real broker's plain presence event inline; whatever shape
    a presence frame has, the result must be exactly what the general decode_map gives."""
    payloads = [msgpack.packb(f) for f in frames]
    decoded = p.decode_frames(payloads)
    assert len(decoded) == len(frames)
    for got, payload in zip(decoded, payloads):
        want = p.decode_map(msgpack.unpackb(payload, strict_map_key=False))
        if isinstance(want, p.ProtocolError):
            assert got == p.ProtocolError(want.reason, payload[:256])
        else:  # repr, not ==: a NaN in the data is never equal to itself
            assert type(got) is type(want) and repr(got) == repr(want)


def test_a_batch_decodes_in_order_and_a_bad_frame_spoils_only_itself() -> None:
    join = msgpack.packb(
        {"type": "presence", "event": "join", "data": {"actor_token_id": "a", "presence": {}}}
    )
    leave = msgpack.packb({"type": "presence", "event": "leave", "data": {"actor_token_id": "a"}})
    decoded = p.decode_frames([join, b"\xc1", b"", leave])
    assert [type(f) for f in decoded] == [
        p.PresenceEvent,
        p.ProtocolError,
        p.Heartbeat,
        p.PresenceEvent,
    ]
    assert (decoded[0].kind, decoded[0].actor_token_id, decoded[0].presence) == ("join", "a", {})
    assert (decoded[3].kind, decoded[3].presence, decoded[3].room_given) == ("leave", None, False)
    assert p.decode_frames([]) == []
