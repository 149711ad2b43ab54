"""Plugging in an existing CA: real files in Istio's ``cacerts`` layout and in the Kubernetes
TLS-secret layout, loaded by ``load_cacerts`` and checked by ``assemble_authority``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from ca.cacerts import load_cacerts
from ca.core.authority import (
    SigningAuthority,
    assemble_authority,
    build_intermediate,
    build_root,
)
from ca.core.csr_policy import TtlPolicy
from ca.core.errors import ConfigurationError
from ca.core.identity import WorkloadIdentity
from ca.core.issuer import Issuer
from ca.core.keys import CA_KEY_TYPES, KeyType, signature_hash_for
from tests.core.builders import CaBank, CaPair, KeyBank, key_pem, pem, request_for
from tests.factories import TRUST_DOMAIN, make_csr

DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Material:
    """Everything a layout case may write: our CA, an unrelated one, keys and the clock."""

    ca: CaPair
    other: CaPair
    keys: KeyBank
    now: datetime

    @property
    def root(self) -> x509.Certificate:
        return self.ca.root.certificate

    @property
    def intermediate(self) -> x509.Certificate:
        return self.ca.intermediate.certificate

    @property
    def intermediate_key(self) -> CertificateIssuerPrivateKeyTypes:
        return self.ca.intermediate.private_key


def istio(
    directory: Path,
    cert: x509.Certificate,
    key: CertificateIssuerPrivateKeyTypes,
    chain: list[x509.Certificate] | None,
    roots: list[x509.Certificate],
) -> None:
    (directory / "ca-cert.pem").write_bytes(pem(cert))
    (directory / "ca-key.pem").write_bytes(key_pem(key))
    if chain is not None:
        (directory / "cert-chain.pem").write_bytes(pem(*chain))
    (directory / "root-cert.pem").write_bytes(pem(*roots))


def tls(
    directory: Path,
    certs: list[x509.Certificate],
    key: CertificateIssuerPrivateKeyTypes,
    roots: list[x509.Certificate],
) -> None:
    (directory / "tls.crt").write_bytes(pem(*certs))
    (directory / "tls.key").write_bytes(key_pem(key))
    (directory / "ca.crt").write_bytes(pem(*roots))


def _ca_cert(
    public_key: CertificateIssuerPublicKeyTypes,
    issuer: SigningAuthority,
    *,
    not_before: datetime,
    not_after: datetime,
    key_cert_sign: bool = True,
) -> x509.Certificate:
    """A CA certificate built by hand (for shapes meshca's own builders never produce)."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hand-made CA")]))
        .issuer_name(issuer.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=key_cert_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                issuer.subject_key_identifier
            ),
            critical=False,
        )
        .sign(issuer.private_key, signature_hash_for(issuer.private_key))
    )


@pytest.fixture
def material(ca_bank: CaBank, key_bank: KeyBank, now: datetime) -> Material:
    return Material(ca_bank.ca(KeyType.EC_P256), ca_bank.ca(KeyType.EC_P384), key_bank, now)


def _issue_and_verify(authority: SigningAuthority, root: x509.Certificate, now: datetime) -> None:
    """The loaded CA can sign an SVID that verifies up to ``root``."""
    caller = WorkloadIdentity.for_service_account(TRUST_DOMAIN, "default", "web")
    svid = Issuer(TRUST_DOMAIN, authority, TtlPolicy()).issue(request_for(make_csr(), caller), now)
    verified = (
        PolicyBuilder()
        .store(Store([root]))
        .time(now)
        .build_client_verifier()
        .verify(svid.certificate, list(svid.chain))
    )
    assert verified.chain[-1] == root


# --- accepted ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ca_type", CA_KEY_TYPES, ids=lambda t: f"ca-{t}")
def test_istio_layout_is_loaded_for_every_ca_key_type(
    ca_bank: CaBank, ca_type: KeyType, now: datetime, tmp_path: Path
) -> None:
    ca = ca_bank.ca(ca_type)
    root, intermediate = ca.root.certificate, ca.intermediate.certificate
    istio(tmp_path, intermediate, ca.intermediate.private_key, [intermediate, root], [root])

    authority = load_cacerts(tmp_path, now=now)

    assert authority.certificate == intermediate
    assert authority.chain_for_leaf == (intermediate, root)
    assert authority.root == root
    assert authority.key_id == ca.intermediate.key_id
    _issue_and_verify(authority, root, now)


Layout = Callable[[Path, Material], None]


def _istio_then(name: str, content: Callable[[Material], bytes] | None) -> Layout:
    """A valid Istio layout with file ``name`` then replaced by ``content`` (or deleted)."""

    def layout(directory: Path, m: Material) -> None:
        istio(directory, m.intermediate, m.intermediate_key, None, [m.root])
        if content is None:
            (directory / name).unlink()
        else:
            (directory / name).write_bytes(content(m))

    return layout


ACCEPTED: dict[str, Layout] = {
    "istio-chain-of-intermediate-and-root": lambda d, m: istio(
        d, m.intermediate, m.intermediate_key, [m.intermediate, m.root], [m.root]
    ),
    "istio-chain-without-the-ca-cert-itself": lambda d, m: istio(
        d, m.intermediate, m.intermediate_key, [m.root], [m.root]
    ),
    "istio-chain-of-the-ca-cert-only": lambda d, m: istio(
        d, m.intermediate, m.intermediate_key, [m.intermediate], [m.root]
    ),
    "istio-without-cert-chain-file": lambda d, m: istio(
        d, m.intermediate, m.intermediate_key, None, [m.root]
    ),
    "istio-root-file-with-several-roots": lambda d, m: istio(
        d, m.intermediate, m.intermediate_key, None, [m.other.root.certificate, m.root]
    ),
    "istio-traditional-openssl-key-file": _istio_then(
        "ca-key.pem",
        lambda m: m.intermediate_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
    ),
    "tls-crt-with-chain": lambda d, m: tls(
        d, [m.intermediate, m.root], m.intermediate_key, [m.root]
    ),
    "tls-crt-alone": lambda d, m: tls(d, [m.intermediate], m.intermediate_key, [m.root]),
}


@pytest.mark.parametrize("layout", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted(material: Material, layout: Layout, tmp_path: Path) -> None:
    layout(tmp_path, material)

    authority = load_cacerts(tmp_path, now=material.now)

    assert authority.certificate == material.intermediate
    assert authority.chain == (material.root,)
    _issue_and_verify(authority, material.root, material.now)


def test_a_root_may_be_the_signing_ca(material: Material, tmp_path: Path) -> None:
    istio(tmp_path, material.root, material.ca.root.private_key, [material.root], [material.root])

    authority = load_cacerts(tmp_path, now=material.now)

    assert authority.certificate == material.root
    assert authority.chain_for_leaf == (material.root,)
    _issue_and_verify(authority, material.root, material.now)


# --- refused ----------------------------------------------------------------------------------


def _leaf_as_ca(d: Path, m: Material) -> None:
    leaf_key = m.keys.key(KeyType.EC_P256, "leaf")
    caller = WorkloadIdentity.for_service_account(TRUST_DOMAIN, "default", "web")
    svid = Issuer(TRUST_DOMAIN, m.ca.intermediate, TtlPolicy()).issue(
        request_for(make_csr(leaf_key), caller), m.now
    )
    istio(d, svid.certificate, leaf_key, [m.intermediate, m.root], [m.root])


def _ca_without_cert_sign(d: Path, m: Material) -> None:
    key = m.keys.key(KeyType.EC_P256, "hand-made")
    cert = _ca_cert(
        key.public_key(),
        m.ca.root,
        not_before=m.now - DAY,
        not_after=m.now + DAY,
        key_cert_sign=False,
    )
    istio(d, cert, key, [cert, m.root], [m.root])


def _expired_intermediate(d: Path, m: Material) -> None:
    key = m.keys.key(KeyType.EC_P256, "expired")
    cert = _ca_cert(
        key.public_key(),
        m.ca.root,
        not_before=m.ca.root.not_before,
        not_after=m.now - timedelta(hours=1),
    )
    istio(d, cert, key, [cert, m.root], [m.root])


def _only_a_key(d: Path, m: Material) -> None:
    (d / "tls.key").write_bytes(key_pem(m.intermediate_key))


def _future_intermediate(d: Path, m: Material) -> None:
    key = m.keys.key(KeyType.EC_P256, "future")
    cert = _ca_cert(key.public_key(), m.ca.root, not_before=m.now + DAY, not_after=m.now + 10 * DAY)
    istio(d, cert, key, [cert, m.root], [m.root])


@dataclass(frozen=True, slots=True)
class Refusal:
    layout: Layout
    reason: str


REFUSED: dict[str, Refusal] = {
    "key-of-another-ca": Refusal(
        lambda d, m: istio(d, m.intermediate, m.other.intermediate.private_key, None, [m.root]),
        "ca_key_mismatch",
    ),
    "key-of-the-root": Refusal(
        lambda d, m: istio(d, m.intermediate, m.ca.root.private_key, None, [m.root]),
        "ca_key_mismatch",
    ),
    "tls-key-of-another-ca": Refusal(
        lambda d, m: tls(d, [m.intermediate], m.other.intermediate.private_key, [m.root]),
        "ca_key_mismatch",
    ),
    "root-file-holds-another-root": Refusal(
        lambda d, m: istio(d, m.intermediate, m.intermediate_key, None, [m.other.root.certificate]),
        "ca_chain_invalid",
    ),
    "chain-ends-in-another-root": Refusal(
        lambda d, m: istio(
            d,
            m.intermediate,
            m.intermediate_key,
            [m.intermediate, m.other.root.certificate],
            [m.other.root.certificate],
        ),
        "ca_chain_invalid",
    ),
    "chain-through-another-intermediate": Refusal(
        lambda d, m: istio(
            d,
            m.intermediate,
            m.intermediate_key,
            [m.other.intermediate.certificate, m.root],
            [m.root],
        ),
        "ca_chain_invalid",
    ),
    "tls-chain-ends-in-another-root": Refusal(
        lambda d, m: tls(d, [m.intermediate], m.intermediate_key, [m.other.root.certificate]),
        "ca_chain_invalid",
    ),
    "workload-leaf-as-ca": Refusal(_leaf_as_ca, "ca_not_a_ca"),
    "ca-without-key-cert-sign": Refusal(_ca_without_cert_sign, "ca_not_a_ca"),
    "expired-intermediate": Refusal(_expired_intermediate, "ca_expired"),
    "not-yet-valid-intermediate": Refusal(_future_intermediate, "ca_expired"),
    "empty-directory": Refusal(lambda d, m: None, "cacerts_missing"),
    "only-a-key": Refusal(_only_a_key, "cacerts_missing"),
    "ca-cert-not-pem": Refusal(
        _istio_then("ca-cert.pem", lambda m: b"this is not a certificate\n"), "cacerts_invalid"
    ),
    "root-cert-not-pem": Refusal(_istio_then("root-cert.pem", lambda m: b""), "cacerts_invalid"),
    "key-not-pem": Refusal(
        _istio_then("ca-key.pem", lambda m: b"-----BEGIN PRIVATE KEY-----\nAAAA\n"),
        "cacerts_invalid",
    ),
    "key-encrypted": Refusal(
        _istio_then(
            "ca-key.pem",
            lambda m: m.intermediate_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"passphrase"),
            ),
        ),
        "cacerts_invalid",
    ),
    "key-file-missing": Refusal(_istio_then("ca-key.pem", None), "cacerts_unreadable"),
    "root-file-missing": Refusal(_istio_then("root-cert.pem", None), "cacerts_unreadable"),
}


@pytest.mark.parametrize("case", REFUSED.values(), ids=REFUSED.keys())
def test_refused(material: Material, case: Refusal, tmp_path: Path) -> None:
    case.layout(tmp_path, material)

    with pytest.raises(ConfigurationError) as excinfo:
        load_cacerts(tmp_path, now=material.now)

    assert excinfo.value.reason == case.reason


def test_refused_expired_root_given_only_in_the_root_file(
    key_bank: KeyBank, now: datetime, tmp_path: Path
) -> None:
    root = build_root(
        TRUST_DOMAIN, key_bank.key(KeyType.EC_P256, "root"), now=now - 10 * DAY, ttl=5 * DAY
    )
    key = key_bank.key(KeyType.EC_P256, "outlives-root")
    # An externally made intermediate that (unlike meshca's) outlives its root.
    intermediate = _ca_cert(
        key.public_key(), root, not_before=now - 10 * DAY, not_after=now + 300 * DAY
    )
    assert root.not_after < now < intermediate.not_valid_after_utc
    tls(tmp_path, [intermediate], key, [root.certificate])

    with pytest.raises(ConfigurationError) as excinfo:
        load_cacerts(tmp_path, now=now)

    assert excinfo.value.reason == "ca_expired"


def test_refused_chain_violating_path_length(
    ca_bank: CaBank, key_bank: KeyBank, now: datetime, tmp_path: Path
) -> None:
    ca = ca_bank.ca(KeyType.EC_P256)
    assert (
        ca.intermediate.certificate.extensions.get_extension_for_class(
            x509.BasicConstraints
        ).value.path_length
        == 0
    )
    key = key_bank.key(KeyType.EC_P256, "below-path-length-0")
    too_deep = build_intermediate(TRUST_DOMAIN, key, ca.intermediate, now=now, ttl=DAY)
    istio(
        tmp_path,
        too_deep.certificate,
        key,
        [too_deep.certificate, ca.intermediate.certificate, ca.root.certificate],
        [ca.root.certificate],
    )

    with pytest.raises(ConfigurationError) as excinfo:
        load_cacerts(tmp_path, now=now)

    assert excinfo.value.reason == "ca_chain_invalid"


# --- assemble_authority directly --------------------------------------------------------------


def test_assemble_refuses_when_no_root_is_given(material: Material) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        assemble_authority(
            material.intermediate, material.intermediate_key, [], [], now=material.now
        )

    assert excinfo.value.reason == "ca_chain_invalid"


def test_assemble_checks_the_key_before_anything_else(material: Material) -> None:
    # Even with a chain that would also fail, a wrong key is reported as such.
    with pytest.raises(ConfigurationError) as excinfo:
        assemble_authority(
            material.intermediate,
            material.other.intermediate.private_key,
            [],
            [material.other.root.certificate],
            now=material.now,
        )

    assert excinfo.value.reason == "ca_key_mismatch"


def test_assemble_returns_a_usable_authority(material: Material) -> None:
    authority = assemble_authority(
        material.intermediate,
        material.intermediate_key,
        [],
        [material.root],
        now=material.now,
    )

    authority.verify_chain()
    assert authority.chain_for_leaf == (material.intermediate, material.root)
    _issue_and_verify(authority, material.root, material.now)
