"""Issued X.509-SVIDs conform to the SPIFFE X509-SVID specification and verify in the tools
workloads actually use (py-spiffe, cryptography's verifier, OpenSSL), for every CA key type and
every accepted workload key type."""

from __future__ import annotations

import hashlib
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from spiffe import SpiffeId, X509Svid

from ca.core.authority import build_intermediate, build_root
from ca.core.csr_policy import TtlPolicy
from ca.core.identity import WorkloadIdentity
from ca.core.issuer import DEFAULT_BACKDATE, IssuedSvid, Issuer
from ca.core.keys import CA_KEY_TYPES, KeyType, public_key_sha256
from tests.core.builders import (
    LEAF_KEY_TYPES,
    CaBank,
    CaPair,
    KeyBank,
    key_pem,
    pem,
    request_for,
)
from tests.factories import TRUST_DOMAIN, WEB_ID, make_csr

E = TypeVar("E", bound=x509.ExtensionType)
MATRIX = [
    pytest.param(ca_type, leaf_type, id=f"ca-{ca_type}/leaf-{leaf_type}")
    for ca_type in CA_KEY_TYPES
    for leaf_type in LEAF_KEY_TYPES
]
over_matrix = pytest.mark.parametrize(("ca_type", "leaf_type"), MATRIX)
over_ca_types = pytest.mark.parametrize("ca_type", CA_KEY_TYPES, ids=lambda t: f"ca-{t}")

# The hash a CA signs with is matched to its key strength (P-384 signs with SHA-384).
SIGNATURE_HASH = {
    KeyType.EC_P256: "sha256",
    KeyType.EC_P384: "sha384",
    KeyType.RSA_2048: "sha256",
    KeyType.RSA_3072: "sha256",
}
DEFAULT_TTL = timedelta(hours=24)

requires_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="the openssl command-line tool is not installed"
)


@dataclass(frozen=True, slots=True)
class Issued:
    ca: CaPair
    leaf_key: CertificateIssuerPrivateKeyTypes
    svid: IssuedSvid
    now: datetime

    @property
    def leaf(self) -> x509.Certificate:
        return self.svid.certificate


@pytest.fixture
def issued(
    ca_bank: CaBank,
    key_bank: KeyBank,
    ca_type: KeyType,
    leaf_type: KeyType,
    web: WorkloadIdentity,
    now: datetime,
) -> Issued:
    """An SVID for ``web`` over a ``leaf_type`` key, issued by a ``ca_type`` intermediate with
    the default policy and no requested TTL."""
    ca = ca_bank.ca(ca_type)
    leaf_key = key_bank.key(leaf_type, "leaf")
    issuer = Issuer(TRUST_DOMAIN, ca.intermediate, TtlPolicy())
    svid = issuer.issue(request_for(make_csr(leaf_key), web), now)
    return Issued(ca, leaf_key, svid, now)


def _extension(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


# --- accepted by the SPIFFE library and by X.509 path validators ---------------------------


@over_matrix
def test_py_spiffe_parses_der_chain_and_reports_the_spiffe_id(issued: Issued) -> None:
    chain_der = b"".join(
        c.public_bytes(serialization.Encoding.DER) for c in (issued.leaf, *issued.svid.chain)
    )
    key_der = issued.leaf_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )

    svid = X509Svid.parse_raw(chain_der, key_der)

    assert svid.spiffe_id == SpiffeId(WEB_ID)
    assert svid.leaf == issued.leaf
    assert svid.cert_chain == [
        issued.leaf,
        issued.ca.intermediate.certificate,
        issued.ca.root.certificate,
    ]


@over_matrix
def test_py_spiffe_parses_pem_chain_and_reports_the_spiffe_id(issued: Issued) -> None:
    svid = X509Svid.parse("".join(issued.svid.chain_pem()).encode(), key_pem(issued.leaf_key))

    assert svid.spiffe_id == SpiffeId(WEB_ID)
    assert svid.leaf == issued.leaf


@over_matrix
def test_chain_verifies_with_cryptography_client_verifier(issued: Issued) -> None:
    # The web-PKI client policy accepts SVIDs as they are (empty subject + critical URI SAN,
    # Ed25519 workload keys included), so no per-link fallback is needed.
    verifier = (
        PolicyBuilder()
        .store(Store([issued.ca.root.certificate]))
        .time(issued.now)
        .build_client_verifier()
    )

    verified = verifier.verify(issued.leaf, [issued.ca.intermediate.certificate])

    assert verified.chain == [
        issued.leaf,
        issued.ca.intermediate.certificate,
        issued.ca.root.certificate,
    ]
    assert verified.subjects == [x509.UniformResourceIdentifier(WEB_ID)]


OPENSSL_MODES = [
    pytest.param([], id="default"),
    pytest.param(["-purpose", "sslclient"], id="sslclient"),
    pytest.param(["-purpose", "sslserver"], id="sslserver"),
    pytest.param(["-x509_strict", "-purpose", "sslclient"], id="x509-strict"),
]


@requires_openssl
@over_matrix
@pytest.mark.parametrize("options", OPENSSL_MODES)
def test_openssl_verifies_chain(issued: Issued, options: list[str], tmp_path: Path) -> None:
    (tmp_path / "root.pem").write_bytes(pem(issued.ca.root.certificate))
    (tmp_path / "intermediates.pem").write_bytes(pem(issued.ca.intermediate.certificate))
    (tmp_path / "leaf.pem").write_bytes(pem(issued.leaf))

    result = subprocess.run(
        [
            "openssl",
            "verify",
            *options,
            "-CAfile",
            str(tmp_path / "root.pem"),
            "-untrusted",
            str(tmp_path / "intermediates.pem"),
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


@over_matrix
def test_two_workloads_complete_a_mutual_tls_handshake(
    issued: Issued, ca_bank: CaBank, key_bank: KeyBank, now: datetime, tmp_path: Path
) -> None:
    """The issued chain and key work as a TLS credential, both as client and as server."""
    peer_key = key_bank.key(KeyType.EC_P256, "peer")
    peer_id = WorkloadIdentity.for_service_account(TRUST_DOMAIN, "default", "peer")
    peer = Issuer(TRUST_DOMAIN, issued.ca.intermediate, TtlPolicy()).issue(
        request_for(make_csr(peer_key), peer_id), now
    )
    (tmp_path / "root.pem").write_bytes(pem(issued.ca.root.certificate))
    contexts = []
    for name, svid, key, purpose in (
        ("server", issued.svid, issued.leaf_key, ssl.PROTOCOL_TLS_SERVER),
        ("client", peer, peer_key, ssl.PROTOCOL_TLS_CLIENT),
    ):
        (tmp_path / f"{name}.pem").write_text("".join(svid.chain_pem()))
        (tmp_path / f"{name}.key").write_bytes(key_pem(key))
        context = ssl.SSLContext(purpose)
        context.check_hostname = False  # SPIFFE peers are authorised by URI SAN, not hostname
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(tmp_path / "root.pem")
        context.load_cert_chain(tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
        contexts.append(context)
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = contexts[0].wrap_bio(server_in, server_out, server_side=True)
    client = contexts[1].wrap_bio(client_in, client_out, server_side=False)

    done = {"server": False, "client": False}
    for _ in range(10):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            break

    assert done == {"server": True, "client": True}
    seen_by_client = client.getpeercert(binary_form=True)
    seen_by_server = server.getpeercert(binary_form=True)
    assert seen_by_client is not None
    assert seen_by_server is not None
    assert x509.load_der_x509_certificate(seen_by_client) == issued.leaf
    assert x509.load_der_x509_certificate(seen_by_server) == peer.certificate


# --- the X.509 details the SPIFFE X509-SVID specification asks for ---------------------------


@over_matrix
def test_certifies_the_key_from_the_csr(issued: Issued) -> None:
    assert public_key_sha256(issued.leaf.public_key()) == public_key_sha256(
        issued.leaf_key.public_key()
    )


@over_matrix
def test_subject_is_empty_and_the_only_san_is_one_critical_spiffe_uri(issued: Issued) -> None:
    san = _extension(issued.leaf, x509.SubjectAlternativeName)

    assert issued.leaf.version is x509.Version.v3
    assert len(issued.leaf.subject) == 0
    assert san.critical
    assert list(san.value) == [x509.UniformResourceIdentifier(WEB_ID)]


@over_matrix
def test_key_usage_is_critical_digital_signature_and_never_certificate_signing(
    issued: Issued,
) -> None:
    usage = _extension(issued.leaf, x509.KeyUsage)
    # RFC 8410: an Ed25519 key can only sign, so keyEncipherment must not be asserted for it.
    may_encipher = isinstance(issued.leaf_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)

    assert usage.critical
    assert usage.value.digital_signature
    assert usage.value.key_encipherment is may_encipher
    assert not usage.value.key_cert_sign
    assert not usage.value.crl_sign


@over_matrix
def test_extended_key_usage_is_server_and_client_auth(issued: Issued) -> None:
    eku = _extension(issued.leaf, x509.ExtendedKeyUsage).value

    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


@over_matrix
def test_basic_constraints_are_critical_and_not_a_ca(issued: Issued) -> None:
    constraints = _extension(issued.leaf, x509.BasicConstraints)

    assert constraints.critical
    assert constraints.value.ca is False


@over_matrix
def test_key_identifiers_match_the_leaf_key_and_the_issuer(issued: Issued) -> None:
    ski = _extension(issued.leaf, x509.SubjectKeyIdentifier).value
    aki = _extension(issued.leaf, x509.AuthorityKeyIdentifier).value
    issuer_ski = _extension(issued.ca.intermediate.certificate, x509.SubjectKeyIdentifier).value

    assert (
        ski.digest == x509.SubjectKeyIdentifier.from_public_key(issued.leaf_key.public_key()).digest
    )
    assert aki.key_identifier == issuer_ski.digest


@over_matrix
def test_signed_by_the_intermediate_with_a_hash_matching_its_key(
    issued: Issued, ca_type: KeyType
) -> None:
    issued.leaf.verify_directly_issued_by(issued.ca.intermediate.certificate)

    assert issued.leaf.issuer == issued.ca.intermediate.certificate.subject
    assert issued.leaf.signature_hash_algorithm is not None
    assert issued.leaf.signature_hash_algorithm.name == SIGNATURE_HASH[ca_type]


@over_matrix
def test_validity_is_backdated_and_lasts_the_default_24_hours(issued: Issued) -> None:
    not_before = issued.leaf.not_valid_before_utc

    assert issued.now - DEFAULT_BACKDATE - timedelta(seconds=1) <= not_before < issued.now
    assert issued.leaf.not_valid_after_utc == issued.now + DEFAULT_TTL


@over_matrix
def test_chain_pem_is_leaf_then_intermediate_then_root(issued: Issued) -> None:
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in issued.svid.chain_pem()]

    assert chain == [issued.leaf, issued.ca.intermediate.certificate, issued.ca.root.certificate]


@over_matrix
def test_ledger_record_describes_the_issued_certificate(issued: Issued, ca_type: KeyType) -> None:
    record = issued.svid.record
    der = issued.leaf.public_bytes(serialization.Encoding.DER)

    assert int(record.serial, 16) == issued.leaf.serial_number
    assert record.spiffe_id == WEB_ID
    assert (record.namespace, record.service_account) == ("default", "web")
    assert record.not_before == issued.leaf.not_valid_before_utc
    assert record.not_after == issued.leaf.not_valid_after_utc
    assert record.issuer_key_id == issued.ca.intermediate.key_id
    assert record.cert_sha256 == hashlib.sha256(der).hexdigest()
    assert record.public_key_sha256 == public_key_sha256(issued.leaf_key.public_key())


# --- serial numbers ---------------------------------------------------------------------------


def test_serials_are_positive_random_128_bit_values_unique_per_issuance(
    ca_bank: CaBank, web: WorkloadIdentity, now: datetime
) -> None:
    issuer = Issuer(TRUST_DOMAIN, ca_bank.ca(KeyType.EC_P256).intermediate, TtlPolicy())
    csr = make_csr()
    certs = [issuer.issue(request_for(csr, web), now).certificate for _ in range(64)]
    serials = [c.serial_number for c in certs]

    assert len(set(serials)) == len(serials)
    assert all(0 < s < 2**128 for s in serials)
    # 64 draws of 128 random bits: the chance that none sets the top bit is 2**-64, so a
    # generator with fewer random bits (or a counter) fails here.
    assert max(s.bit_length() for s in serials) == 128
    # RFC 5280 caps serials at 20 octets.
    assert all(len(s.to_bytes((s.bit_length() + 8) // 8, "big")) <= 20 for s in serials)


# --- the root and intermediate meshca builds -------------------------------------------------


@over_ca_types
def test_root_is_a_self_signed_ca_named_after_the_trust_domain(
    ca_bank: CaBank, ca_type: KeyType
) -> None:
    root = ca_bank.ca(ca_type).root.certificate
    constraints = _extension(root, x509.BasicConstraints)
    usage = _extension(root, x509.KeyUsage)
    san = _extension(root, x509.SubjectAlternativeName).value

    root.verify_directly_issued_by(root)
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        TRUST_DOMAIN.name
    )
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [f"spiffe://{TRUST_DOMAIN.name}"]
    assert SpiffeId(uris[0]).path == ""
    assert constraints.critical
    assert constraints.value.ca is True
    assert usage.critical
    assert usage.value.key_cert_sign
    assert _extension(root, x509.SubjectKeyIdentifier).value.digest == (
        x509.SubjectKeyIdentifier.from_public_key(root.public_key()).digest
    )


@over_ca_types
def test_intermediate_is_signed_by_the_root_with_path_length_zero(
    ca_bank: CaBank, ca_type: KeyType
) -> None:
    ca = ca_bank.ca(ca_type)
    intermediate, root = ca.intermediate.certificate, ca.root.certificate
    constraints = _extension(intermediate, x509.BasicConstraints)
    san = _extension(intermediate, x509.SubjectAlternativeName).value

    intermediate.verify_directly_issued_by(root)
    assert intermediate.issuer == root.subject
    assert constraints.critical
    assert constraints.value.ca is True
    assert constraints.value.path_length == 0
    assert _extension(intermediate, x509.KeyUsage).value.key_cert_sign
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local"]
    assert _extension(intermediate, x509.AuthorityKeyIdentifier).value.key_identifier == (
        _extension(root, x509.SubjectKeyIdentifier).value.digest
    )
    assert ca.intermediate.chain == (root,)


@over_ca_types
def test_intermediate_never_outlives_its_root(
    key_bank: KeyBank, ca_type: KeyType, now: datetime
) -> None:
    root = build_root(TRUST_DOMAIN, key_bank.key(ca_type, "root"), now=now, ttl=timedelta(hours=2))

    intermediate = build_intermediate(
        TRUST_DOMAIN,
        key_bank.key(ca_type, "intermediate"),
        root,
        now=now,
        ttl=timedelta(days=365),
    )

    assert root.not_after == now + timedelta(hours=2)
    assert intermediate.not_after == root.not_after


def test_intermediate_never_predates_its_root(key_bank: KeyBank, now: datetime) -> None:
    root = build_root(
        TRUST_DOMAIN, key_bank.key(KeyType.EC_P256, "root"), now=now, ttl=timedelta(days=1)
    )

    intermediate = build_intermediate(
        TRUST_DOMAIN,
        key_bank.key(KeyType.EC_P256, "intermediate"),
        root,
        now=now - timedelta(hours=1),
        ttl=timedelta(hours=2),
    )

    assert intermediate.not_before == root.not_before
