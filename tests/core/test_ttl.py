"""Certificate lifetimes: the default, the maximum (refused, never clamped), backdating, and
clamping to the issuing CA's own validity."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from cryptography.x509.verification import PolicyBuilder, Store

from ca.core.authority import build_intermediate
from ca.core.csr_policy import TtlPolicy
from ca.core.errors import ConfigurationError, InvalidRequest
from ca.core.identity import WorkloadIdentity
from ca.core.issuer import DEFAULT_BACKDATE, Issuer
from ca.core.keys import KeyType
from tests.core.builders import CaBank, KeyBank, request_for
from tests.factories import TRUST_DOMAIN, make_csr

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@pytest.fixture
def issuer(ca_bank: CaBank) -> Issuer:
    """Default policy (24h default, 90d maximum) on an intermediate valid for a year."""
    return Issuer(TRUST_DOMAIN, ca_bank.ca(KeyType.EC_P256).intermediate, TtlPolicy())


@pytest.mark.parametrize(
    ("requested", "lifetime"),
    [
        pytest.param(None, timedelta(hours=24), id="none-requested-gets-24h"),
        pytest.param(timedelta(0), timedelta(hours=24), id="zero-requested-gets-24h"),
        pytest.param(HOUR, HOUR, id="1h"),
        pytest.param(timedelta(minutes=5), timedelta(minutes=5), id="5m"),
        pytest.param(7 * DAY, 7 * DAY, id="7d"),
        pytest.param(90 * DAY, 90 * DAY, id="exactly-the-90d-maximum"),
    ],
)
def test_issued_lifetime(
    issuer: Issuer,
    web: WorkloadIdentity,
    now: datetime,
    requested: timedelta | None,
    lifetime: timedelta,
) -> None:
    svid = issuer.issue(request_for(make_csr(), web, requested), now)

    assert svid.certificate.not_valid_after_utc == now + lifetime
    assert svid.record.not_after == now + lifetime


@pytest.mark.parametrize(
    ("policy", "requested"),
    [
        pytest.param(TtlPolicy(), 90 * DAY + timedelta(seconds=1), id="default-max-plus-1s"),
        pytest.param(TtlPolicy(), 365 * DAY, id="default-max-1y"),
        pytest.param(TtlPolicy(default=HOUR, maximum=2 * HOUR), 3 * HOUR, id="custom-max-2h"),
    ],
)
def test_ttl_over_the_maximum_is_refused_not_clamped(
    ca_bank: CaBank,
    web: WorkloadIdentity,
    now: datetime,
    policy: TtlPolicy,
    requested: timedelta,
) -> None:
    issuer = Issuer(TRUST_DOMAIN, ca_bank.ca(KeyType.EC_P256).intermediate, policy)

    with pytest.raises(InvalidRequest) as excinfo:
        issuer.issue(request_for(make_csr(), web, requested), now)

    assert excinfo.value.reason == "ttl_too_long"


def test_custom_default_applies_when_none_requested(
    ca_bank: CaBank, web: WorkloadIdentity, now: datetime
) -> None:
    policy = TtlPolicy(default=HOUR, maximum=2 * HOUR)
    issuer = Issuer(TRUST_DOMAIN, ca_bank.ca(KeyType.EC_P256).intermediate, policy)

    svid = issuer.issue(request_for(make_csr(), web), now)

    assert svid.certificate.not_valid_after_utc == now + HOUR


def test_negative_ttl_is_refused(issuer: Issuer, web: WorkloadIdentity, now: datetime) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        issuer.issue(request_for(make_csr(), web, -HOUR), now)

    assert excinfo.value.reason == "ttl_invalid"


def test_not_after_is_clamped_to_an_intermediate_expiring_sooner(
    ca_bank: CaBank, key_bank: KeyBank, web: WorkloadIdentity, now: datetime
) -> None:
    ca = ca_bank.ca(KeyType.EC_P256)
    short_lived = build_intermediate(
        TRUST_DOMAIN, key_bank.key(KeyType.EC_P256, "short"), ca.root, now=now, ttl=HOUR
    )
    issuer = Issuer(TRUST_DOMAIN, short_lived, TtlPolicy())

    svid = issuer.issue(request_for(make_csr(), web, 24 * HOUR), now)

    assert short_lived.not_after == now + HOUR
    assert svid.certificate.not_valid_after_utc == short_lived.not_after
    # Still a valid chain right up to the end of its (shortened) life.
    PolicyBuilder().store(Store([ca.root.certificate])).time(
        short_lived.not_after - timedelta(seconds=1)
    ).build_client_verifier().verify(svid.certificate, [short_lived.certificate])


def test_not_before_is_backdated_by_the_configured_amount(
    ca_bank: CaBank, web: WorkloadIdentity, now: datetime
) -> None:
    backdate = timedelta(minutes=5)
    issuer = Issuer(
        TRUST_DOMAIN, ca_bank.ca(KeyType.EC_P256).intermediate, TtlPolicy(), backdate=backdate
    )

    svid = issuer.issue(request_for(make_csr(), web), now)

    assert svid.certificate.not_valid_before_utc == now - backdate


def test_default_backdate_is_a_small_positive_allowance_for_clock_skew(
    issuer: Issuer, web: WorkloadIdentity, now: datetime
) -> None:
    svid = issuer.issue(request_for(make_csr(), web), now)

    assert timedelta(0) < DEFAULT_BACKDATE <= timedelta(minutes=10)
    assert svid.certificate.not_valid_before_utc == now - DEFAULT_BACKDATE


def test_backdating_never_predates_the_issuing_ca(
    ca_bank: CaBank, key_bank: KeyBank, web: WorkloadIdentity, now: datetime
) -> None:
    fresh = build_intermediate(
        TRUST_DOMAIN,
        key_bank.key(KeyType.EC_P256, "fresh"),
        ca_bank.ca(KeyType.EC_P256).root,
        now=now,
        ttl=DAY,
    )
    issuer = Issuer(TRUST_DOMAIN, fresh, TtlPolicy())

    svid = issuer.issue(request_for(make_csr(), web), now)

    assert svid.certificate.not_valid_before_utc == fresh.not_before == now


def test_an_expired_signing_ca_refuses_to_issue(
    ca_bank: CaBank, key_bank: KeyBank, web: WorkloadIdentity, now: datetime
) -> None:
    expired = build_intermediate(
        TRUST_DOMAIN,
        key_bank.key(KeyType.EC_P256, "expired"),
        ca_bank.ca(KeyType.EC_P256).root,
        now=now - 2 * HOUR,
        ttl=HOUR,
    )
    issuer = Issuer(TRUST_DOMAIN, expired, TtlPolicy())

    with pytest.raises(ConfigurationError) as excinfo:
        issuer.issue(request_for(make_csr(), web), now)

    assert excinfo.value.reason == "ca_expired"
