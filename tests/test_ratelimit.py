"""The one token bucket (nolag.ratelimit) the SDK and the broker share: pure, time passed in."""

from __future__ import annotations

from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nolag import ratelimit, session
from nolag.broker import ratelimit as broker_ratelimit
from nolag.ratelimit import TokenBucket


def test_the_sdk_and_the_broker_use_the_shared_class() -> None:
    assert session.TokenBucket is TokenBucket
    bucket = broker_ratelimit.TokenBucket(3, now=0.0)  # the broker's argument order
    assert isinstance(bucket, ratelimit.TokenBucket)
    assert (bucket.rate, bucket.burst) == (3.0, 3.0)


def test_starts_full_allows_a_burst_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, now=10.0)
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after(10.0) == pytest.approx(0.5)
    assert not bucket.take(10.4)
    assert bucket.take(10.5)
    assert not bucket.full(11.0)
    assert bucket.full(12.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped


def test_burst_defaults_to_one_second_of_tokens_and_at_least_one() -> None:
    assert TokenBucket(5.0, None, 0.0).burst == 5.0
    assert TokenBucket(0.5, None, 0.0).burst == 1.0


def test_spend_goes_into_debt_and_later_takes_wait_for_it() -> None:
    bucket = TokenBucket(1.0, 1.0, 0.0)
    bucket.spend(0.0)  # the last token
    bucket.spend(0.0)  # a frame that had to go anyway: one token of debt
    assert not bucket.take(1.5)  # level 0.5
    assert bucket.wait_time(1.5) == pytest.approx(0.5)  # the SDK's name for retry_after
    assert bucket.take(2.0)


def test_time_going_backwards_counts_as_no_time() -> None:
    bucket = TokenBucket(1.0, 1.0, 5.0)
    assert bucket.take(5.0)
    assert not bucket.take(3.0)
    assert bucket.retry_after(3.0) == pytest.approx(1.0)  # still measured from 5.0
    assert bucket.take(6.0)


@pytest.mark.parametrize("rate", [None, 0, 0.0, -1.0])
def test_no_rate_means_unlimited(rate: Optional[float]) -> None:
    bucket = TokenBucket(rate, None, 0.0)
    assert bucket.unlimited and bucket.rate == 0.0
    assert all(bucket.take(0.0) for _ in range(1000))
    bucket.spend(0.0)
    assert bucket.retry_after(0.0) == 0.0 and bucket.full(0.0)
    assert repr(bucket) == "TokenBucket(unlimited)"


@pytest.mark.parametrize("burst", [0.0, -1.0, float("nan")])
def test_a_bucket_that_could_never_hold_a_token_is_refused(burst: float) -> None:
    with pytest.raises(ValueError, match="burst must be > 0"):
        TokenBucket(1.0, burst, 0.0)


@given(
    rate=st.floats(0.1, 100.0),
    burst=st.floats(1.0, 20.0),
    gaps=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=200),
)
@settings(max_examples=200, deadline=None)
def test_takes_never_exceed_burst_plus_rate_times_elapsed(
    rate: float, burst: float, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    now, granted = 0.0, 0
    for gap in gaps:
        now += gap
        if bucket.take(now):
            granted += 1
        else:
            # a refusal says how long to wait, and waiting that long is enough
            wait = bucket.retry_after(now)
            assert wait > 0.0
            assert bucket.take(now + wait + 1e-9)
            now += wait + 1e-9
            granted += 1
        assert granted <= burst + rate * now + 1e-6
