"""The built-in development token document, used by ``nolag broker`` without ``--tokens``.

Well-known tokens (``dev-token-alice`` ...) make the Quickstart work from an installed
package, with no file to copy. They are public knowledge, so the broker serves them on a
loopback address only (the command line refuses another ``--host`` without ``--tokens``).
The actors, rooms and lobby are those of the repository's ``tests/fixtures/tokens.json``.
"""

from __future__ import annotations

from typing import Any

DEV_PROJECT_ID = "demo-project"
DEV_ROOMS = ("general", "random")
DEV_LOBBY = "main"
#: token → (actor id, actor type)
DEV_ACTORS: dict[str, tuple[str, str]] = {
    "dev-token-alice": ("alice", "user"),
    "dev-token-bob": ("bob", "user"),
    "dev-token-carol": ("carol", "user"),
    "dev-token-dave": ("dave", "user"),
    "dev-token-backend": ("backend", "server"),
    "dev-token-sensor": ("sensor-1", "device"),
}


def dev_token_document() -> dict[str, Any]:
    """The token document (static-auth format plus the lobby map) of the dev setup.

    Every actor may use the rooms ``general`` and ``random`` and the lobby ``main``
    spanning both, at 50 messages per second.
    """
    topics = [
        {
            "pattern": f"demo/{room}/#",
            "topic": f"demo-{room}",
            "permission": "pubSub",
            "room_id": f"room-{room}",
            "room_slug": room,
            "app_id": "demo",
            "app_name": "demo",
        }
        for room in DEV_ROOMS
    ]
    tokens = {
        token: {
            "actorTokenId": actor,
            "projectId": DEV_PROJECT_ID,
            "organizationId": "demo-org",
            "actorType": actor_type,
            "rateLimit": 50,
            "allowedTopics": topics,
            "allowedLobbies": [{"lobby_slug": DEV_LOBBY, "lobby_id": f"lobby-{DEV_LOBBY}"}],
        }
        for token, (actor, actor_type) in DEV_ACTORS.items()
    }
    lobbies = {f"lobby-{DEV_LOBBY}": {"slug": DEV_LOBBY, "rooms": [f"room-{r}" for r in DEV_ROOMS]}}
    return {"tokens": tokens, "lobbies": lobbies}


def describe() -> str:
    """A few lines telling a developer which tokens the dev setup accepts."""
    actors = ", ".join(f"{token} ({actor})" for token, (actor, _) in DEV_ACTORS.items())
    return (
        "DEVELOPMENT TOKENS (no --tokens given; loopback only): "
        f"{actors}; rooms {', '.join(DEV_ROOMS)}; lobby {DEV_LOBBY}"
    )
