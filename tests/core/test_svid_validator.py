"""The independent validator refuses every non-conforming certificate it could be handed.

The bad leaves are built here with ``cryptography``'s ``CertificateBuilder`` (not with meshca's
builder), each breaking exactly one rule of the SPIFFE X509-SVID profile; the conforming leaf
they all start from is checked to pass, so each refusal is caused by its one defect."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from spiffe import SpiffeId

from ca.core.errors import InternalError
from ca.core.keys import KeyType
from ca.core.svid_validator import SvidValidator, validate_svid
from tests.core.builders import CaBank, CaPair, KeyBank
from tests.factories import WEB_ID

BOTH_AUTH = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


def _usage(**overrides: bool) -> x509.KeyUsage:
    flags = {
        "digital_signature": True,
        "content_commitment": False,
        "key_encipherment": True,
        "data_encipherment": False,
        "key_agreement": False,
        "key_cert_sign": False,
        "crl_sign": False,
        "encipher_only": False,
        "decipher_only": False,
    } | overrides
    return x509.KeyUsage(**flags)


EMPTY_NAME = x509.Name([])
WEB_URI = x509.UniformResourceIdentifier(WEB_ID)
NOT_CA = x509.BasicConstraints(ca=False, path_length=None)
LEAF_USAGE = _usage()


@dataclass(frozen=True, slots=True)
class Leaf:
    """A leaf certificate, described rule by rule; ``None`` omits an extension."""

    subject: x509.Name = EMPTY_NAME
    san: tuple[x509.GeneralName, ...] | None = (WEB_URI,)
    san_critical: bool = True
    basic_constraints: x509.BasicConstraints | None = NOT_CA
    basic_constraints_critical: bool = True
    key_usage: x509.KeyUsage | None = LEAF_USAGE
    key_usage_critical: bool = True
    eku: tuple[x509.ObjectIdentifier, ...] | None = BOTH_AUTH
    ski: bytes | None = b"from-key"  # sentinel: derived from the leaf's key
    aki: bytes | None = b"from-issuer"  # sentinel: the issuer's SKI
    not_before: datetime | None = None  # default: a minute before now
    not_after: datetime | None = None  # default: an hour after now
    signed_by_impostor: bool = False
    expected_id: str = WEB_ID


def _build(spec: Leaf, ca: CaPair, keys: KeyBank, now: datetime) -> x509.Certificate:
    leaf_key = keys.key(KeyType.EC_P256, "leaf")
    issuer = ca.intermediate
    builder = (
        x509.CertificateBuilder()
        .subject_name(spec.subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(spec.not_before or now - timedelta(minutes=1))
        .not_valid_after(spec.not_after or now + timedelta(hours=1))
    )
    if spec.san is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(spec.san), critical=spec.san_critical
        )
    if spec.basic_constraints is not None:
        builder = builder.add_extension(
            spec.basic_constraints, critical=spec.basic_constraints_critical
        )
    if spec.key_usage is not None:
        builder = builder.add_extension(spec.key_usage, critical=spec.key_usage_critical)
    if spec.eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(spec.eku), critical=False)
    if spec.ski is not None:
        ski = (
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key())
            if spec.ski == b"from-key"
            else x509.SubjectKeyIdentifier(spec.ski)
        )
        builder = builder.add_extension(ski, critical=False)
    if spec.aki is not None:
        digest = issuer.subject_key_identifier.digest if spec.aki == b"from-issuer" else spec.aki
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(digest, None, None), critical=False
        )
    signing_key: CertificateIssuerPrivateKeyTypes = (
        keys.key(KeyType.EC_P256, "impostor") if spec.signed_by_impostor else issuer.private_key
    )
    return builder.sign(signing_key, hashes.SHA256())


@pytest.fixture
def ca(ca_bank: CaBank) -> CaPair:
    return ca_bank.ca(KeyType.EC_P256)


def test_the_conforming_starting_point_passes(ca: CaPair, key_bank: KeyBank, now: datetime) -> None:
    leaf = _build(Leaf(), ca, key_bank, now)

    validate_svid(leaf, ca.intermediate.certificate, SpiffeId(WEB_ID), now=now)
    SvidValidator(ca.intermediate.certificate).validate(leaf, SpiffeId(WEB_ID), now=now)


Defect = Callable[[CaPair, datetime], Leaf]
GOOD = Leaf()
DNS = x509.DNSName("web.default.svc")

DEFECTS: dict[str, Defect] = {
    "non-empty-subject": lambda ca, now: replace(
        GOOD, subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")])
    ),
    "san-not-critical": lambda ca, now: replace(GOOD, san_critical=False),
    "san-missing": lambda ca, now: replace(GOOD, san=None),
    "extra-dns-san": lambda ca, now: replace(GOOD, san=(WEB_URI, DNS)),
    "dns-san-instead-of-uri": lambda ca, now: replace(GOOD, san=(DNS,)),
    "two-uri-sans": lambda ca, now: replace(
        GOOD, san=(WEB_URI, x509.UniformResourceIdentifier(WEB_ID + "2"))
    ),
    "another-spiffe-id": lambda ca, now: replace(
        GOOD, expected_id="spiffe://cluster.local/ns/default/sa/api"
    ),
    "trust-domain-id-without-path": lambda ca, now: replace(
        GOOD,
        san=(x509.UniformResourceIdentifier("spiffe://cluster.local"),),
        expected_id="spiffe://cluster.local",
    ),
    "ca-true": lambda ca, now: replace(
        GOOD, basic_constraints=x509.BasicConstraints(ca=True, path_length=None)
    ),
    "basic-constraints-not-critical": lambda ca, now: replace(
        GOOD, basic_constraints_critical=False
    ),
    "basic-constraints-missing": lambda ca, now: replace(GOOD, basic_constraints=None),
    "key-usage-missing": lambda ca, now: replace(GOOD, key_usage=None),
    "key-usage-not-critical": lambda ca, now: replace(GOOD, key_usage_critical=False),
    "no-digital-signature": lambda ca, now: replace(
        GOOD, key_usage=_usage(digital_signature=False)
    ),
    "key-cert-sign": lambda ca, now: replace(GOOD, key_usage=_usage(key_cert_sign=True)),
    "crl-sign": lambda ca, now: replace(GOOD, key_usage=_usage(crl_sign=True)),
    "eku-missing": lambda ca, now: replace(GOOD, eku=None),
    "eku-server-auth-only": lambda ca, now: replace(GOOD, eku=(ExtendedKeyUsageOID.SERVER_AUTH,)),
    "eku-client-auth-only": lambda ca, now: replace(GOOD, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,)),
    "eku-plus-code-signing": lambda ca, now: replace(
        GOOD, eku=(*BOTH_AUTH, ExtendedKeyUsageOID.CODE_SIGNING)
    ),
    "ski-missing": lambda ca, now: replace(GOOD, ski=None),
    "ski-not-of-the-leaf-key": lambda ca, now: replace(GOOD, ski=b"\x01" * 20),
    "aki-missing": lambda ca, now: replace(GOOD, aki=None),
    "aki-of-another-key": lambda ca, now: replace(GOOD, aki=b"\x02" * 20),
    "signed-by-another-key": lambda ca, now: replace(GOOD, signed_by_impostor=True),
    "outlives-the-issuer": lambda ca, now: replace(
        GOOD, not_after=ca.intermediate.not_after + timedelta(seconds=1)
    ),
    "predates-the-issuer": lambda ca, now: replace(
        GOOD, not_before=ca.intermediate.not_before - timedelta(seconds=1)
    ),
    "expired": lambda ca, now: replace(
        GOOD, not_before=now - timedelta(hours=2), not_after=now - timedelta(hours=1)
    ),
    "expires-exactly-now": lambda ca, now: replace(
        GOOD, not_before=now - timedelta(hours=2), not_after=now
    ),
    "not-yet-valid": lambda ca, now: replace(GOOD, not_before=now + timedelta(minutes=1)),
}


Validate = Callable[[x509.Certificate, x509.Certificate, SpiffeId, datetime], None]

# Both entry points: the one-off function and the per-issuer validator ``Issuer`` uses.
ENTRY_POINTS: dict[str, Validate] = {
    "validate_svid": lambda leaf, issuer, spiffe_id, now: validate_svid(
        leaf, issuer, spiffe_id, now=now
    ),
    "SvidValidator": lambda leaf, issuer, spiffe_id, now: SvidValidator(issuer).validate(
        leaf, spiffe_id, now=now
    ),
}
over_entry_points = pytest.mark.parametrize(
    "validate", ENTRY_POINTS.values(), ids=ENTRY_POINTS.keys()
)


@over_entry_points
@pytest.mark.parametrize("defect", DEFECTS.values(), ids=DEFECTS.keys())
def test_rejects(
    ca: CaPair, key_bank: KeyBank, now: datetime, defect: Defect, validate: Validate
) -> None:
    spec = defect(ca, now)
    leaf = _build(spec, ca, key_bank, now)

    with pytest.raises(InternalError) as excinfo:
        validate(leaf, ca.intermediate.certificate, SpiffeId(spec.expected_id), now)

    assert excinfo.value.reason == "svid_validation_failed"


def test_rejects_a_leaf_over_another_key_than_the_one_requested(
    ca: CaPair, key_bank: KeyBank, now: datetime
) -> None:
    leaf = _build(Leaf(), ca, key_bank, now)
    requested = key_bank.key(KeyType.EC_P256, "requested")
    validator = SvidValidator(ca.intermediate.certificate)

    with pytest.raises(InternalError) as excinfo:
        validator.validate(leaf, SpiffeId(WEB_ID), now=now, public_key=requested.public_key())

    assert excinfo.value.reason == "svid_validation_failed"
    validator.validate(
        leaf,
        SpiffeId(WEB_ID),
        now=now,
        public_key=key_bank.key(KeyType.EC_P256, "leaf").public_key(),
    )


@over_entry_points
def test_rejects_a_leaf_checked_against_the_wrong_issuer(
    ca_bank: CaBank, key_bank: KeyBank, now: datetime, validate: Validate
) -> None:
    """A leaf signed by one intermediate does not validate against another CA's certificate."""
    ec_ca = ca_bank.ca(KeyType.EC_P256)
    leaf = _build(Leaf(), ec_ca, key_bank, now)

    with pytest.raises(InternalError) as excinfo:
        validate(leaf, ca_bank.ca(KeyType.EC_P384).intermediate.certificate, SpiffeId(WEB_ID), now)

    assert excinfo.value.reason == "svid_validation_failed"
