"""Tunable limits of the local broker, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

DEFAULT_MAX_MESSAGE_BYTES = 921_600
"""Largest accepted message, as the real broker's MAX_MESSAGE_SIZE."""

DEFAULT_MAX_FRAME_BYTES = 1_048_576
"""Largest WebSocket frame; bigger ones close the socket with 1009 (as Kraken)."""

COMPAT_LOCAL = "local"
"""The local broker's own behaviour: Kraken's frames plus the compatible extensions."""
COMPAT_KRAKEN = "kraken"
"""Frames exactly as Kraken v0.4.0 sends them (no extensions, its lobby quirks); its
defects that crash or bypass limits are still not reproduced (see docs/brokers.md)."""
COMPAT_MODES = (COMPAT_LOCAL, COMPAT_KRAKEN)


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
    compat: str = COMPAT_LOCAL
    """``"local"`` (default) or ``"kraken"``: which broker's frames to send (docs/brokers.md)."""
    lobby_forget_after: float = 300.0
    """Kraken mode only: seconds after a lobby's last ``lobbySubscribe`` before the broker
    forgets the lobby's rooms (``getLobbyPresence`` then answers ``{}``, events stop), as
    Kraken does after about 300 s. Tests use about 1 s."""
    upgrade_timeout: float = 10.0
    """Seconds a TCP connection may take to send a complete HTTP request (the WebSocket
    upgrade, or a REST call); silent or slow connections are then closed. 0 disables."""
    auth_timeout: float = 20.0
    """Seconds a WebSocket may stay open without a successful ``auth``; heartbeats and
    refused auths do not extend it. Closed with 1008 ``auth_timeout``. 0 disables."""
    max_connections: int = 4096
    """Open TCP connections in total; more are answered HTTP 503. 0 = unlimited."""
    max_connections_per_address: int = 2048
    """Open TCP connections from one remote address; more are answered HTTP 503. 0 = unlimited."""
    max_connections_per_token: int = 256
    """Authenticated sockets of one token; one more is refused ``connection_limit_reached``
    and closed with 4002. 0 = unlimited."""
    max_auth_failures: int = 20
    """Refused auths one remote address may make per ``auth_failure_window`` (a burst of this
    many, then refilled evenly); past it, auths from the address are refused unchecked and
    the socket closed with 1008 ``auth_rate_limited``. 0 = unlimited."""
    auth_failure_window: float = 60.0
    """Seconds over which ``max_auth_failures`` refused auths are allowed."""

    @property
    def kraken(self) -> bool:
        """True in Kraken-compatible mode."""
        return self.compat == COMPAT_KRAKEN

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
        if self.compat not in COMPAT_MODES:
            raise ValueError(
                f"compat must be one of {', '.join(COMPAT_MODES)}, not {self.compat!r}"
            )
        for name in ("lobby_forget_after", "auth_failure_window"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("upgrade_timeout", "auth_timeout"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0 (0 disables it)")
        for name in (
            "max_connections",
            "max_connections_per_address",
            "max_connections_per_token",
            "max_auth_failures",
        ):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0 (0 means unlimited)")
        if self.rest_rate is not None and self.rest_rate < 0:
            raise ValueError("rest_rate must be >= 0")
        if self.max_message_bytes > self.max_frame_bytes:
            raise ValueError("max_message_bytes must not exceed max_frame_bytes")
