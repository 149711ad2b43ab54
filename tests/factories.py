"""Builders tests share: CSRs of every shape, and in-memory CAs."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from spiffe import TrustDomain

from ca.core.authority import SigningAuthority, build_intermediate, build_root
from ca.core.keys import KeyType, generate_private_key

TRUST_DOMAIN = TrustDomain("cluster.local")
WEB_ID = "spiffe://cluster.local/ns/default/sa/web"


def make_csr(
    key: CertificateIssuerPrivateKeyTypes | None = None,
    *,
    uris: Sequence[str] = (),
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    emails: Sequence[str] = (),
    ca: bool = False,
) -> bytes:
    """A PEM CSR signed by ``key`` (a fresh P-256 key by default) with the given SANs."""
    key = key or generate_private_key(KeyType.EC_P256)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    names += [x509.RFC822Name(e) for e in emails]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = builder.sign(key, algorithm)
    return csr.public_bytes(serialization.Encoding.PEM)


def make_ca(
    key_type: KeyType = KeyType.EC_P256,
    *,
    trust_domain: TrustDomain = TRUST_DOMAIN,
    now: datetime | None = None,
    root_ttl: timedelta = timedelta(days=3650),
    intermediate_ttl: timedelta = timedelta(days=365),
) -> tuple[SigningAuthority, SigningAuthority]:
    """A root and an intermediate signed by it, both of ``key_type``."""
    now = now or datetime.now(UTC)
    root = build_root(trust_domain, generate_private_key(key_type), now=now, ttl=root_ttl)
    intermediate = build_intermediate(
        trust_domain, generate_private_key(key_type), root, now=now, ttl=intermediate_ttl
    )
    return root, intermediate
