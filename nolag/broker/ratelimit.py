"""Token bucket rate limiting, pure: the caller passes the (monotonic) time."""

from __future__ import annotations


class TokenBucket:
    """Allows ``rate`` events per second on average, with bursts up to ``burst``."""

    __slots__ = ("_burst", "_last", "_level", "_rate")

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        """Start full; a rate of 0 or less means unlimited."""
        self._rate = float(rate)
        self._burst = float(burst if burst is not None else max(rate, 1.0))
        self._level = self._burst
        self._last = now

    @property
    def unlimited(self) -> bool:
        """True when the bucket never refuses."""
        return self._rate <= 0

    def _refill(self, now: float) -> None:
        """Add the tokens earned since the last call, capped at the burst size."""
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        self._level = min(self._burst, self._level + elapsed * self._rate)

    def take(self, now: float) -> bool:
        """Consume one token if there is one; False means the event is over the rate."""
        if self.unlimited:
            return True
        self._refill(now)
        if self._level >= 1.0:
            self._level -= 1.0
            return True
        return False

    def retry_after(self, now: float) -> float:
        """Seconds until one token will be available (0 when one is available now)."""
        if self.unlimited:
            return 0.0
        self._refill(now)
        return 0.0 if self._level >= 1.0 else (1.0 - self._level) / self._rate

    def full(self, now: float) -> bool:
        """True when the bucket has refilled completely (an idle client)."""
        if self.unlimited:
            return True
        self._refill(now)
        return self._level >= self._burst
