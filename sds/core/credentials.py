"""What the agent holds for its workload: the X.509-SVID with its private key, and the trust
bundles. Value objects that check themselves when built, so nothing half-valid is ever served."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from spiffe import SpiffeId, TrustDomain

from ca.core.authority import issued_by
from ca.core.errors import InvalidRequest

WorkloadKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_SHA256 = hashes.SHA256()


@dataclass(frozen=True, slots=True)
class Svid:
    """An X.509-SVID: the leaf, its intermediates (no root) and the key it certifies."""

    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]
    key: WorkloadKey = field(repr=False)

    def __post_init__(self) -> None:
        if not self.chain:
            raise InvalidRequest("empty_chain", "the CA returned no certificate")
        leaf_key = self.chain[0].public_key()
        if leaf_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise InvalidRequest("key_mismatch", "the certificate does not certify our key")
        uris = uri_sans(self.chain[0])
        if uris != [str(self.spiffe_id)]:
            raise InvalidRequest(
                "wrong_spiffe_id",
                f"the certificate names {uris or 'no URI SAN'}, expected {self.spiffe_id}",
            )

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def serial_hex(self) -> str:
        return format(self.leaf.serial_number, "x")

    @property
    def not_before(self) -> datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def chain_der(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.chain)

    def key_pkcs8_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def key_pkcs8_der(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True, slots=True)
class Bundles:
    """The trusted roots of each trust domain, the CA's bundle sequence, and what the CA says
    about its authorities: which one signs now (empty until the CA has named it), over how long
    a window the fleet should move to it, and which ones are revoked (key ids, see
    :func:`ca.core.keys.key_id`)."""

    roots: Mapping[TrustDomain, tuple[x509.Certificate, ...]]
    sequence: int = 0
    signing_key_id: str = ""
    reissue_window: timedelta = timedelta(0)
    revoked_key_ids: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for trust_domain, certs in self.roots.items():
            if not certs:
                raise InvalidRequest(
                    "empty_bundle", f"the bundle of {trust_domain.name} has no certificate"
                )
        if self.reissue_window < timedelta(0):
            raise InvalidRequest(
                "negative_reissue_window", f"the re-issue window {self.reissue_window} is negative"
            )

    def all_roots(self) -> list[x509.Certificate]:
        """Every trusted root, of every trust domain, without duplicates."""
        seen: set[bytes] = set()
        out: list[x509.Certificate] = []
        for certs in self.roots.values():
            for cert in certs:
                fingerprint = cert.fingerprint(_SHA256)
                if fingerprint not in seen:
                    seen.add(fingerprint)
                    out.append(cert)
        return out

    def pem(self, trust_domain: TrustDomain | None = None) -> bytes:
        certs = self.all_roots() if trust_domain is None else list(self.roots[trust_domain])
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def der(self, trust_domain: TrustDomain) -> bytes:
        return b"".join(
            c.public_bytes(serialization.Encoding.DER) for c in self.roots[trust_domain]
        )


@dataclass(frozen=True, slots=True)
class Credentials:
    """Everything the agent serves at one moment; ``generation`` grows with every change."""

    trust_domain: TrustDomain
    bundles: Bundles
    svid: Svid | None = None
    generation: int = 0


def svid_from_reply(
    pems: Sequence[str | bytes],
    spiffe_id: SpiffeId,
    key: WorkloadKey,
    roots: Sequence[x509.Certificate],
) -> Svid:
    """The CA's answer to our CSR as an :class:`Svid` (the chain without its root), refused
    unless it chains to one of ``roots``, certifies ``key`` and names ``spiffe_id``."""
    chain = split_root(parse_pem_chain(pems), roots)
    if not chains_to(chain, roots):
        raise InvalidRequest(
            "untrusted_chain", "the CA returned a certificate that does not chain to the bundle"
        )
    return Svid(spiffe_id, chain, key)


def uri_sans(cert: x509.Certificate) -> list[str]:
    """The URI SANs of ``cert`` (none when it has no SAN extension)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def parse_pem_chain(pems: Sequence[str | bytes]) -> tuple[x509.Certificate, ...]:
    """Certificates from PEM texts (each may hold several), in order."""
    out: list[x509.Certificate] = []
    for pem in pems:
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            out.extend(x509.load_pem_x509_certificates(data))
        except ValueError as exc:
            raise InvalidRequest("bad_certificate", f"unparseable PEM certificate: {exc}") from exc
    return tuple(out)


def split_root(
    chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    """``chain`` without a trailing root certificate: Envoy and the Workload API want the leaf
    and its intermediates; roots come from the bundle."""
    fingerprints = {r.fingerprint(_SHA256) for r in roots}
    out = list(chain)
    while len(out) > 1 and (
        out[-1].fingerprint(_SHA256) in fingerprints or out[-1].issuer == out[-1].subject
    ):
        out.pop()
    return tuple(out)


def chains_to(chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]) -> bool:
    """Whether each certificate of ``chain`` is signed by the next and the last by one of
    ``roots`` (signatures and names only; lifetimes are the caller's business)."""
    return anchor_of(chain, roots) is not None


def anchor_of(
    chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    """The root of ``roots`` that ``chain`` leads to (as :func:`chains_to` checks it), or
    ``None``: deciding whether a chain is still trusted needs to know which root it rests on."""
    if not chain:
        return None
    for child, parent in itertools.pairwise(chain):
        if not issued_by(child, parent):
            return None
    return next((root for root in roots if issued_by(chain[-1], root)), None)
