"""The REST endpoint over real HTTP: GET /v1/presence and /health."""

from __future__ import annotations

from typing import Any, Callable

import requests
from rawclient import RawClient

from nolag.broker import EmbeddedBroker

Connect = Callable[..., RawClient]


def get(broker: EmbeddedBroker, token: str | None, **params: Any) -> requests.Response:
    """GET /v1/presence with an optional bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(f"{broker.http_url}/v1/presence", params=params, headers=headers, timeout=5)


def enter(client: RawClient, data: dict[str, Any], room: str | None = "general") -> None:
    """Set presence (project level when ``room`` is None) and consume the own events."""
    frame: dict[str, Any] = {"type": "presence", "data": data}
    if room is not None:
        frame["roomId"] = room
    client.send(frame)
    client.recv_until(lambda f: f.get("event") == "update" and f["data"]["presence"] == data)


def test_health(broker: EmbeddedBroker) -> None:
    response = requests.get(f"{broker.http_url}/health", timeout=5)
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_room_list_merges_sockets_per_actor(broker: EmbeddedBroker, connect: Connect) -> None:
    phone, laptop = connect("dev-token-bob"), connect("dev-token-bob")
    sensor = connect("dev-token-sensor")
    enter(phone, {"device": "phone"})
    enter(sensor, {"temp": 21.5})
    enter(laptop, {"device": "laptop"})
    response = get(broker, "dev-token-alice", roomId="general")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["roomId"] == "general" and body["count"] == 2
    bob, sensor_1 = body["actors"]
    assert bob == {
        "actorTokenId": "bob",
        "actorType": "user",
        "presence": {"device": "laptop"},
        "joinedAt": bob["joinedAt"],
        "connections": 2,
    }
    assert sensor_1["actorType"] == "device" and sensor_1["connections"] == 1
    assert isinstance(bob["joinedAt"], int)
    phone.send({"type": "getPresence", "roomId": "general"})
    entries = phone.recv_type("presenceList")["data"]
    assert bob["joinedAt"] == min(e["joinedAt"] for e in entries if e["actorTokenId"] == "bob")
    empty = get(broker, "dev-token-alice", roomId="random").json()
    assert empty == {"roomId": "random", "actors": [], "count": 0}


def test_project_level_list(broker: EmbeddedBroker, connect: Connect) -> None:
    carol = connect("dev-token-carol")
    enter(carol, {"status": "online"}, room=None)
    body = get(broker, "dev-token-bob").json()
    assert body["roomId"] is None and body["count"] == 1
    assert body["actors"][0]["actorTokenId"] == "carol"
    assert get(broker, "dev-token-mallory").json() == {"roomId": None, "actors": [], "count": 0}


def test_authentication_errors(broker: EmbeddedBroker) -> None:
    missing = get(broker, None)
    assert missing.status_code == 401 and missing.json()["error"] == "not_authenticated"
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    bad = get(broker, "not-a-real-token", roomId="general")
    assert bad.status_code == 401 and bad.json() == {"error": "access_denied"}
    basic = requests.get(
        f"{broker.http_url}/v1/presence", headers={"Authorization": "Basic eA=="}, timeout=5
    )
    assert basic.status_code == 401


def test_rooms_the_token_may_not_see(broker: EmbeddedBroker, connect: Connect) -> None:
    enter(connect("dev-token-bob"), {"secret": True}, room="random")
    forbidden = get(broker, "dev-token-erin", roomId="random")
    assert forbidden.status_code == 403
    assert forbidden.json() == {"error": "not_authorized", "roomId": "random"}
    for room in ("nosuch", "room-general", ""):
        unknown = get(broker, "dev-token-alice", roomId=room)
        assert unknown.status_code == 403, room  # never 404: that means "no REST endpoint"
        assert unknown.json()["error"] == "unknown_topic" and unknown.json()["code"] == 42940
    isolated = get(broker, "dev-token-mallory", roomId="general").json()
    assert isolated["count"] == 0


def test_rate_limit_answers_429_with_retry_after(broker: EmbeddedBroker) -> None:
    statuses = [get(broker, "dev-token-slow").status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    limited = get(broker, "dev-token-slow")
    assert limited.status_code == 429
    assert limited.json() == {"error": "rate_limit_exceeded", "code": 42910}
    assert int(limited.headers["Retry-After"]) >= 1
    assert get(broker, "dev-token-alice").status_code == 200  # per token


def test_unknown_paths_and_methods(broker: EmbeddedBroker) -> None:
    assert requests.get(f"{broker.http_url}/v1/nothing", timeout=5).status_code == 404
    posted = requests.post(f"{broker.http_url}/v1/presence", timeout=5)
    assert posted.status_code == 405
