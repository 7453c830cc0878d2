"""Limits and bad input over real sockets: rate, size, 1009, transcript 07, slow consumers."""

from __future__ import annotations

import re
import time
from typing import Any, Callable

import msgpack
import pytest
from rawclient import RawClient

from nolag.broker import EmbeddedBroker

Connect = Callable[..., RawClient]
Records = list[dict[str, Any]]


def kind(frame: Any) -> str:
    """A short name for an answer: ``error:<name>``, ``presence:<event>``, or the type."""
    if frame == b"":
        return "heartbeat"
    if frame.get("type") == "error":
        return f"error:{frame['error']}"
    if frame.get("type") == "presence":
        return f"presence:{frame['event']}"
    return str(frame.get("type"))


def join_room(client: RawClient, room: str = "general", data: Any = None) -> None:
    """Enter a room and consume the own join + update."""
    client.send({"type": "presence", "roomId": room, "data": data or {"n": "observer"}})
    assert [kind(f) for f in (client.recv(), client.recv())] == ["presence:join", "presence:update"]


# -- rate -------------------------------------------------------------------------------


def test_rate_limit_applies_to_presence_and_spares_heartbeats(connect: Connect) -> None:
    observer = connect("dev-token-bob")
    join_room(observer)
    slow = connect("dev-token-slow")  # rateLimit 3
    for n in range(6):
        slow.send({"type": "presence", "roomId": "general", "data": {"n": n}})
    answers = [kind(slow.recv()) for _ in range(7)]
    assert (
        answers
        == ["presence:join", "presence:update", "presence:update", "presence:update"]
        + ["error:rate_limit_exceeded"] * 3
    )
    seen = [f["data"]["presence"]["n"] for f in observer.drain(0.3)]
    assert seen == [0, 0, 1, 2]  # the dropped frames were not applied
    for _ in range(10):
        slow.send_raw(b"")
    assert [slow.recv() for _ in range(10)] == [b""] * 10
    # heartbeats were free, list requests are not: a quick burst of them is cut at the rate
    # (five sent at once against 3/s; asserting on one exact reply would race the refill)
    err = {"type": "error", "error": "rate_limit_exceeded", "code": 42910, "roomId": "general"}
    for _ in range(5):
        slow.send({"type": "getPresence", "roomId": "general"})
    assert err in [slow.recv() for _ in range(5)]
    time.sleep(1.05)
    slow.send({"type": "getPresence", "roomId": "general"})
    assert slow.recv()["type"] == "presenceList"


# -- size -------------------------------------------------------------------------------


def test_message_over_the_limit_gets_an_error_and_is_dropped(connect: Connect) -> None:
    observer = connect("dev-token-bob")
    join_room(observer)
    sender = connect("dev-token-fast")
    blob = {"type": "presence", "roomId": "general", "data": {"blob": "x" * 950_000}}
    sender.send(blob)
    assert sender.recv(10) == {
        "type": "error",
        "error": "message_too_large",
        "code": 42930,
        "maxSizeBytes": 921600,
    }
    observer.expect_silence(0.3)
    sender.send({"type": "publish", "topic": "demo/general/messages", "data": "y" * 950_000})
    assert kind(sender.recv(10)) == "error:message_too_large"
    join_room(sender, data={"blob": "z" * 900_000})  # under the limit still works
    assert observer.recv(10)["event"] == "join"


def test_configured_message_limit(make_broker: Callable[..., EmbeddedBroker]) -> None:
    broker = make_broker(max_message_bytes=1000)
    with RawClient(broker.url) as client:
        client.auth("dev-token-fast")
        client.send({"type": "presence", "roomId": "general", "data": {"b": "x" * 2000}})
        assert client.recv() == {
            "type": "error",
            "error": "message_too_large",
            "code": 42930,
            "maxSizeBytes": 1000,
        }
        join_room(client, data={"b": "x" * 900})


def test_frame_over_one_mebibyte_closes_with_1009(connect: Connect) -> None:
    observer = connect("dev-token-bob")
    join_room(observer)
    big = connect("dev-token-fast")
    join_room(big)
    observer.recv()
    observer.recv()
    big.send({"type": "presence", "roomId": "general", "data": {"blob": "y" * 1_050_000}})
    assert big.wait_closed(10) == 1009
    leave = observer.recv(5)
    assert kind(leave) == "presence:leave" and leave["data"]["actor_token_id"] == "fast"


# -- transcript 07: every bad frame gets a defined answer ---------------------------------

# What the sender itself must receive for each frame it sent in transcript 07.
ANSWERS_07: dict[int, list[str]] = {
    9: ["error:not_authenticated"],
    12: ["error:not_authenticated"],
    14: ["auth"],
    17: ["error:invalid_message"],
    19: ["error:invalid_message"],
    21: ["error:invalid_message"],
    22: ["error:invalid_message"],
    23: ["error:invalid_message"],
    24: ["error:invalid_message"],
    26: ["error:invalid_message"],
    27: ["error:invalid_message"],
    28: ["error:invalid_presence"],
    29: ["error:unsupported"],
    31: ["presence:join", "presence:update"],  # valid JSON text, accepted like Kraken
    37: ["presenceList"],
    40: ["error:invalid_message"],
    42: ["error:invalid_presence"],
    45: ["error:invalid_presence"],
    48: ["error:invalid_presence"],
    51: ["presence:update"],  # nil data: an update to nil, as Kraken (issue 14)
    55: ["error:invalid_presence"],  # holds a bin (and an int key)
    59: ["error:invalid_message"],  # invalid JSON: Kraken closed with 1011
    66: ["auth"],  # P2's auth: here a second auth (same token) on the still open socket
    68: ["presence:update"],
    74: ["error:invalid_presence"],  # non-UTF-8 bin: Kraken crashed every receiver
    89: ["auth"],
    92: ["error:message_too_large"],  # presence: Kraken broadcast it
    98: ["error:message_too_large"],
}
_TRUNCATED = re.compile(r"^(.)\1*\.\.\.<truncated, (\d+) chars>$", re.S)


def rebuild(value: Any) -> Any:
    """Undo the transcript's truncation of long strings inside a decoded frame."""
    if isinstance(value, dict):
        return {k: rebuild(v) for k, v in value.items()}
    if isinstance(value, str):
        match = _TRUNCATED.match(value)
        if match:
            return match.group(1) * int(match.group(2))
    return value


def payload(rec: dict[str, Any]) -> bytes:
    """The exact bytes a transcript client sent (rebuilt when the capture was truncated)."""
    if not rec.get("hex_truncated"):
        return bytes.fromhex(rec["hex"])
    data: bytes = msgpack.packb(rebuild(rec["decoded"]), use_bin_type=True)
    assert len(data) == rec["len"]
    return data


def send_rec(client: RawClient, rec: dict[str, Any]) -> None:
    """Send one recorded client frame verbatim."""
    if rec["opcode"] == "text":
        client.send_text(payload(rec).decode())
    else:
        client.send_raw(payload(rec))


def test_every_frame_of_transcript_07_gets_a_defined_answer(
    connect: Connect, transcript: Callable[[str], Records]
) -> None:
    records = transcript("07")
    sends = [r for r in records if r["dir"] == "send" and r["opcode"] != "close"]
    observer = connect("tok-actor-030")
    join_room(observer, data={"name": "observer"})
    sender = connect()  # P, P2 and P3 of the capture share this one socket
    observed: list[Any] = []
    for rec in sends:
        if not rec["conn"].startswith("P"):
            continue
        send_rec(sender, rec)
        if rec["seq"] == 101:  # over the 1 MiB frame cap
            assert sender.wait_closed(10) == 1009
            break
        got = [kind(sender.recv(10)) for _ in ANSWERS_07[rec["seq"]]]
        assert got == ANSWERS_07[rec["seq"]], f"seq {rec['seq']}"
        observed += observer.drain(0.05)
    assert set(ANSWERS_07) <= {r["seq"] for r in sends}
    observed += observer.drain(0.2)
    assert [(kind(f), f["data"]["actor_token_id"]) for f in observed] == [
        ("presence:join", "actor-031"),
        ("presence:update", "actor-031"),  # seq 31
        ("presence:update", "actor-031"),  # 51: nil data
        ("presence:update", "actor-031"),  # 68 (66, a second auth, changed nothing)
        ("presence:leave", "actor-031"),  # 101: closed with 1009
    ]

    # R: 55 presence frames as fast as possible, then 55 publishes.
    burst = connect("tok-actor-032")
    r_sends = [r for r in sends if r["conn"].startswith("R")]
    presences = [r for r in r_sends if b"presence" in payload(r)]
    publishes = [r for r in r_sends if b"publish" in payload(r)]
    assert (len(presences), len(publishes)) == (55, 55)
    for rec in presences:
        send_rec(burst, rec)
    accepted = 0
    answers = []
    for _ in presences:
        answer = kind(burst.recv())
        if answer == "presence:join":
            assert kind(burst.recv()) == "presence:update"
        answers.append(answer)
        accepted += answer != "error:rate_limit_exceeded"
    assert set(answers) <= {"presence:join", "presence:update", "error:rate_limit_exceeded"}
    assert accepted >= 50
    for rec in publishes:
        send_rec(burst, rec)
    answers = [kind(burst.recv()) for _ in publishes]
    assert set(answers) <= {"error:unsupported", "error:rate_limit_exceeded"}
    # the observer kept receiving normally: a join + update, then one update per accepted frame
    updates = [f for f in observer.drain(0.3) if f["data"]["actor_token_id"] == "actor-032"]
    assert len(updates) == accepted + 1
    observer.send({"type": "getPresence", "roomId": "general"})
    assert [e["actorTokenId"] for e in observer.recv()["data"]] == ["actor-030", "actor-032"]


# -- slow consumers -----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_consumer_that_stops_reading_is_closed_not_waited_for(
    make_broker: Callable[..., EmbeddedBroker],
) -> None:
    broker = make_broker(max_outbox_bytes=256 * 1024)
    stuck, writer, reader = (RawClient(broker.url, timeout=10) for _ in range(3))
    try:
        for client in (stuck, writer, reader):
            client.auth("dev-token-fast")
        stuck.send({"type": "presence", "roomId": "general", "data": {"who": "stuck"}})
        stuck_id = stuck.recv()["data"]["connectionId"]
        for client in (writer, reader):
            join_room(client)
        reader.drain(0.2)
        writer.drain(0.1)
        blob = "w" * 64_000
        seen: list[Any] = []

        def next_update(client: RawClient) -> int:
            frame, skipped = client.recv_until(lambda f: f["event"] == "update")
            seen.extend(skipped)
            n: int = frame["data"]["presence"]["n"]
            return n

        for n in range(400):
            writer.send({"type": "presence", "roomId": "general", "data": {"n": n, "b": blob}})
            assert next_update(writer) == n  # its own update, in order
            assert next_update(reader) == n  # others are not stalled
            if broker.connection_count() == 2:
                break
        assert broker.connection_count() == 2, "the stuck consumer was never closed"
        seen += reader.drain(0.3)
        leaves = [f["data"]["connectionId"] for f in seen if f["event"] == "leave"]
        assert stuck_id in leaves
        writer.send({"type": "getPresence", "roomId": "general"})
        assert len(writer.recv_type("presenceList")["data"]) == 2
    finally:
        for client in (stuck, writer, reader):
            client.abort()
