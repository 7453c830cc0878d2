"""The REST presence endpoint's logic, sans-IO: headers and query in, status and JSON out.

``GET /v1/presence[?roomId=<slug>]`` with ``Authorization: Bearer <token>``:

- 200 ``{"roomId": slug-or-null, "actors": [...], "count": N}``, one entry per *actor*
  (its sockets merged: earliest ``joinedAt``, most recently set presence,
  ``connections`` = number of sockets);
- 401 for a missing or refused token, 429 with ``Retry-After`` past the per-token rate
  (``BrokerConfig.rest_rate`` requests per second, by default the token's ``rateLimit``);
- 403 for a room the token may not use, and also for an unknown room (``unknown_topic``),
  never 404: the SDK reads a 404 as "this server has no REST endpoint".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from . import frames
from .core import BrokerCore
from .ratelimit import TokenBucket
from .tokens import RoomAccess

MAX_TRACKED_TOKENS = 4096
"""Per-token REST buckets kept before idle (full) ones are forgotten."""


@dataclass(frozen=True)
class RestReply:
    """What to answer: HTTP status, JSON body and extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def bearer_token(authorization: Optional[str]) -> Optional[str]:
    """Extract the token from an ``Authorization: Bearer <token>`` header value."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class RestPresence:
    """Answers presence requests from the core's registry, with per-token rate limits."""

    def __init__(self, core: BrokerCore) -> None:
        """Serve the registry of ``core``."""
        self._core = core
        self._buckets: dict[str, TokenBucket] = {}

    def _bucket(self, key: str, rate: float, now: float) -> TokenBucket:
        """The token's bucket, created full; idle buckets are pruned when too many."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_TOKENS:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full(now)}
            bucket = self._buckets[key] = TokenBucket(rate, now)
        return bucket

    def presence(self, authorization: Optional[str], room: Optional[str]) -> RestReply:
        """Answer ``GET /v1/presence``; ``room`` None means the project-level list."""
        token = bearer_token(authorization)
        unauthorized = {"WWW-Authenticate": "Bearer"}
        if token is None:
            return RestReply(
                401,
                {"error": frames.NOT_AUTHENTICATED, "hint": "send 'Authorization: Bearer <token>'"},
                unauthorized,
            )
        identity = self._core.tokens.authenticate(token)
        if identity is None:
            return RestReply(401, {"error": frames.ACCESS_DENIED}, unauthorized)
        now = self._core.mono()
        rest_rate = self._core.config.rest_rate
        rate = identity.rate_limit if rest_rate is None else rest_rate
        bucket = self._bucket(identity.rate_key, rate, now)
        if not bucket.take(now):
            wait = max(1, math.ceil(bucket.retry_after(now)))
            return RestReply(
                429,
                {"error": frames.RATE_LIMIT_EXCEEDED, "code": frames.CODE_RATE_LIMIT},
                {"Retry-After": str(wait)},
            )
        if room is not None:
            access = self._core.tokens.check_room(identity, room)
            if access is RoomAccess.FORBIDDEN:
                return RestReply(403, {"error": frames.NOT_AUTHORIZED, "roomId": room})
            if access is RoomAccess.UNKNOWN:
                return RestReply(
                    403,
                    {
                        "error": frames.UNKNOWN_TOPIC,
                        "code": frames.CODE_UNKNOWN_TOPIC,
                        "roomId": room,
                        "hint": frames.UNKNOWN_ROOM_HINT,
                    },
                )
        actors = [
            {
                "actorTokenId": a.actor_id,
                "actorType": a.actor_type,
                "presence": a.presence,
                "joinedAt": a.joined_at,
                "connections": a.connections,
            }
            for a in self._core.registry.actors(identity.project_id, room)
        ]
        return RestReply(200, {"roomId": room, "actors": actors, "count": len(actors)})
