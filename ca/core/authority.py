"""CA certificates: building a root and an intermediate, and checking plugged-in CA material.

A :class:`SigningAuthority` is the narrow thing issuance needs: a signing certificate, its key,
and the chain above it up to a root. Where the key comes from (a database, a KMS) is not its
concern.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.x509.oid import NameOID
from spiffe import TrustDomain

from ca.core.errors import ConfigurationError
from ca.core.keys import key_id, signature_hash_for, spki_der
from ca.core.serials import random_serial


def _issuer_public_key(cert: x509.Certificate) -> CertificateIssuerPublicKeyTypes:
    # Every key type a CA can hold is an issuer key type; X25519/X448 certificates are not CAs.
    return cert.public_key()  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class SigningAuthority:
    """A CA certificate with its private key and the chain above it (issuer first, root last;
    empty for a self-signed root)."""

    certificate: x509.Certificate
    private_key: CertificateIssuerPrivateKeyTypes = field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def key_id(self) -> str:
        return key_id(_issuer_public_key(self.certificate))

    @property
    def chain_for_leaf(self) -> tuple[x509.Certificate, ...]:
        """What follows a leaf this authority signs: itself, then the chain up to the root."""
        return (self.certificate, *self.chain)

    def verify_chain(self) -> None:
        """Raise :class:`ConfigurationError` unless every link up to a self-signed root verifies."""
        path = self.chain_for_leaf
        for child, parent in itertools.pairwise(path):
            _verify_link(child, parent)
        _verify_link(path[-1], path[-1])
        for depth, cert in enumerate(path):
            # RFC 5280 4.2.1.9: pathLenConstraint bounds the non-self-issued CA certificates
            # below ``cert`` (the leaf this authority signs is not counted).
            limit = _path_length(cert)
            below = sum(1 for c in path[:depth] if c.subject != c.issuer)
            if limit is not None and below > limit:
                raise ConfigurationError(
                    "ca_chain_invalid",
                    f"certificate {cert.subject.rfc4514_string()!r} allows {limit} CA "
                    f"certificate(s) below it, but the chain has {below}",
                )

    @property
    def root(self) -> x509.Certificate:
        return self.chain[-1] if self.chain else self.certificate

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def subject_key_identifier(self) -> x509.SubjectKeyIdentifier:
        try:
            return self.certificate.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier
            ).value
        except x509.ExtensionNotFound:
            return x509.SubjectKeyIdentifier.from_public_key(_issuer_public_key(self.certificate))


def _ca_name(
    trust_domain: TrustDomain, role: str, public_key: CertificateIssuerPublicKeyTypes
) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain.name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshca {role} {key_id(public_key)[:8]}"),
        ]
    )


def _ca_builder(
    trust_domain: TrustDomain,
    subject: x509.Name,
    issuer: x509.Name,
    public_key: CertificateIssuerPublicKeyTypes,
    not_before: datetime,
    not_after: datetime,
    path_length: int | None,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(trust_domain.as_spiffe_id())]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def build_root(
    trust_domain: TrustDomain,
    private_key: CertificateIssuerPrivateKeyTypes,
    *,
    now: datetime,
    ttl: timedelta,
) -> SigningAuthority:
    """A self-signed root whose subject organisation and URI SAN are the trust domain."""
    public_key = private_key.public_key()
    name = _ca_name(trust_domain, "root", public_key)
    builder = _ca_builder(trust_domain, name, name, public_key, now, now + ttl, None)
    cert = builder.sign(private_key, signature_hash_for(private_key))
    return SigningAuthority(cert, private_key)


def build_intermediate(
    trust_domain: TrustDomain,
    private_key: CertificateIssuerPrivateKeyTypes,
    parent: SigningAuthority,
    *,
    now: datetime,
    ttl: timedelta,
) -> SigningAuthority:
    """An intermediate signed by ``parent``; it never outlives its parent."""
    public_key = private_key.public_key()
    not_after = min(now + ttl, parent.not_after)
    builder = _ca_builder(
        trust_domain,
        _ca_name(trust_domain, "intermediate", public_key),
        parent.certificate.subject,
        public_key,
        max(now, parent.not_before),
        not_after,
        0,
    ).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            parent.subject_key_identifier
        ),
        critical=False,
    )
    cert = builder.sign(parent.private_key, signature_hash_for(parent.private_key))
    return SigningAuthority(cert, private_key, (parent.certificate, *parent.chain))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _path_length(cert: x509.Certificate) -> int | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except x509.ExtensionNotFound:
        return None


def _can_sign_certs(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.key_cert_sign


def assemble_authority(
    certificate: x509.Certificate,
    private_key: CertificateIssuerPrivateKeyTypes,
    chain: list[x509.Certificate],
    roots: list[x509.Certificate],
    *,
    now: datetime,
) -> SigningAuthority:
    """Check plugged-in CA material (Istio's ``cacerts``) and return it as an authority.

    ``chain`` is the certificates above ``certificate`` (issuer first, may include the root);
    ``roots`` the trusted roots. The key must match the certificate, every certificate must be a
    CA that may sign certificates and be valid now, and the chain must verify up to a root.
    """
    if spki_der(private_key.public_key()) != spki_der(certificate.public_key()):
        raise ConfigurationError(
            "ca_key_mismatch", "the CA private key does not match the CA certificate"
        )
    if not roots:
        raise ConfigurationError("ca_chain_invalid", "no root certificate was given")
    path = [certificate, *chain]
    for cert in path:
        _check_usable_ca(cert, now)
    top = path[-1]
    root = next((r for r in roots if r == top), None)
    if root is None:
        root = next((r for r in roots if issued_by(top, r)), None)
        if root is None:
            raise ConfigurationError(
                "ca_chain_invalid",
                f"the chain of {certificate.subject.rfc4514_string()!r} does not verify up to "
                "any of the given root certificates",
            )
        _check_usable_ca(root, now)
        path.append(root)
    authority = SigningAuthority(certificate, private_key, tuple(path[1:]))
    authority.verify_chain()
    return authority


def _check_usable_ca(cert: x509.Certificate, now: datetime) -> None:
    if not (_is_ca(cert) and _can_sign_certs(cert)):
        raise ConfigurationError(
            "ca_not_a_ca",
            f"certificate {cert.subject.rfc4514_string()!r} is not a CA that may sign "
            "certificates (BasicConstraints CA=true, KeyUsage keyCertSign)",
        )
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ConfigurationError(
            "ca_expired",
            f"certificate {cert.subject.rfc4514_string()!r} is not valid now "
            f"({cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
            f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})",
        )


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """Whether ``parent`` directly issued ``child``: names match and its key signed it."""
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _verify_link(child: x509.Certificate, parent: x509.Certificate) -> None:
    if not issued_by(child, parent):
        raise ConfigurationError(
            "ca_chain_invalid",
            f"certificate {child.subject.rfc4514_string()!r} is not signed by "
            f"{parent.subject.rfc4514_string()!r}",
        )
