"""A token bucket: a rate of sends per second with bursts, the caller passing the time."""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """Allows `rate` sends per second with bursts of `burst`; the caller passes the time."""

    __slots__ = ("_burst", "_last", "_level", "_rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._level = burst
        self._last = now

    @property
    def rate(self) -> float:
        """Sends per second allowed on average."""
        return self._rate

    def spend(self, now: float) -> None:
        """Spend one token even if none is there (a frame that must go now): later ones wait."""
        self._level = min(self._burst, self._level + (now - self._last) * self._rate) - 1.0
        self._last = now

    def take(self, now: float) -> bool:
        """Spend one token if one is there."""
        self._level = min(self._burst, self._level + (now - self._last) * self._rate)
        self._last = now
        if self._level >= 1.0:
            self._level -= 1.0
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until a token will be there."""
        level = min(self._burst, self._level + (now - self._last) * self._rate)
        return 0.0 if level >= 1.0 else (1.0 - level) / self._rate
