"""A bounded per-socket queue of encoded frames, so one slow reader never stalls the others."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Optional


class Outbox:
    """FIFO of frames for one socket's writer task, bounded in bytes and in frames.

    ``put`` never blocks: when a bound would be exceeded it refuses, and the caller
    closes the socket as a hopelessly slow consumer.
    """

    def __init__(self, max_bytes: int, max_frames: int) -> None:
        """Create an empty outbox; must be called from the event loop's thread."""
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._max_frames = max_frames
        self._closed = False
        self._ready = asyncio.Event()

    @property
    def closed(self) -> bool:
        """True once closed; puts are then dropped."""
        return self._closed

    def __len__(self) -> int:
        """Frames waiting to be written."""
        return len(self._frames)

    def put(self, frame: bytes) -> bool:
        """Queue a frame; False when closed or a bound would be exceeded (frame not queued)."""
        if self._closed:
            return False
        cost = len(frame) + 64
        over = len(self._frames) >= self._max_frames or self._bytes + cost > self._max_bytes
        if over and self._frames:  # a single oversized frame into an empty outbox still goes
            return False
        self._frames.append(frame)
        self._bytes += cost
        self._ready.set()
        return True

    def close(self, *, discard: bool = False) -> None:
        """Accept no more frames; the writer drains what is queued unless ``discard``."""
        self._closed = True
        if discard:
            self._frames.clear()
            self._bytes = 0
        self._ready.set()

    async def get(self) -> Optional[bytes]:
        """The next frame, waiting for one; None once closed and drained."""
        while not self._frames:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        frame = self._frames.popleft()
        self._bytes -= len(frame) + 64
        return frame
