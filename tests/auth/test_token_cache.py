"""The verified-token cache in front of the real JWT verifier: hits skip verification, expired
entries are never served, failures are not remembered, and the size is bounded."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from pathlib import Path

import pytest

from ca.auth.jwt_verifier import JwtVerifier
from ca.auth.token_cache import CachingVerifier
from ca.auth.verified import TokenVerifier, VerifiedToken
from ca.core.errors import Unauthenticated
from tests.auth.jwt_helpers import (
    LEEWAY,
    NOW,
    FakeClock,
    SigningKey,
    file_source,
    legacy_claims,
    make_verifier,
    projected_claims,
)


class Counting:
    """A real verifier, counting how often it is asked."""

    def __init__(self, inner: TokenVerifier) -> None:
        self.inner = inner
        self.calls = 0

    async def verify(self, token: str) -> VerifiedToken:
        self.calls += 1
        return await self.inner.verify(token)


@pytest.fixture
def jwt_verifier(tmp_path: Path, clock: FakeClock, rsa_signer: SigningKey) -> JwtVerifier:
    return make_verifier(file_source(tmp_path, rsa_signer, clock=clock), clock, allow_legacy=True)


@pytest.fixture
def inner(jwt_verifier: JwtVerifier) -> Counting:
    return Counting(jwt_verifier)


def run(verifier: TokenVerifier, token: str) -> VerifiedToken:
    return asyncio.run(verifier.verify(token))


def test_a_renewal_with_the_same_token_is_answered_from_the_cache(
    inner: Counting, clock: FakeClock, rsa_signer: SigningKey
) -> None:
    cache = CachingVerifier(inner, 100, clock.now)
    token = rsa_signer.sign(projected_claims())

    first = run(cache, token)
    clock.advance(timedelta(minutes=30))
    second = run(cache, token)

    assert second == first
    assert inner.calls == 1
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)


def test_an_expired_entry_is_not_served_and_the_token_is_refused(
    inner: Counting, clock: FakeClock, rsa_signer: SigningKey
) -> None:
    cache = CachingVerifier(inner, 100, clock.now)
    token = rsa_signer.sign(projected_claims(ttl=timedelta(minutes=10)))
    run(cache, token)

    clock.advance(timedelta(minutes=10))  # at exp: the entry is gone; within leeway: still valid
    assert run(cache, token).expires_at == NOW + timedelta(minutes=10)
    assert inner.calls == 2
    assert len(cache) == 0  # a result already past its expiry is not remembered

    clock.advance(LEEWAY)
    with pytest.raises(Unauthenticated) as caught:
        run(cache, token)

    assert caught.value.reason == "token_expired"
    assert inner.calls == 3
    assert cache.hits == 0


def test_max_age_bounds_an_entry_before_the_token_expires(
    inner: Counting, clock: FakeClock, rsa_signer: SigningKey
) -> None:
    cache = CachingVerifier(inner, 100, clock.now, max_age=timedelta(minutes=5))
    token = rsa_signer.sign(projected_claims(ttl=timedelta(hours=1)))
    run(cache, token)

    clock.advance(timedelta(minutes=4, seconds=59))
    run(cache, token)
    assert inner.calls == 1
    clock.advance(timedelta(seconds=1))
    run(cache, token)

    assert inner.calls == 2
    assert (cache.hits, cache.misses) == (1, 2)


def test_failures_are_not_cached(inner: Counting, clock: FakeClock, rsa_signer: SigningKey) -> None:
    cache = CachingVerifier(inner, 100, clock.now)
    token = rsa_signer.sign(projected_claims(audience="vault"))

    for _ in range(3):
        with pytest.raises(Unauthenticated):
            run(cache, token)

    assert inner.calls == 3
    assert len(cache) == 0
    assert (cache.hits, cache.misses) == (0, 3)


def test_the_least_recently_used_entry_is_evicted(
    inner: Counting, clock: FakeClock, rsa_signer: SigningKey
) -> None:
    cache = CachingVerifier(inner, 2, clock.now)
    a, b, c = (rsa_signer.sign(projected_claims("payments", sa)) for sa in ("a", "b", "c"))

    for token in (a, b, a, c):  # a was used after b, so c evicts b
        run(cache, token)
    assert len(cache) == 2
    assert inner.calls == 3

    run(cache, a)
    assert inner.calls == 3
    run(cache, b)
    assert inner.calls == 4


def test_size_zero_disables_the_cache(
    inner: Counting, clock: FakeClock, rsa_signer: SigningKey
) -> None:
    cache = CachingVerifier(inner, 0, clock.now)
    token = rsa_signer.sign(projected_claims())

    run(cache, token)
    run(cache, token)

    assert inner.calls == 2
    assert len(cache) == 0
    assert (cache.hits, cache.misses) == (0, 0)


def test_a_token_that_never_expires_is_cached_only_with_a_max_age(
    inner: Counting, clock: FakeClock, rsa_signer: SigningKey
) -> None:
    token = SigningKey(rsa_signer.private, None).sign(legacy_claims())
    unbounded = CachingVerifier(inner, 100, clock.now)
    run(unbounded, token)
    run(unbounded, token)
    assert inner.calls == 2
    assert len(unbounded) == 0

    bounded = CachingVerifier(inner, 100, clock.now, max_age=timedelta(minutes=1))
    run(bounded, token)
    run(bounded, token)
    assert inner.calls == 3
    assert bounded.hits == 1


def test_the_cache_keeps_hashes_not_tokens(
    inner: Counting, clock: FakeClock, rsa_signer: SigningKey
) -> None:
    cache = CachingVerifier(inner, 100, clock.now)
    token = rsa_signer.sign(projected_claims())
    run(cache, token)

    assert list(cache._entries) == [hashlib.sha256(token.encode()).digest()]


def test_a_token_that_cannot_be_encoded_reaches_the_verifier(
    inner: Counting, clock: FakeClock
) -> None:
    cache = CachingVerifier(inner, 100, clock.now)

    with pytest.raises(Unauthenticated) as caught:
        run(cache, "\udcff.a.b")

    assert caught.value.reason == "token_malformed"


def test_a_negative_size_is_refused(inner: Counting) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        CachingVerifier(inner, -1)
