"""Plugging in an existing CA from a directory in Istio's ``cacerts`` layout.

``ca-cert.pem`` + ``ca-key.pem`` (the signing CA), ``cert-chain.pem`` (the chain from it up to
the root) and ``root-cert.pem`` (the root); or the Kubernetes TLS secret names ``tls.crt``
(signing certificate, optionally followed by its chain), ``tls.key`` and ``ca.crt`` (root).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ca.core.authority import SigningAuthority, assemble_authority
from ca.core.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class _Layout:
    cert: str
    key: str
    chain: str | None
    root: str


_ISTIO = _Layout("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem")
_TLS = _Layout("tls.crt", "tls.key", None, "ca.crt")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            "cacerts_unreadable", f"cannot read {path}: {exc.strerror}"
        ) from None


def _certs(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(_read(path))
    except ValueError as exc:
        raise ConfigurationError(
            "cacerts_invalid", f"{path} holds no valid PEM certificate: {exc}"
        ) from None


def load_cacerts(directory: Path, *, now: datetime) -> SigningAuthority:
    """Load and check the CA in ``directory``; refuse a key that does not match its
    certificate or a chain that does not verify."""
    layout = next((lay for lay in (_ISTIO, _TLS) if (directory / lay.cert).is_file()), None)
    if layout is None:
        raise ConfigurationError(
            "cacerts_missing",
            f"{directory} has neither ca-cert.pem/ca-key.pem/root-cert.pem nor "
            "tls.crt/tls.key/ca.crt",
        )
    certs = _certs(directory / layout.cert)
    certificate, chain = certs[0], certs[1:]
    if layout.chain and (directory / layout.chain).is_file():
        chain = [c for c in _certs(directory / layout.chain) if c != certificate]
    roots = _certs(directory / layout.root)
    try:
        key = serialization.load_pem_private_key(_read(directory / layout.key), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            "cacerts_invalid", f"{directory / layout.key} is not an unencrypted PEM private key"
        ) from exc
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise ConfigurationError("cacerts_invalid", f"unsupported CA key type {type(key).__name__}")
    return assemble_authority(certificate, key, chain, roots, now=now)
