"""Token buckets: a global budget and one per caller, so one crash-looping pod cannot starve
the rest. Pure: the caller passes the monotonic time."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ca.core.errors import RateLimited


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full."""

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until the next token."""
        return max(0.0, (1.0 - self.tokens) / self.rate)


class RateLimiter:
    """A global bucket and a bounded set of per-caller buckets (least recently used evicted;
    an evicted caller starts again with a full bucket, which only errs on the generous side)."""

    def __init__(
        self,
        *,
        per_caller_rate: float,
        per_caller_burst: int,
        global_rate: float,
        global_burst: int,
        max_callers: int = 100_000,
        now: float = 0.0,
    ) -> None:
        self._per_caller = (per_caller_rate, float(per_caller_burst))
        self._global = TokenBucket.full(global_rate, float(global_burst), now)
        self._callers: OrderedDict[str, TokenBucket] = OrderedDict()
        self._max_callers = max_callers

    def admit_global(self, now: float) -> None:
        """Spend from the process-wide budget or raise :class:`RateLimited`."""
        if not self._global.take(now):
            raise RateLimited(
                "rate_limited_global",
                f"the CA is over its request budget; retry in {self._global.retry_after():.1f}s",
            )

    def admit(self, caller: str, now: float) -> None:
        """Spend from ``caller``'s budget or raise :class:`RateLimited`."""
        bucket = self._callers.get(caller)
        if bucket is None:
            bucket = TokenBucket.full(*self._per_caller, now)
            self._callers[caller] = bucket
            if len(self._callers) > self._max_callers:
                self._callers.popitem(last=False)
        else:
            self._callers.move_to_end(caller)
        if not bucket.take(now):
            raise RateLimited(
                "rate_limited_caller",
                f"{caller} is over its request budget of {bucket.rate:g}/s; retry in "
                f"{bucket.retry_after():.1f}s",
            )
