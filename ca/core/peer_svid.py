"""Renewal by mTLS: is a client certificate an unexpired X.509-SVID that this CA issued?

The TLS layer has already verified the chain against the current trust bundle; this repeats the
decisive checks on the leaf itself (so a bug in TLS configuration cannot widen access) and says
whose identity it proves.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from spiffe import TrustDomain

from ca.core.authority import issued_by
from ca.core.errors import InvalidRequest, PermissionDenied, Unauthenticated
from ca.core.identity import WorkloadIdentity, parse_spiffe_id


def identity_from_peer_certificate(
    leaf_pem: bytes,
    issuers: Sequence[x509.Certificate],
    trust_domain: TrustDomain,
    now: datetime,
) -> WorkloadIdentity:
    """The identity ``leaf_pem`` proves, or :class:`Unauthenticated`.

    ``issuers`` are the CA certificates (intermediates and roots) trusted now; the leaf must be
    signed by one of them, be valid at ``now``, not be a CA, and carry exactly one URI SAN: a
    SPIFFE ID in ``trust_domain``.
    """
    try:
        leaf = x509.load_pem_x509_certificate(leaf_pem)
    except ValueError as exc:
        raise Unauthenticated("peer_cert_malformed", "client certificate cannot be parsed") from exc
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise Unauthenticated(
            "peer_cert_expired",
            f"client certificate is valid from {leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} "
            f"to {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
        )
    if not any(issued_by(leaf, issuer) for issuer in issuers):
        raise Unauthenticated(
            "peer_cert_untrusted", "client certificate was not issued by this CA's trusted keys"
        )
    try:
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            raise Unauthenticated("peer_cert_not_svid", "client certificate is a CA certificate")
        uris = leaf.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound as exc:
        raise Unauthenticated("peer_cert_not_svid", "client certificate is not an SVID") from exc
    if len(uris) != 1:
        raise Unauthenticated(
            "peer_cert_not_svid", f"client certificate has {len(uris)} URI SANs, not one"
        )
    try:
        identity = WorkloadIdentity.from_spiffe_id(parse_spiffe_id(uris[0]))
        identity.require_trust_domain(trust_domain)
    except (InvalidRequest, PermissionDenied) as exc:
        raise Unauthenticated("peer_cert_not_svid", exc.message) from exc
    return identity
