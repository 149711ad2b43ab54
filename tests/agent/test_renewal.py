"""When the agent renews: at the grace ratio of the lifetime with jitter (so a fleet spreads
out), and how it backs off after failures."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from sds.core.renewal import Backoff, RenewalPolicy

START = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(hours=24)


def test_renewal_is_at_the_grace_ratio_without_jitter() -> None:
    policy = RenewalPolicy(grace_ratio=0.5, jitter=0.0)
    assert policy.renew_at(START, START + DAY, random.Random(1)) == START + DAY / 2
    late = RenewalPolicy(grace_ratio=0.8, jitter=0.0)
    assert late.renew_at(START, START + DAY, random.Random(1)) == START + DAY * 0.8


def test_the_lifetime_counts_from_receipt_not_from_the_backdated_not_before() -> None:
    """A 30 s SVID backdated 60 s: half-way is 15 s after it arrived, not 15 s before."""
    policy = RenewalPolicy(grace_ratio=0.5, jitter=0.0)
    received = START + timedelta(seconds=60)
    not_after = received + timedelta(seconds=30)
    renew = policy.renew_at(START, not_after, random.Random(1), received_at=received)
    assert renew == received + timedelta(seconds=15)
    # an SVID that was not backdated, or a receipt time before NotBefore, changes nothing
    assert (
        policy.renew_at(START, START + DAY, random.Random(1), received_at=START) == START + DAY / 2
    )
    early = START - timedelta(hours=1)
    assert (
        policy.renew_at(START, START + DAY, random.Random(1), received_at=early) == START + DAY / 2
    )


def test_jitter_spreads_a_fleet_within_its_bounds() -> None:
    policy = RenewalPolicy(grace_ratio=0.5, jitter=0.05)
    rng = random.Random(7)
    points = [policy.renew_at(START, START + DAY, rng) for _ in range(1000)]
    assert min(points) >= START + DAY * 0.45
    assert max(points) <= START + DAY * 0.55
    # spread: not in lockstep
    assert max(points) - min(points) > DAY * 0.08
    assert len(set(points)) > 990


def test_renewal_never_lands_at_the_very_start_or_end() -> None:
    rng = random.Random(3)
    early = RenewalPolicy(grace_ratio=0.01, jitter=0.4)
    late = RenewalPolicy(grace_ratio=0.99, jitter=0.4)
    for _ in range(200):
        assert early.renew_at(START, START + DAY, rng) >= START + DAY * 0.05
        assert late.renew_at(START, START + DAY, rng) <= START + DAY * 0.95


@pytest.mark.parametrize(("ratio", "jitter"), [(0.0, 0.0), (1.0, 0.0), (0.5, 0.5), (0.5, -0.1)])
def test_nonsense_policies_are_refused(ratio: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="between"):
        RenewalPolicy(grace_ratio=ratio, jitter=jitter)


def test_backoff_doubles_with_jitter_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(initial=timedelta(seconds=1), maximum=timedelta(seconds=8))
    rng = random.Random(5)
    delays = [backoff.next_delay(rng) for _ in range(8)]
    ceilings = [1, 2, 4, 8, 8, 8, 8, 8]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert timedelta(seconds=ceiling / 2) <= delay <= timedelta(seconds=ceiling)
    assert backoff.failures == 8
    backoff.reset()
    assert backoff.next_delay(rng) <= timedelta(seconds=1)


def test_backoff_survives_a_long_outage() -> None:
    backoff = Backoff(initial=timedelta(milliseconds=200), maximum=timedelta(seconds=30))
    rng = random.Random(0)
    for _ in range(10_000):
        delay = backoff.next_delay(rng)
    assert delay <= timedelta(seconds=30)
