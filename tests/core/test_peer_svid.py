"""Renewal over mTLS: a client certificate proves an identity only if it is an SVID this CA
issued (signed by a trusted issuer's key, not merely naming it), valid now, not a CA, and in
our trust domain. Every other certificate is refused with a reason that says why."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from spiffe import SpiffeId

from ca.core.authority import SigningAuthority
from ca.core.csr_policy import TtlPolicy
from ca.core.errors import Unauthenticated
from ca.core.identity import WorkloadIdentity
from ca.core.issuer import Issuer
from ca.core.keys import KeyType, generate_private_key
from ca.core.peer_svid import identity_from_peer_certificate
from ca.core.serials import random_serial
from ca.core.svid_builder import SvidBuilder
from tests.core.builders import CaBank, CaPair, KeyBank, pem, request_for
from tests.factories import TRUST_DOMAIN, WEB_ID, make_csr

TTL = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Issued:
    ca: CaPair
    leaf: x509.Certificate
    now: datetime

    @property
    def issuers(self) -> list[x509.Certificate]:
        return [self.ca.root.certificate, self.ca.intermediate.certificate]


@pytest.fixture
def ca(ca_bank: CaBank) -> CaPair:
    return ca_bank.ca(KeyType.EC_P256)


@pytest.fixture
def issued(ca: CaPair, web: WorkloadIdentity, now: datetime) -> Issued:
    """A real SVID for ``web``, issued by meshca's issuer with our intermediate."""
    issuer = Issuer(TRUST_DOMAIN, ca.intermediate, TtlPolicy())
    svid = issuer.issue(request_for(make_csr(uris=[WEB_ID]), web, TTL), now)
    return Issued(ca, svid.certificate, now)


def leaf_signed_by(
    signer: SigningAuthority,
    spiffe_id: str,
    now: datetime,
) -> x509.Certificate:
    """A conforming leaf for ``spiffe_id`` built with meshca's SVID builder (which, unlike the
    issuer, signs any trust domain it is given)."""
    key = generate_private_key(KeyType.EC_P256)
    return SvidBuilder(signer).build(
        key.public_key(),
        SpiffeId(spiffe_id),
        serial=random_serial(),
        not_before=now - timedelta(minutes=1),
        not_after=now + TTL,
    )


def leaf_with_sans(
    ca: CaPair, names: Sequence[x509.GeneralName], now: datetime
) -> x509.Certificate:
    key = generate_private_key(KeyType.EC_P256)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.intermediate.certificate.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + TTL)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return builder.sign(ca.intermediate.private_key, hashes.SHA256())


def refusal(leaf_pem: bytes, issuers: Sequence[x509.Certificate], now: datetime) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as info:
        identity_from_peer_certificate(leaf_pem, issuers, TRUST_DOMAIN, now)
    return info.value


# --- accepted -------------------------------------------------------------------------------


def test_svid_issued_by_our_intermediate_proves_its_identity(issued: Issued) -> None:
    identity = identity_from_peer_certificate(
        pem(issued.leaf), issued.issuers, TRUST_DOMAIN, issued.now
    )

    assert str(identity.spiffe_id) == WEB_ID
    assert identity.namespace == "default"
    assert identity.service_account == "web"
    assert identity.pod_name is None


def test_svid_outside_the_kubernetes_layout_is_accepted_without_namespace(
    ca: CaPair, now: datetime
) -> None:
    leaf = leaf_signed_by(ca.intermediate, "spiffe://cluster.local/gateway/edge", now)
    identity = identity_from_peer_certificate(
        pem(leaf), [ca.intermediate.certificate], TRUST_DOMAIN, now
    )
    assert str(identity.spiffe_id) == "spiffe://cluster.local/gateway/edge"
    assert identity.namespace is None
    assert identity.service_account is None


def test_any_trusted_issuer_will_do_during_a_rotation(issued: Issued, ca_bank: CaBank) -> None:
    """While an old and a new intermediate are both trusted, certificates of either renew."""
    other = ca_bank.ca(KeyType.EC_P384)
    issuers = [other.intermediate.certificate, other.root.certificate, *issued.issuers]
    identity = identity_from_peer_certificate(pem(issued.leaf), issuers, TRUST_DOMAIN, issued.now)
    assert str(identity.spiffe_id) == WEB_ID


@pytest.mark.parametrize(
    "at",
    [
        pytest.param(lambda leaf: leaf.not_valid_before_utc, id="at-not-before"),
        pytest.param(lambda leaf: leaf.not_valid_after_utc, id="at-not-after"),
    ],
)
def test_validity_bounds_are_inclusive(
    issued: Issued, at: Callable[[x509.Certificate], datetime]
) -> None:
    identity = identity_from_peer_certificate(
        pem(issued.leaf), issued.issuers, TRUST_DOMAIN, at(issued.leaf)
    )
    assert str(identity.spiffe_id) == WEB_ID


# --- refused --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "at",
    [
        pytest.param(lambda leaf: leaf.not_valid_after_utc + timedelta(seconds=1), id="expired"),
        pytest.param(lambda leaf: leaf.not_valid_after_utc + timedelta(days=30), id="long-expired"),
        pytest.param(
            lambda leaf: leaf.not_valid_before_utc - timedelta(seconds=1), id="not-yet-valid"
        ),
    ],
)
def test_certificate_outside_its_validity_is_refused(
    issued: Issued, at: Callable[[x509.Certificate], datetime]
) -> None:
    error = refusal(pem(issued.leaf), issued.issuers, at(issued.leaf))
    assert error.reason == "peer_cert_expired"
    assert issued.leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ") in error.message


def test_svid_of_another_ca_is_untrusted(issued: Issued, ca_bank: CaBank) -> None:
    other = ca_bank.ca(KeyType.EC_P384)
    leaf = leaf_signed_by(other.intermediate, WEB_ID, issued.now)

    error = refusal(pem(leaf), issued.issuers, issued.now)

    assert error.reason == "peer_cert_untrusted"


def test_forgery_naming_our_intermediate_but_signed_by_another_key_is_untrusted(
    ca: CaPair, key_bank: KeyBank, now: datetime
) -> None:
    """Issuer name and key identifier are copied from our intermediate; only the signature
    tells it apart."""
    impostor = SigningAuthority(
        ca.intermediate.certificate,
        key_bank.key(KeyType.EC_P256, "impostor"),
        ca.intermediate.chain,
    )
    forged = leaf_signed_by(impostor, WEB_ID, now)
    assert forged.issuer == ca.intermediate.certificate.subject

    error = refusal(pem(forged), [ca.root.certificate, ca.intermediate.certificate], now)

    assert error.reason == "peer_cert_untrusted"


def test_leaf_is_untrusted_once_its_intermediate_is_no_longer_trusted(issued: Issued) -> None:
    # Only the root is trusted: the leaf is signed by the intermediate, not directly by it.
    error = refusal(pem(issued.leaf), [issued.ca.root.certificate], issued.now)
    assert error.reason == "peer_cert_untrusted"


def test_no_trusted_issuers_trusts_nothing(issued: Issued) -> None:
    assert refusal(pem(issued.leaf), [], issued.now).reason == "peer_cert_untrusted"


def test_ca_certificate_as_client_certificate_is_not_an_svid(ca: CaPair, now: datetime) -> None:
    # Our own intermediate: signed by a trusted root and carrying a SPIFFE URI SAN.
    error = refusal(pem(ca.intermediate.certificate), [ca.root.certificate], now)
    assert error.reason == "peer_cert_not_svid"


@pytest.mark.parametrize(
    "spiffe_id",
    [
        pytest.param("spiffe://other.example/ns/default/sa/web", id="foreign-trust-domain"),
        pytest.param("spiffe://cluster.local", id="trust-domain-id-without-path"),
    ],
)
def test_svid_for_an_identity_we_do_not_serve_is_refused(
    ca: CaPair, now: datetime, spiffe_id: str
) -> None:
    leaf = leaf_signed_by(ca.intermediate, spiffe_id, now)

    error = refusal(pem(leaf), [ca.intermediate.certificate], now)

    assert error.reason == "peer_cert_not_svid"


@pytest.mark.parametrize(
    ("names", "detail"),
    [
        pytest.param((), "not an SVID", id="no-san"),
        pytest.param((x509.DNSName("web.default.svc"),), "0 URI SANs", id="dns-only"),
        pytest.param(
            (
                x509.UniformResourceIdentifier(WEB_ID),
                x509.UniformResourceIdentifier("spiffe://cluster.local/ns/kube-system/sa/admin"),
            ),
            "2 URI SANs",
            id="two-spiffe-ids",
        ),
        pytest.param(
            (x509.UniformResourceIdentifier("https://cluster.local/ns/default/sa/web"),),
            "invalid SPIFFE ID",
            id="https-uri",
        ),
    ],
)
def test_leaf_without_exactly_one_spiffe_id_is_not_an_svid(
    ca: CaPair, now: datetime, names: tuple[x509.GeneralName, ...], detail: str
) -> None:
    leaf = leaf_with_sans(ca, names, now)

    error = refusal(pem(leaf), [ca.intermediate.certificate], now)

    assert error.reason == "peer_cert_not_svid"
    assert detail in error.message


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not a certificate", id="text"),
        pytest.param(
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
            id="pem-of-garbage",
        ),
        pytest.param(make_csr(uris=[WEB_ID]), id="a-csr"),
    ],
)
def test_garbage_is_malformed(ca: CaPair, now: datetime, data: bytes) -> None:
    error = refusal(data, [ca.intermediate.certificate], now)
    assert error.reason == "peer_cert_malformed"


def test_truncated_pem_is_malformed(issued: Issued) -> None:
    data = pem(issued.leaf)
    assert refusal(data[: len(data) // 2], issued.issuers, issued.now).reason == (
        "peer_cert_malformed"
    )
