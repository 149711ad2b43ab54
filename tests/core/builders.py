"""Builders the core tests share: cached keys and CAs (RSA-3072 generation is slow, so every
key is made once per session), CSRs of shapes ``tests.factories.make_csr`` cannot express, and
the bit of DER surgery needed to forge CSRs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from ca.core.authority import SigningAuthority, build_intermediate, build_root
from ca.core.identity import WorkloadIdentity
from ca.core.issuer import IssuanceRequest
from ca.core.keys import KeyType, generate_private_key
from tests.factories import TRUST_DOMAIN

LEAF_KEY_TYPES = (KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048, KeyType.ED25519)
ROOT_TTL = timedelta(days=3650)
INTERMEDIATE_TTL = timedelta(days=365)


class KeyBank:
    """Private keys generated on first use and reused for the whole session, by (type, slot)."""

    def __init__(self) -> None:
        self._keys: dict[tuple[KeyType, str], CertificateIssuerPrivateKeyTypes] = {}

    def key(self, key_type: KeyType, slot: str = "default") -> CertificateIssuerPrivateKeyTypes:
        if (key_type, slot) not in self._keys:
            self._keys[key_type, slot] = generate_private_key(key_type)
        return self._keys[key_type, slot]


@dataclass(frozen=True, slots=True)
class CaPair:
    """A root and the intermediate it signed, as meshca builds them."""

    root: SigningAuthority
    intermediate: SigningAuthority


class CaBank:
    """One root + intermediate per CA key type, created a day before the session started, so
    that issuance "now" is well inside their validity (and backdating is not clamped)."""

    def __init__(self, keys: KeyBank, created: datetime) -> None:
        self.keys = keys
        self.created = created
        self._cas: dict[KeyType, CaPair] = {}

    def ca(self, key_type: KeyType) -> CaPair:
        if key_type not in self._cas:
            root = build_root(
                TRUST_DOMAIN, self.keys.key(key_type, "root"), now=self.created, ttl=ROOT_TTL
            )
            intermediate = build_intermediate(
                TRUST_DOMAIN,
                self.keys.key(key_type, "intermediate"),
                root,
                now=self.created,
                ttl=INTERMEDIATE_TTL,
            )
            self._cas[key_type] = CaPair(root, intermediate)
        return self._cas[key_type]


def request_for(
    csr: bytes, caller: WorkloadIdentity, ttl: timedelta | None = None
) -> IssuanceRequest:
    """An issuance request by ``caller`` for ``csr``."""
    return IssuanceRequest(
        csr=csr,
        caller=caller,
        requested_ttl=ttl,
        requester="tests/core",
        request_id=str(uuid.uuid4()),
    )


def sign_csr(
    builder: x509.CertificateSigningRequestBuilder,
    key: CertificateIssuerPrivateKeyTypes | ed448.Ed448PrivateKey,
) -> bytes:
    """DER of ``builder`` signed by ``key`` with the hash its algorithm needs."""
    algorithm = (
        None
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else hashes.SHA256()
    )
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


def csr_with(
    key: CertificateIssuerPrivateKeyTypes | ed448.Ed448PrivateKey,
    *,
    names: Sequence[x509.GeneralName] = (),
    subject: x509.Name | None = None,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> bytes:
    """A DER CSR with exactly the SANs ``names`` and any further ``extensions``."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject or x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return sign_csr(builder, key)


def der_tlv(tag: int, body: bytes) -> bytes:
    """One DER element (definite length)."""
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + body


def resign_csr(der: bytes, new_tbs: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """``der`` with its CertificationRequestInfo replaced by ``new_tbs`` and a fresh, valid
    ECDSA-SHA256 signature over it: a well-signed CSR whose body the builder would refuse."""
    csr = x509.load_der_x509_csr(der)
    header = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    content = der[header:]
    tbs = csr.tbs_certrequest_bytes
    assert content.startswith(tbs)
    signature_field = der_tlv(0x03, b"\x00" + csr.signature)
    assert content.endswith(signature_field)
    algorithm_id = content[len(tbs) : len(content) - len(signature_field)]
    signature = key.sign(new_tbs, ec.ECDSA(hashes.SHA256()))
    return der_tlv(0x30, new_tbs + algorithm_id + der_tlv(0x03, b"\x00" + signature))


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
