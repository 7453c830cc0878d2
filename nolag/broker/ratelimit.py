"""The broker's token buckets: `nolag.ratelimit.TokenBucket`, the one the SDK uses too.

Only the constructor's argument order differs, ``TokenBucket(rate, now, burst=None)`` as
the broker's call sites (core, REST) write it; everything else is the shared class. A
rate of 0 or less means unlimited.
"""

from __future__ import annotations

from typing import Optional

from nolag import ratelimit

__all__ = ["TokenBucket"]


class TokenBucket(ratelimit.TokenBucket):
    """`nolag.ratelimit.TokenBucket` built as ``TokenBucket(rate, now, burst=None)``."""

    __slots__ = ()

    def __init__(self, rate: Optional[float], now: float, burst: Optional[float] = None) -> None:
        """Start full at `now`; burst defaults to ``max(rate, 1)`` tokens."""
        super().__init__(rate, burst, now)
