"""A bounded cache of verified tokens, so a workload renewing with the same token does not pay
for verification (a signature check, or a TokenReview round trip) every time.

Entries are keyed by the SHA-256 of the token; the token itself is never stored. An entry lives
until the token expires or ``max_age`` passes, whichever is first, and is never served after
that: the token is verified again, and the inner verifier refuses it once it has expired.
Failures are not cached. A token that never expires (legacy) is cached only with a ``max_age``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ca.auth.verified import TokenVerifier, VerifiedToken


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CachingVerifier:
    """A :class:`TokenVerifier` that remembers the successes of ``inner`` (LRU, at most
    ``max_entries``; 0 disables the cache)."""

    def __init__(
        self,
        inner: TokenVerifier,
        max_entries: int,
        clock: Callable[[], datetime] = _utcnow,
        max_age: timedelta | None = None,
    ) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be 0 (no cache) or more")
        self._inner = inner
        self._max_entries = max_entries
        self._clock = clock
        self._max_age = max_age
        self._entries: OrderedDict[bytes, tuple[datetime, VerifiedToken]] = OrderedDict()
        self._hits = 0
        self._misses = 0

    @property
    def hits(self) -> int:
        """Verifications answered from the cache."""
        return self._hits

    @property
    def misses(self) -> int:
        """Verifications passed to the inner verifier (while the cache is enabled)."""
        return self._misses

    def __len__(self) -> int:
        return len(self._entries)

    async def verify(self, token: str) -> VerifiedToken:
        """``inner.verify(token)``, or its remembered result while that is still valid."""
        if self._max_entries == 0:
            return await self._inner.verify(token)
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        entry = self._entries.get(key)
        if entry is not None:
            valid_until, verified = entry
            if self._clock() < valid_until:
                self._entries.move_to_end(key)
                self._hits += 1
                return verified
            del self._entries[key]
        self._misses += 1
        verified = await self._inner.verify(token)
        self._remember(key, verified)
        return verified

    def clear(self) -> None:
        """Forget every entry (after the keys or settings changed)."""
        self._entries.clear()

    def _remember(self, key: bytes, verified: VerifiedToken) -> None:
        now = self._clock()
        bounds = [verified.expires_at] if verified.expires_at is not None else []
        if self._max_age is not None:
            bounds.append(now + self._max_age)
        if not bounds or min(bounds) <= now:
            return
        self._entries[key] = (min(bounds), verified)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
