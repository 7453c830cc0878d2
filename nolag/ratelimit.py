"""One token bucket for the SDK and the local broker; pure: the caller passes the time.

The SDK paces its own presence frames with it (`max_presence_rate`, under the server's
rate), the broker refuses frames and REST calls over a token's rate with it. Times are
seconds on any monotonic clock (``time.monotonic()``); the bucket never reads a clock.

    bucket = TokenBucket(rate=5.0, burst=2.0, now=time.monotonic())
    if bucket.take(time.monotonic()):      # one token, if there is one
        send()
    else:
        retry_in = bucket.retry_after(time.monotonic())   # seconds
"""

from __future__ import annotations

from typing import Optional

__all__ = ["TokenBucket"]


class TokenBucket:
    """Allows `rate` events per second on average, with bursts of up to `burst`.

    `rate` is in tokens (events) per second; None, 0 or less means unlimited (`take`
    always succeeds, `retry_after` is 0, `full` is true). `burst` is the bucket's size
    in tokens, by default ``max(rate, 1)`` (one second's worth, at least one); it starts
    full. Tokens earned since the last call are added on every call, capped at `burst`;
    a `now` earlier than a previous one counts as no time passed.
    """

    __slots__ = ("_burst", "_last", "_level", "_rate")

    def __init__(
        self, rate: Optional[float], burst: Optional[float] = None, now: float = 0.0
    ) -> None:
        """Start full at time `now` (seconds)."""
        self._rate = float(rate) if rate is not None and rate > 0 else 0.0
        if burst is None:
            burst = max(self._rate, 1.0)
        if not burst > 0:
            raise ValueError(f"burst must be > 0 tokens, got {burst!r}")
        self._burst = float(burst)
        self._level = self._burst
        self._last = now

    @property
    def rate(self) -> float:
        """Tokens per second (0.0 when unlimited)."""
        return self._rate

    @property
    def burst(self) -> float:
        """The bucket's size in tokens."""
        return self._burst

    @property
    def unlimited(self) -> bool:
        """True when the bucket never refuses (rate None or <= 0)."""
        return self._rate <= 0.0

    def _refill(self, now: float) -> float:
        """Add the tokens earned since the last call (capped at burst); the new level."""
        if now > self._last:
            level = self._level + (now - self._last) * self._rate
            self._level = level if level < self._burst else self._burst
            self._last = now
        return self._level

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means the event is over the rate."""
        if self._rate <= 0.0:
            return True
        if self._refill(now) >= 1.0:
            self._level -= 1.0
            return True
        return False

    def spend(self, now: float) -> None:
        """Spend one token even if there is none (a frame that must go now).

        The level may go below zero: the debt delays later `take` calls, so the average
        rate still holds.
        """
        if self._rate > 0.0:
            self._level = self._refill(now) - 1.0

    def retry_after(self, now: float) -> float:
        """Seconds until one token will be there (0.0 when one is there now)."""
        if self._rate <= 0.0:
            return 0.0
        level = self._refill(now)
        return 0.0 if level >= 1.0 else (1.0 - level) / self._rate

    wait_time = retry_after
    """Alias of `retry_after` (the SDK's name)."""

    def full(self, now: float) -> bool:
        """True when the bucket has refilled completely (an idle sender)."""
        return self._rate <= 0.0 or self._refill(now) >= self._burst

    def __repr__(self) -> str:
        """Rate, burst and level, for logs."""
        if self._rate <= 0.0:
            return "TokenBucket(unlimited)"
        return f"TokenBucket(rate={self._rate:g}/s, burst={self._burst:g}, level={self._level:.2f})"
