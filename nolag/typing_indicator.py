"""A debounced typing indicator on top of presence: keystrokes in, isTyping out.

``keystroke()`` shows ``isTyping: true`` at once and at most once per `min_interval`
while typing goes on; ``idle`` seconds after the last keystroke (or on ``stop()``) it
shows ``isTyping: false``. The other presence fields are kept as they are: each update
is the client's current own presence with only the typing key changed.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Optional, Union

from nolag._io.loop import TimerHandle, shared_loop
from nolag.rooms import Room, RoomPort

if TYPE_CHECKING:
    from nolag.client import NoLag

__all__ = ["TypingIndicator"]


class TypingIndicator:
    """Turns keystrokes into isTyping presence updates for a client or a room; thread-safe."""

    def __init__(
        self,
        target: Union[NoLag, Room],
        idle: float = 3.0,
        min_interval: float = 1.0,
        key: str = "isTyping",
    ) -> None:
        for name, value in (("idle", idle), ("min_interval", min_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty str, got {key!r}")
        self._client: RoomPort
        self._room: Optional[str]
        if isinstance(target, Room):
            self._client, self._room = target.client, target.slug
        else:
            self._client, self._room = target, target.options.default_room
        self.idle = float(idle)
        self.min_interval = float(min_interval)
        self.key = key
        self._lock = threading.Lock()
        self._typing = False
        self._last_sent = 0.0
        self._timer: Optional[TimerHandle] = None

    @property
    def typing(self) -> bool:
        """True between a keystroke and the idle timeout (or stop())."""
        return self._typing

    def keystroke(self) -> None:
        """Note a keystroke: show typing (rate-limited) and restart the idle countdown."""
        with self._lock:
            now = time.monotonic()
            if not self._typing or now - self._last_sent >= self.min_interval:
                self._typing = True
                self._last_sent = now
                self._publish(True)
            if self._timer is not None:
                self._timer.cancel()
            self._timer = shared_loop().call_later(self.idle, self._expire)

    def stop(self) -> None:
        """Show that typing stopped now (e.g. the message was sent). Idempotent."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._typing:
                self._typing = False
                self._publish(False)

    def _expire(self) -> None:
        with self._lock:
            self._timer = None
            if self._typing:
                self._typing = False
                self._publish(False)

    def _publish(self, typing: bool) -> None:
        """Set presence: the current own presence with only the typing key changed."""
        base = self._client.own_presence(self._room) or {}
        self._client.set_presence({**base, self.key: typing}, room=self._room)

    def __enter__(self) -> TypingIndicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
