"""When to renew an SVID, and how long to wait after a failure.

Renewal starts at ``grace_ratio`` of the lifetime (0.5: half-way), moved by up to ``jitter`` of
the lifetime either way so that a fleet issued at once does not renew in lockstep. Failures back
off exponentially, with "full jitter" on the upper half of each step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

_EARLIEST = 0.05  # never renew before 5% of the lifetime has passed
_LATEST = 0.95  # nor after 95% of it


@dataclass(frozen=True, slots=True)
class RenewalPolicy:
    """Where in an SVID's lifetime to renew it."""

    grace_ratio: float = 0.5
    jitter: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.grace_ratio < 1.0:
            raise ValueError(f"grace ratio must be between 0 and 1, not {self.grace_ratio}")
        if not 0.0 <= self.jitter < 0.5:
            raise ValueError(f"jitter must be between 0 and 0.5, not {self.jitter}")

    def renew_at(
        self,
        not_before: datetime,
        not_after: datetime,
        rng: random.Random,
        *,
        received_at: datetime | None = None,
    ) -> datetime:
        """The moment to start renewing a certificate valid from ``not_before`` to ``not_after``.

        NotBefore is backdated for clock skew (60 s by default), so the lifetime counts from
        ``received_at`` when that is later: a TTL shorter than the backdating would otherwise be
        due the moment it arrives.
        """
        if received_at is not None:
            not_before = max(not_before, min(received_at, not_after))
        fraction = self.grace_ratio + self.jitter * (2.0 * rng.random() - 1.0)
        fraction = min(max(fraction, _EARLIEST), _LATEST)
        return not_before + (not_after - not_before) * fraction


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with jitter: ``initial``, doubling up to ``maximum``."""

    initial: timedelta = timedelta(milliseconds=200)
    maximum: timedelta = timedelta(seconds=30)
    multiplier: float = 2.0
    _attempts: int = field(default=0, init=False)

    def next_delay(self, rng: random.Random) -> timedelta:
        """The wait before the next attempt (each call counts one more failure)."""
        ceiling = min(
            self.initial * (self.multiplier ** min(self._attempts, 40)),
            self.maximum,
        )
        self._attempts += 1
        return ceiling * (0.5 + 0.5 * rng.random())

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self._attempts = 0

    @property
    def failures(self) -> int:
        return self._attempts
