"""Token file loading and the room / lobby authorisation lookups built from it.

The file has the open-source Kraken broker's static-auth format (``tokens`` → actor,
project, actor type, rate limit, ``allowedTopics`` with ``room_slug`` / ``room_id``,
``allowedLobbies``) plus a top-level ``lobbies`` map (lobby id → slug and room ids).

A project's rooms are the ``room_slug`` values of its tokens; clients always name rooms
by slug, so an internal ``room_id`` is just an unknown slug. In allow-all mode, tokens
declared in the file keep their identity and rules; any other non-empty token becomes
an actor named by the token, of project ``dev``, type ``user``, allowed every room and
every lobby declared in the file.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

logger = logging.getLogger("nolag.broker")

DEV_PROJECT = "dev"
"""Project of every identity that allow-all mode makes up."""


class TokenFileError(ValueError):
    """The token file is missing, not JSON, or not in the expected shape."""


class RoomAccess(enum.Enum):
    """Outcome of checking a room slug against a token."""

    ALLOWED = "allowed"
    FORBIDDEN = "forbidden"
    """The project has this room, but the token may not use it."""
    UNKNOWN = "unknown"
    """The project has no room with this slug (internal room ids are not slugs)."""


@dataclass(frozen=True)
class Identity:
    """Who an authenticated token is, and what it may use; never holds the token."""

    actor_token_id: str
    project_id: str
    actor_type: str
    rate_limit: float
    """Messages per second on one connection, and REST requests per second; 0 = unlimited."""
    rooms: frozenset[str] = frozenset()
    """Room slugs the token may use."""
    lobbies: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Lobby slug → lobby id, for the lobbies the token may use."""
    allow_all: bool = False
    """Made up by allow-all mode: every room and every declared lobby is allowed."""
    rate_key: str = field(default="", repr=False)
    """An opaque per-token key (a digest prefix) for per-token rate limits."""


@dataclass(frozen=True)
class LobbyDef:
    """A lobby as declared in the token file's ``lobbies`` map."""

    lobby_id: str
    slug: str
    room_ids: tuple[str, ...]


@dataclass(frozen=True)
class LobbyView:
    """A lobby as one project sees it: its rooms as slugs of that project."""

    project_id: str
    lobby_id: str
    slug: str
    rooms: tuple[str, ...]


def _digest(token: str) -> bytes:
    """Hash a token so lookups compare fixed-size digests, not secrets."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenStore:
    """Authenticates tokens in constant time and answers room and lobby checks."""

    def __init__(
        self,
        entries: Sequence[tuple[bytes, Identity]] = (),
        project_rooms: Mapping[str, Mapping[str, str]] | None = None,
        lobbies: Mapping[str, LobbyDef] | None = None,
        *,
        allow_all: bool = False,
        default_rate_limit: float = 50.0,
    ) -> None:
        """Build from token digests and identities; ``project_rooms`` is project → slug → id."""
        self._entries = list(entries)
        self._project_rooms = {p: dict(r) for p, r in (project_rooms or {}).items()}
        self._lobbies = dict(lobbies or {})
        self.allow_all = allow_all
        self._default_rate_limit = default_rate_limit
        self._room_slug_by_id: dict[tuple[str, str], str] = {}
        self._any_slug_by_id: dict[str, str] = {}
        for project, rooms in self._project_rooms.items():
            for slug, room_id in rooms.items():
                self._room_slug_by_id[(project, room_id)] = slug
                self._any_slug_by_id.setdefault(room_id, slug)

    def __len__(self) -> int:
        """Number of tokens declared in the file."""
        return len(self._entries)

    def with_allow_all(self, allow_all: bool = True) -> TokenStore:
        """Return a copy with allow-all mode switched on or off."""
        store = TokenStore(
            self._entries,
            self._project_rooms,
            self._lobbies,
            allow_all=allow_all,
            default_rate_limit=self._default_rate_limit,
        )
        return store

    def authenticate(self, token: str) -> Identity | None:
        """Return the token's identity, or None; compares against every digest, no early exit."""
        if not isinstance(token, str) or not token:
            return None
        digest = _digest(token)
        found: Identity | None = None
        for candidate, identity in self._entries:
            if hmac.compare_digest(candidate, digest) and found is None:
                found = identity
        if found is None and self.allow_all:
            found = Identity(
                actor_token_id=token,
                project_id=DEV_PROJECT,
                actor_type="user",
                rate_limit=self._default_rate_limit,
                allow_all=True,
                rate_key=digest.hex()[:32],
            )
        return found

    def check_room(self, identity: Identity, slug: str) -> RoomAccess:
        """Tell whether ``identity`` may use the room ``slug`` of its own project."""
        if not slug:
            return RoomAccess.UNKNOWN
        if identity.allow_all or slug in identity.rooms:
            return RoomAccess.ALLOWED
        if slug in self._project_rooms.get(identity.project_id, {}):
            return RoomAccess.FORBIDDEN
        return RoomAccess.UNKNOWN

    def lobby(self, identity: Identity, slug: str) -> LobbyView | None:
        """Return the lobby ``slug`` as the identity's project sees it, or None if not allowed."""
        if identity.allow_all:
            lobby = next((lb for lb in self._lobbies.values() if lb.slug == slug), None)
            if lobby is None:
                return None
            rooms = [self._any_slug_by_id.get(rid) for rid in lobby.room_ids]
        else:
            lobby_id = identity.lobbies.get(slug)
            lobby = self._lobbies.get(lobby_id) if lobby_id is not None else None
            if lobby is None:
                return None
            rooms = [
                self._room_slug_by_id.get((identity.project_id, rid)) for rid in lobby.room_ids
            ]
        return LobbyView(
            project_id=identity.project_id,
            lobby_id=lobby.lobby_id,
            slug=slug,
            rooms=tuple(dict.fromkeys(r for r in rooms if r is not None)),
        )


def _str_field(obj: Mapping[str, Any], key: str, where: str) -> str:
    """Read a required non-empty string field or raise a TokenFileError naming it."""
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise TokenFileError(f"{where}: '{key}' must be a non-empty string")
    return value


def _parse_token(
    index: int, entry: Any, project_rooms: dict[str, dict[str, str]], default_rate: float
) -> Identity:
    """Turn one token entry into an Identity, recording its rooms in ``project_rooms``."""
    where = f"tokens[#{index}]"
    if not isinstance(entry, dict):
        raise TokenFileError(f"{where}: must be an object")
    actor = _str_field(entry, "actorTokenId", where)
    project = _str_field(entry, "projectId", where)
    actor_type = entry.get("actorType", "user")
    if not isinstance(actor_type, str) or not actor_type:
        raise TokenFileError(f"{where}: 'actorType' must be a non-empty string")
    rate = entry.get("rateLimit", default_rate)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TokenFileError(f"{where}: 'rateLimit' must be a number")
    rooms: set[str] = set()
    known = project_rooms.setdefault(project, {})
    for topic in entry.get("allowedTopics") or []:
        if not isinstance(topic, dict):
            raise TokenFileError(f"{where}: allowedTopics entries must be objects")
        slug, room_id = topic.get("room_slug"), topic.get("room_id")
        if not isinstance(slug, str) or not slug:
            continue  # a pure pub/sub topic rule names no room
        if not isinstance(room_id, str) or not room_id:
            room_id = slug
        if known.setdefault(slug, room_id) != room_id:
            logger.warning(
                "%s: room slug %r of project %r has two room ids; keeping %r",
                where,
                slug,
                project,
                known[slug],
            )
        rooms.add(slug)
    lobbies: dict[str, str] = {}
    for lobby in entry.get("allowedLobbies") or []:
        if not isinstance(lobby, dict):
            raise TokenFileError(f"{where}: allowedLobbies entries must be objects")
        lobbies[_str_field(lobby, "lobby_slug", where)] = _str_field(lobby, "lobby_id", where)
    return Identity(
        actor_token_id=actor,
        project_id=project,
        actor_type=actor_type,
        rate_limit=float(rate) if rate > 0 else 0.0,
        rooms=frozenset(rooms),
        lobbies=MappingProxyType(lobbies),
    )


def _parse_lobbies(raw: Any) -> dict[str, LobbyDef]:
    """Parse the top-level ``lobbies`` map (lobby id → {slug, rooms})."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TokenFileError("'lobbies' must be an object")
    lobbies: dict[str, LobbyDef] = {}
    for lobby_id, body in raw.items():
        where = f"lobbies[{lobby_id!r}]"
        if not isinstance(body, dict):
            raise TokenFileError(f"{where}: must be an object")
        rooms = body.get("rooms") or []
        if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
            raise TokenFileError(f"{where}: 'rooms' must be a list of room ids")
        lobbies[lobby_id] = LobbyDef(lobby_id, _str_field(body, "slug", where), tuple(rooms))
    return lobbies


def parse_tokens(
    document: Any, *, allow_all: bool = False, default_rate_limit: float = 50.0
) -> TokenStore:
    """Build a TokenStore from an already-parsed token document."""
    if not isinstance(document, dict) or not isinstance(document.get("tokens", {}), dict):
        raise TokenFileError("the token file must be an object with a 'tokens' object")
    project_rooms: dict[str, dict[str, str]] = {}
    entries: list[tuple[bytes, Identity]] = []
    for index, (token, entry) in enumerate(document.get("tokens", {}).items()):
        if not token:
            raise TokenFileError(f"tokens[#{index}]: empty token")
        identity = _parse_token(index, entry, project_rooms, default_rate_limit)
        digest = _digest(token)
        entries.append((digest, replace(identity, rate_key=digest.hex()[:32])))
    lobbies = _parse_lobbies(document.get("lobbies"))
    for _, identity in entries:
        for slug, lobby_id in identity.lobbies.items():
            if lobby_id not in lobbies:
                logger.warning(
                    "actor %r may use lobby %r (%s), which 'lobbies' does not declare",
                    identity.actor_token_id,
                    slug,
                    lobby_id,
                )
    return TokenStore(
        entries, project_rooms, lobbies, allow_all=allow_all, default_rate_limit=default_rate_limit
    )


def load_tokens(
    path: str | Path | None = None,
    *,
    allow_all: bool = False,
    default_rate_limit: float = 50.0,
) -> TokenStore:
    """Load a token file (Kraken's static-auth format); None gives an empty store."""
    if path is None:
        return TokenStore(allow_all=allow_all, default_rate_limit=default_rate_limit)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TokenFileError(f"cannot read token file {str(path)!r}: {exc.strerror}") from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise TokenFileError(f"token file {str(path)!r} is not valid JSON: {exc}") from exc
    return parse_tokens(document, allow_all=allow_all, default_rate_limit=default_rate_limit)
