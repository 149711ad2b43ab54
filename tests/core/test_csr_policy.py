"""What a CSR may ask for: every refusal (with its error type and stable reason) and the
shapes that are accepted, all through ``Issuer.issue``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier
from spiffe import SpiffeId

from ca.core.csr_policy import TtlPolicy
from ca.core.errors import InvalidRequest, MeshcaError, PermissionDenied
from ca.core.identity import WorkloadIdentity
from ca.core.issuer import Issuer, deny_record
from ca.core.keys import KeyType, public_key_sha256
from tests.core.builders import CaBank, KeyBank, csr_with, der_tlv, pem, request_for, resign_csr
from tests.factories import TRUST_DOMAIN, WEB_ID, make_csr

API_ID = "spiffe://cluster.local/ns/default/sa/api"
MAX_CSR = 64 * 1024  # the documented limit
_PADDING_OID = ObjectIdentifier("1.3.6.1.4.1.55555.1")


@pytest.fixture
def issuer(ca_bank: CaBank) -> Issuer:
    return Issuer(TRUST_DOMAIN, ca_bank.ca(KeyType.EC_P256).intermediate, TtlPolicy())


def _ec_key(keys: KeyBank) -> ec.EllipticCurvePrivateKey:
    key = keys.key(KeyType.EC_P256, "csr")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a CSR")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2026, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2036, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )


def _flip_last_byte(der: bytes) -> bytes:
    """Corrupt the last byte of the signature (the last field of a CSR)."""
    return der[:-1] + bytes([der[-1] ^ 0x01])


def _signature_tampered(key_type: KeyType) -> Callable[[KeyBank], bytes]:
    def build(keys: KeyBank) -> bytes:
        return _flip_last_byte(csr_with(keys.key(key_type, "csr")))

    return build


def _sized_csr(key: ed25519.Ed25519PrivateKey, size: int) -> bytes:
    """A well-formed, validly signed DER CSR of exactly ``size`` bytes (Ed25519 signatures have
    a fixed length, so the size is exact), padded with a private non-critical extension."""
    padding = size - 200
    for _ in range(5):
        der = csr_with(
            key,
            names=[x509.UniformResourceIdentifier(WEB_ID)],
            extensions=[
                (x509.UnrecognizedExtension(_PADDING_OID, der_tlv(0x04, b"p" * padding)), False)
            ],
        )
        if len(der) == size:
            return der
        padding += size - len(der)
    raise AssertionError(f"could not build a {size}-byte CSR")


def _duplicate_san_csr(keys: KeyBank) -> bytes:
    """A correctly signed CSR carrying the SubjectAlternativeName extension twice (RFC 5280
    forbids duplicates; the builder refuses them, so the second one is spliced in)."""
    key = _ec_key(keys)
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(WEB_ID)])
    stand_in = ObjectIdentifier("2.5.29.99")  # same encoded length as 2.5.29.17 (SAN)
    der = csr_with(
        key,
        names=list(san),
        extensions=[(x509.UnrecognizedExtension(stand_in, san.public_bytes()), False)],
    )
    tbs = x509.load_der_x509_csr(der).tbs_certrequest_bytes
    oid_der, san_oid_der = b"\x06\x03\x55\x1d\x63", b"\x06\x03\x55\x1d\x11"
    assert tbs.count(oid_der) == 1
    return resign_csr(der, tbs.replace(oid_der, san_oid_der), key)


def _identity_edited_after_signing(keys: KeyBank) -> bytes:
    """A CSR signed for ``web`` whose URI was then edited to ``api`` (same length)."""
    der = csr_with(_ec_key(keys), names=[x509.UniformResourceIdentifier(WEB_ID)])
    assert der.count(b"/sa/web") == 1
    return der.replace(b"/sa/web", b"/sa/api")


@dataclass(frozen=True, slots=True)
class Refusal:
    build: Callable[[KeyBank], bytes]
    error: type[MeshcaError]
    reason: str
    caller: str = WEB_ID


def _pem_csr(keys: KeyBank) -> bytes:
    return make_csr(_ec_key(keys))


REFUSALS = {
    # unparseable
    "empty": Refusal(lambda _: b"", InvalidRequest, "csr_malformed"),
    "garbage-bytes": Refusal(lambda _: b"\x30\x03\x02\x01", InvalidRequest, "csr_malformed"),
    "pem-armour-around-garbage": Refusal(
        lambda _: (
            b"-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n"
            b"-----END CERTIFICATE REQUEST-----\n"
        ),
        InvalidRequest,
        "csr_malformed",
    ),
    "truncated-der": Refusal(lambda k: csr_with(_ec_key(k))[:-10], InvalidRequest, "csr_malformed"),
    "a-certificate-not-a-csr": Refusal(
        lambda k: pem(_self_signed(_ec_key(k))), InvalidRequest, "csr_malformed"
    ),
    # signature
    **{
        f"signature-tampered-{kt}": Refusal(
            _signature_tampered(kt), InvalidRequest, "csr_bad_signature"
        )
        for kt in (KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048, KeyType.ED25519)
    },
    "identity-edited-after-signing": Refusal(
        _identity_edited_after_signing, InvalidRequest, "csr_bad_signature", caller=API_ID
    ),
    # identity
    "uri-of-another-workload": Refusal(
        lambda k: make_csr(_ec_key(k), uris=[API_ID]), PermissionDenied, "csr_identity_mismatch"
    ),
    "uri-in-another-trust-domain": Refusal(
        lambda k: make_csr(_ec_key(k), uris=["spiffe://other.example/ns/default/sa/web"]),
        PermissionDenied,
        "csr_identity_mismatch",
    ),
    "uri-of-the-trust-domain-itself": Refusal(
        lambda k: make_csr(_ec_key(k), uris=["spiffe://cluster.local"]),
        PermissionDenied,
        "csr_identity_mismatch",
    ),
    "uri-not-spiffe": Refusal(
        lambda k: make_csr(_ec_key(k), uris=["https://cluster.local/ns/default/sa/web"]),
        PermissionDenied,
        "csr_identity_mismatch",
    ),
    "two-uris-both-the-caller": Refusal(
        lambda k: make_csr(_ec_key(k), uris=[WEB_ID, WEB_ID]), InvalidRequest, "csr_multiple_uris"
    ),
    "two-uris-caller-and-another": Refusal(
        lambda k: make_csr(_ec_key(k), uris=[WEB_ID, API_ID]), InvalidRequest, "csr_multiple_uris"
    ),
    # SANs other than the one URI
    "extra-dns-san": Refusal(
        lambda k: make_csr(_ec_key(k), uris=[WEB_ID], dns=["web.default.svc"]),
        InvalidRequest,
        "csr_forbidden_san",
    ),
    "dns-san-only": Refusal(
        lambda k: make_csr(_ec_key(k), dns=["web.default.svc"]),
        InvalidRequest,
        "csr_forbidden_san",
    ),
    "extra-ipv4-san": Refusal(
        lambda k: make_csr(_ec_key(k), uris=[WEB_ID], ips=["10.0.0.7"]),
        InvalidRequest,
        "csr_forbidden_san",
    ),
    "extra-ipv6-san": Refusal(
        lambda k: make_csr(_ec_key(k), uris=[WEB_ID], ips=["fd00::7"]),
        InvalidRequest,
        "csr_forbidden_san",
    ),
    "extra-email-san": Refusal(
        lambda k: make_csr(_ec_key(k), uris=[WEB_ID], emails=["web@example.com"]),
        InvalidRequest,
        "csr_forbidden_san",
    ),
    "extra-directory-name-san": Refusal(
        lambda k: csr_with(
            _ec_key(k),
            names=[
                x509.UniformResourceIdentifier(WEB_ID),
                x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")])),
            ],
        ),
        InvalidRequest,
        "csr_forbidden_san",
    ),
    "extra-registered-id-san": Refusal(
        lambda k: csr_with(
            _ec_key(k),
            names=[
                x509.UniformResourceIdentifier(WEB_ID),
                x509.RegisteredID(ObjectIdentifier("1.3.6.1.4.1.55555.2")),
            ],
        ),
        InvalidRequest,
        "csr_forbidden_san",
    ),
    "extra-other-name-san": Refusal(
        lambda k: csr_with(
            _ec_key(k),
            names=[
                x509.UniformResourceIdentifier(WEB_ID),
                x509.OtherName(ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x03web"),
            ],
        ),
        InvalidRequest,
        "csr_forbidden_san",
    ),
    # asks to be a CA
    "basic-constraints-ca-true": Refusal(
        lambda k: make_csr(_ec_key(k), ca=True), InvalidRequest, "csr_requests_ca"
    ),
    # keys
    "rsa-1024": Refusal(
        lambda _: csr_with(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        InvalidRequest,
        "csr_weak_key",
    ),
    "ec-secp521r1": Refusal(
        lambda _: csr_with(ec.generate_private_key(ec.SECP521R1())),
        InvalidRequest,
        "csr_unsupported_key",
    ),
    "ec-secp256k1": Refusal(
        lambda _: csr_with(ec.generate_private_key(ec.SECP256K1())),
        InvalidRequest,
        "csr_unsupported_key",
    ),
    "ed448": Refusal(
        lambda _: csr_with(ed448.Ed448PrivateKey.generate()),
        InvalidRequest,
        "csr_unsupported_key",
    ),
    # size
    "der-over-64kib": Refusal(
        lambda k: _sized_csr(_ed25519_key(k), MAX_CSR + 1), InvalidRequest, "csr_too_large"
    ),
    "pem-of-a-64kib-der": Refusal(
        lambda k: _to_pem(_sized_csr(_ed25519_key(k), MAX_CSR)), InvalidRequest, "csr_too_large"
    ),
}


def _ed25519_key(keys: KeyBank) -> ed25519.Ed25519PrivateKey:
    key = keys.key(KeyType.ED25519, "csr")
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key


def _to_pem(der: bytes) -> bytes:
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_refused(issuer: Issuer, key_bank: KeyBank, now: datetime, case: Refusal) -> None:
    caller = WorkloadIdentity.from_spiffe_id(SpiffeId(case.caller))
    csr = case.build(key_bank)

    with pytest.raises(MeshcaError) as excinfo:
        issuer.issue(request_for(csr, caller), now)

    assert type(excinfo.value) is case.error
    assert excinfo.value.reason == case.reason


def test_refused_duplicate_extension_is_malformed(
    issuer: Issuer, key_bank: KeyBank, web: WorkloadIdentity, now: datetime
) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        issuer.issue(request_for(_duplicate_san_csr(key_bank), web), now)

    assert excinfo.value.reason == "csr_malformed"


@dataclass(frozen=True, slots=True)
class Accepted:
    build: Callable[[KeyBank], bytes]
    key_slot: tuple[KeyType, str] = (KeyType.EC_P256, "csr")


ACCEPTED = {
    "no-san-gets-the-callers-id": Accepted(lambda k: make_csr(_ec_key(k))),
    "exactly-the-callers-id": Accepted(lambda k: make_csr(_ec_key(k), uris=[WEB_ID])),
    "der-encoding": Accepted(
        lambda k: csr_with(_ec_key(k), names=[x509.UniformResourceIdentifier(WEB_ID)])
    ),
    "critical-san": Accepted(
        lambda k: csr_with(
            _ec_key(k),
            extensions=[
                (x509.SubjectAlternativeName([x509.UniformResourceIdentifier(WEB_ID)]), True)
            ],
        )
    ),
    "basic-constraints-ca-false": Accepted(
        lambda k: csr_with(
            _ec_key(k), extensions=[(x509.BasicConstraints(ca=False, path_length=None), True)]
        )
    ),
    "subject-is-ignored": Accepted(
        lambda k: csr_with(
            _ec_key(k),
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]),
        )
    ),
    "rsa-3072": Accepted(
        lambda k: make_csr(k.key(KeyType.RSA_3072, "csr")), (KeyType.RSA_3072, "csr")
    ),
    "der-of-exactly-64kib": Accepted(
        lambda k: _sized_csr(_ed25519_key(k), MAX_CSR), (KeyType.ED25519, "csr")
    ),
}


@pytest.mark.parametrize("case", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted_and_issued_for_the_caller(
    issuer: Issuer, key_bank: KeyBank, web: WorkloadIdentity, now: datetime, case: Accepted
) -> None:
    svid = issuer.issue(request_for(case.build(key_bank), web), now)

    cert = svid.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(WEB_ID)]
    assert len(cert.subject) == 0
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert public_key_sha256(cert.public_key()) == public_key_sha256(
        key_bank.key(*case.key_slot).public_key()
    )


@pytest.mark.parametrize(
    ("caller", "error", "reason"),
    [
        pytest.param(
            "spiffe://other.example/ns/default/sa/web",
            PermissionDenied,
            "foreign_trust_domain",
            id="caller-in-another-trust-domain",
        ),
        pytest.param(
            "spiffe://cluster.local", InvalidRequest, "invalid_spiffe_id", id="caller-without-path"
        ),
    ],
)
def test_callers_outside_the_trust_domain_are_refused(
    issuer: Issuer,
    key_bank: KeyBank,
    now: datetime,
    caller: str,
    error: type[MeshcaError],
    reason: str,
) -> None:
    identity = WorkloadIdentity.from_spiffe_id(SpiffeId(caller))
    # Even a CSR naming exactly the caller's own ID must not get it a certificate.
    csr = make_csr(_ec_key(key_bank), uris=[caller])

    with pytest.raises(MeshcaError) as excinfo:
        issuer.issue(request_for(csr, identity), now)

    assert type(excinfo.value) is error
    assert excinfo.value.reason == reason


def test_a_refusal_becomes_a_ledger_row_with_its_reason(
    issuer: Issuer, key_bank: KeyBank, web: WorkloadIdentity, now: datetime
) -> None:
    request = request_for(make_csr(_ec_key(key_bank), uris=[API_ID]), web)
    with pytest.raises(PermissionDenied) as excinfo:
        issuer.issue(request, now)

    row = deny_record(request, excinfo.value, now)

    assert (row.reason, row.error_type) == ("csr_identity_mismatch", "PermissionDenied")
    assert (row.spiffe_id, row.namespace, row.service_account) == (WEB_ID, "default", "web")
    assert row.request_id == request.request_id
    assert row.denied_at == now
    assert API_ID in row.message
