"""Key types meshca creates and accepts, and the fingerprints it names keys by."""

from __future__ import annotations

import enum
import hashlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
    CertificatePublicKeyTypes,
)


class KeyType(enum.StrEnum):
    """Key algorithms for CA and workload keys."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    ED25519 = "ed25519"


CA_KEY_TYPES = (KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048, KeyType.RSA_3072)
MIN_RSA_BITS = 2048


def generate_private_key(key_type: KeyType) -> CertificateIssuerPrivateKeyTypes:
    """A fresh private key of ``key_type``."""
    match key_type:
        case KeyType.EC_P256:
            return ec.generate_private_key(ec.SECP256R1())
        case KeyType.EC_P384:
            return ec.generate_private_key(ec.SECP384R1())
        case KeyType.RSA_2048:
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        case KeyType.RSA_3072:
            return rsa.generate_private_key(public_exponent=65537, key_size=3072)
        case KeyType.ED25519:
            return ed25519.Ed25519PrivateKey.generate()


def key_type_of(public_key: CertificatePublicKeyTypes) -> KeyType | None:
    """The :class:`KeyType` of ``public_key``, or ``None`` when meshca does not name it."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"secp256r1": KeyType.EC_P256, "secp384r1": KeyType.EC_P384}.get(
            public_key.curve.name
        )
    if isinstance(public_key, rsa.RSAPublicKey):
        return {2048: KeyType.RSA_2048, 3072: KeyType.RSA_3072}.get(public_key.key_size)
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return KeyType.ED25519
    return None


def describe_key(public_key: CertificatePublicKeyTypes) -> str:
    """A short human description, e.g. ``EC secp256r1`` or ``RSA 4096``."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC {public_key.curve.name}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}"
    return type(public_key).__name__.removeprefix("_").replace("PublicKey", "")


def signature_hash_for(
    key: CertificateIssuerPrivateKeyTypes,
) -> hashes.SHA256 | hashes.SHA384 | None:
    """The hash a CA key signs with: SHA-384 for P-384, none for Ed25519, SHA-256 otherwise."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def spki_der(public_key: CertificatePublicKeyTypes) -> bytes:
    """The DER SubjectPublicKeyInfo of ``public_key``."""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_sha256(public_key: CertificatePublicKeyTypes) -> str:
    """Hex SHA-256 of the SubjectPublicKeyInfo (what the ledger records per certificate)."""
    return hashlib.sha256(spki_der(public_key)).hexdigest()


def key_id(public_key: CertificateIssuerPublicKeyTypes) -> str:
    """The id a CA key is known by: the first 128 bits of its SPKI SHA-256, in hex."""
    return public_key_sha256(public_key)[:32]


def private_key_to_der(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    """Unencrypted PKCS#8 DER (only ever handed to the key-encryption layer)."""
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_der(der: bytes) -> CertificateIssuerPrivateKeyTypes:
    """Load a PKCS#8 DER CA private key."""
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise TypeError(f"unsupported CA key type {type(key).__name__}")
    return key
