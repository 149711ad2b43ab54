"""Token buckets and the rate limiter: a burst is admitted at once, tokens come back at the
configured rate (never beyond the burst), one caller running dry leaves every other caller and
the global budget alone, and the per-caller table stays bounded without letting a limited
caller escape its limit. Time is passed in, so nothing here waits."""

from __future__ import annotations

import pytest

from ca.core.errors import RateLimited
from ca.core.rate_limit import RateLimiter, TokenBucket

T0 = 1_000.0  # an arbitrary monotonic time


def takes(bucket: TokenBucket, times: list[float]) -> list[bool]:
    return [bucket.take(t) for t in times]


# --- TokenBucket ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst", "times", "expected"),
    [
        pytest.param(1.0, 3.0, [T0] * 4, [True, True, True, False], id="starts-full-burst-of-3"),
        pytest.param(1.0, 1.0, [T0, T0], [True, False], id="burst-of-1"),
        pytest.param(
            2.0,
            2.0,
            [T0, T0, T0, T0 + 0.49, T0 + 0.5, T0 + 0.5],
            [True, True, False, False, True, False],
            id="one-token-back-after-half-a-second-at-2-per-s",
        ),
        pytest.param(
            10.0,
            3.0,
            [T0, T0, T0, T0 + 3600, T0 + 3600, T0 + 3600, T0 + 3600],
            [True, True, True, True, True, True, False],
            id="refill-never-exceeds-the-burst",
        ),
        pytest.param(
            0.5,
            1.0,
            [T0, T0 + 1.0, T0 + 1.999, T0 + 2.0],
            [True, False, False, True],
            id="slow-rate-one-token-every-2s",
        ),
    ],
)
def test_token_bucket_admits_the_burst_then_refills_at_the_rate(
    rate: float, burst: float, times: list[float], expected: list[bool]
) -> None:
    bucket = TokenBucket.full(rate, burst, T0)
    assert takes(bucket, times) == expected


def test_failed_takes_do_not_spend_tokens() -> None:
    bucket = TokenBucket.full(1.0, 1.0, T0)
    assert bucket.take(T0)
    # Hammering an empty bucket must not push the next token further away.
    assert takes(bucket, [T0 + 0.1 * i for i in range(1, 10)]) == [False] * 9
    assert bucket.take(T0 + 1.0)


@pytest.mark.parametrize(
    ("rate", "spent_at", "asked_at", "retry"),
    [
        pytest.param(2.0, T0, T0, 0.5, id="empty-at-2-per-s"),
        pytest.param(0.5, T0, T0, 2.0, id="empty-at-half-per-s"),
        pytest.param(0.5, T0, T0 + 1.5, 0.5, id="three-quarters-refilled"),
    ],
)
def test_retry_after_is_the_time_until_the_next_token(
    rate: float, spent_at: float, asked_at: float, retry: float
) -> None:
    bucket = TokenBucket.full(rate, 1.0, T0)
    assert bucket.take(spent_at)
    assert not bucket.take(asked_at)
    assert bucket.retry_after() == pytest.approx(retry)
    assert bucket.take(asked_at + retry)


def test_retry_after_is_zero_while_a_token_is_available() -> None:
    assert TokenBucket.full(1.0, 2.0, T0).retry_after() == 0.0


# --- RateLimiter: per caller ----------------------------------------------------------------


def limiter(**overrides: float) -> RateLimiter:
    settings: dict[str, float] = {
        "per_caller_rate": 2.0,
        "per_caller_burst": 3,
        "global_rate": 1_000.0,
        "global_burst": 1_000,
    } | overrides
    return RateLimiter(now=T0, **settings)  # type: ignore[arg-type]


def test_a_caller_gets_its_burst_then_is_refused_with_reason_and_retry_after() -> None:
    rl = limiter(per_caller_rate=2.0, per_caller_burst=3)
    for _ in range(3):
        rl.admit("pod-a", T0)

    with pytest.raises(RateLimited) as info:
        rl.admit("pod-a", T0)

    assert info.value.reason == "rate_limited_caller"
    assert info.value.message == "pod-a is over its request budget of 2/s; retry in 0.5s"


def test_a_limited_caller_is_admitted_again_once_tokens_refill() -> None:
    rl = limiter(per_caller_rate=2.0, per_caller_burst=1)
    rl.admit("pod-a", T0)
    with pytest.raises(RateLimited):
        rl.admit("pod-a", T0 + 0.25)

    rl.admit("pod-a", T0 + 0.5)

    with pytest.raises(RateLimited) as info:
        rl.admit("pod-a", T0 + 0.5)
    assert "retry in 0.5s" in info.value.message


def test_one_caller_exhausted_does_not_affect_another() -> None:
    rl = limiter(per_caller_rate=1.0, per_caller_burst=2)
    rl.admit("crash-looping", T0)
    rl.admit("crash-looping", T0)
    for _ in range(5):
        with pytest.raises(RateLimited):
            rl.admit("crash-looping", T0)

    # Every other caller still has its own full burst.
    for caller in ("pod-b", "pod-c"):
        rl.admit(caller, T0)
        rl.admit(caller, T0)
        with pytest.raises(RateLimited):
            rl.admit(caller, T0)


def test_per_caller_admission_does_not_spend_the_global_budget() -> None:
    rl = limiter(per_caller_burst=5, global_burst=1, global_rate=1.0)
    for caller in ("a", "b", "c"):
        for _ in range(5):
            rl.admit(caller, T0)

    rl.admit_global(T0)  # the one global token is still there


# --- RateLimiter: global --------------------------------------------------------------------


def test_global_budget_admits_its_burst_then_refuses_everyone() -> None:
    rl = limiter(global_rate=4.0, global_burst=2)
    rl.admit_global(T0)
    rl.admit_global(T0)

    with pytest.raises(RateLimited) as info:
        rl.admit_global(T0)

    assert info.value.reason == "rate_limited_global"
    assert info.value.message == "the CA is over its request budget; retry in 0.2s"
    rl.admit_global(T0 + 0.25)


def test_global_exhaustion_leaves_per_caller_buckets_full() -> None:
    rl = limiter(global_burst=1, per_caller_burst=2)
    rl.admit_global(T0)
    with pytest.raises(RateLimited):
        rl.admit_global(T0)

    rl.admit("pod-a", T0)
    rl.admit("pod-a", T0)


def test_default_start_time_gives_a_full_global_burst_at_any_monotonic_time() -> None:
    rl = RateLimiter(per_caller_rate=1.0, per_caller_burst=1, global_rate=1.0, global_burst=3)
    for _ in range(3):
        rl.admit_global(T0)
    with pytest.raises(RateLimited):
        rl.admit_global(T0)


# --- RateLimiter: bounded caller table ------------------------------------------------------


def test_least_recently_used_caller_is_evicted_and_starts_again_full() -> None:
    rl = limiter(per_caller_burst=1, max_callers=2)
    rl.admit("a", T0)
    rl.admit("b", T0)
    rl.admit("c", T0)  # evicts "a", the least recently seen

    rl.admit("a", T0)  # a fresh (full) bucket: the generous side

    # "a" coming back evicted "b"; "c" is still tracked and still empty.
    with pytest.raises(RateLimited):
        rl.admit("c", T0)
    rl.admit("b", T0)


def test_a_limited_caller_that_keeps_calling_is_not_evicted() -> None:
    """A refused request still counts as use: a flooding caller stays in the table (and
    limited) while quiet callers are evicted around it."""
    rl = limiter(per_caller_burst=1, max_callers=2)
    rl.admit("flood", T0)
    for index in range(10):
        with pytest.raises(RateLimited):
            rl.admit("flood", T0)
        rl.admit(f"quiet-{index}", T0)

    with pytest.raises(RateLimited) as info:
        rl.admit("flood", T0)
    assert info.value.reason == "rate_limited_caller"
