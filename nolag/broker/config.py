"""Tunable limits of the local broker, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

DEFAULT_MAX_MESSAGE_BYTES = 921_600
"""Largest accepted message, as the real broker's MAX_MESSAGE_SIZE."""

DEFAULT_MAX_FRAME_BYTES = 1_048_576
"""Largest WebSocket frame; bigger ones close the socket with 1009 (as Kraken)."""


@dataclass(frozen=True)
class BrokerConfig:
    """Limits and timeouts; every field has the real broker's default where it has one."""

    idle_timeout: float = 60.0
    """Seconds without any frame from a client before the socket is closed with 1000."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Frames above this get a ``message_too_large`` error frame and are dropped."""
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    """Frames above this close the socket with 1009."""
    default_rate_limit: float = 50.0
    """Messages per second for a token without ``rateLimit`` and before authentication."""
    max_outbox_bytes: int = 16 * 1024 * 1024
    """Bytes queued for one socket before it counts as a hopelessly slow consumer."""
    max_outbox_frames: int = 10_000
    """Frames queued for one socket before it counts as a hopelessly slow consumer."""
    close_timeout: float = 2.0
    """Seconds to wait for a client's close frame after the server sent its own."""
    rest_rate: Optional[float] = None
    """REST requests per second per token (0 = unlimited); None uses the token's rateLimit."""

    def __post_init__(self) -> None:
        """Refuse nonsensical limits early, with the field's name in the message."""
        for name in ("idle_timeout", "close_timeout", "default_rate_limit"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in (
            "max_message_bytes",
            "max_frame_bytes",
            "max_outbox_bytes",
            "max_outbox_frames",
        ):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.rest_rate is not None and self.rest_rate < 0:
            raise ValueError("rest_rate must be >= 0")
        if self.max_message_bytes > self.max_frame_bytes:
            raise ValueError("max_message_bytes must not exceed max_frame_bytes")
