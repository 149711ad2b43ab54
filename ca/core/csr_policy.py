"""What a certificate signing request may ask for, and how long a certificate may live.

A CSR passes when its signature verifies, its key is strong enough, it does not ask to be a CA,
and it names either no SAN (the CA fills in the caller's SPIFFE ID) or exactly one URI SAN that
is the caller's own SPIFFE ID. Everything else is refused with a precise reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtensionOID

from ca.core.errors import InvalidRequest, PermissionDenied
from ca.core.identity import WorkloadIdentity
from ca.core.keys import MIN_RSA_BITS, describe_key

MAX_CSR_BYTES = 64 * 1024
DEFAULT_TTL = timedelta(hours=24)
MAX_TTL = timedelta(days=90)
MAX_RSA_BITS = 8192
_ACCEPTED_CURVES = ("secp256r1", "secp384r1")

_SAN_KIND: dict[type[x509.GeneralName], str] = {
    x509.DNSName: "DNS name",
    x509.IPAddress: "IP address",
    x509.RFC822Name: "email address",
    x509.DirectoryName: "directory name",
    x509.RegisteredID: "registered ID",
    x509.OtherName: "other name",
}


@dataclass(frozen=True, slots=True)
class ValidatedCsr:
    """A CSR that passed policy: the key to certify and the identity to put in it."""

    public_key: CertificatePublicKeyTypes
    identity: WorkloadIdentity


@dataclass(frozen=True, slots=True)
class TtlPolicy:
    """Default and maximum certificate lifetimes; a request over the maximum is refused."""

    default: timedelta = DEFAULT_TTL
    maximum: timedelta = MAX_TTL

    def resolve(self, requested: timedelta | None) -> timedelta:
        """The lifetime to issue for ``requested`` (``None`` or zero means the default)."""
        if requested is None or requested == timedelta(0):
            return self.default
        if requested < timedelta(0):
            raise InvalidRequest("ttl_invalid", f"requested TTL {requested} is negative")
        if requested > self.maximum:
            raise InvalidRequest(
                "ttl_too_long",
                f"requested TTL of {int(requested.total_seconds())}s exceeds the maximum of "
                f"{int(self.maximum.total_seconds())}s",
            )
        return requested


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM (or DER) CSR of at most 64 KiB."""
    if len(data) > MAX_CSR_BYTES:
        raise InvalidRequest(
            "csr_too_large", f"CSR is {len(data)} bytes; the limit is {MAX_CSR_BYTES} bytes"
        )
    pem = _PEM_LABEL.search(data)
    try:
        if pem is not None:
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError:
        raise InvalidRequest("csr_malformed", _not_a_csr(data, pem)) from None


#: The first PEM block's label (``-----BEGIN CERTIFICATE REQUEST-----``).
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,64})-----")
_CSR_LABELS = (b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST")


def _not_a_csr(data: bytes, pem: re.Match[bytes] | None) -> str:
    """Why ``data`` is not a CSR, in the user's terms (the parser's ASN.1 details help no
    one)."""
    if not data.strip():
        return "CSR is empty"
    if pem is None:
        return "CSR is not a PEM or DER certificate signing request"
    label = pem.group(1)
    if label not in _CSR_LABELS:
        return f"CSR is a PEM {label.decode()}, not a CERTIFICATE REQUEST"
    return "CSR's PEM CERTIFICATE REQUEST block does not hold a valid certificate signing request"


def check_csr(data: bytes, caller: WorkloadIdentity) -> ValidatedCsr:
    """Apply the CSR policy for ``caller``; raise a :class:`MeshcaError` subclass on refusal."""
    csr = load_csr(data)
    try:
        signature_ok = csr.is_signature_valid
        public_key = csr.public_key()
        extensions = csr.extensions
    except (ValueError, x509.UnsupportedGeneralNameType, x509.DuplicateExtension) as exc:
        raise InvalidRequest("csr_malformed", f"CSR could not be parsed: {exc}") from exc
    if not signature_ok:
        raise InvalidRequest("csr_bad_signature", "CSR signature does not verify")
    _check_key(public_key)
    _check_not_ca(extensions)
    _check_san(extensions, caller)
    return ValidatedCsr(public_key, caller)


def _check_key(public_key: CertificatePublicKeyTypes) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in _ACCEPTED_CURVES:
            raise InvalidRequest(
                "csr_unsupported_key",
                f"CSR key {describe_key(public_key)} is not accepted; use EC P-256 or P-384",
            )
        return
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise InvalidRequest(
                "csr_weak_key",
                f"CSR key is RSA {public_key.key_size}; at least RSA {MIN_RSA_BITS} is required",
            )
        if public_key.key_size > MAX_RSA_BITS:
            raise InvalidRequest(
                "csr_unsupported_key",
                f"CSR key is RSA {public_key.key_size}; at most RSA {MAX_RSA_BITS} is accepted",
            )
        return
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return
    raise InvalidRequest(
        "csr_unsupported_key",
        f"CSR key {describe_key(public_key)} is not accepted; "
        "use EC P-256, EC P-384, RSA >= 2048 or Ed25519",
    )


def _check_not_ca(extensions: x509.Extensions) -> None:
    try:
        constraints = extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        return
    if isinstance(constraints, x509.BasicConstraints) and constraints.ca:
        raise InvalidRequest("csr_requests_ca", "CSR asks for a CA certificate (CA=true)")


def _check_san(extensions: x509.Extensions, caller: WorkloadIdentity) -> None:
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    for name in san:
        kind = _SAN_KIND.get(type(name))
        if kind is not None:
            raise InvalidRequest(
                "csr_forbidden_san",
                f"CSR carries a {kind} SAN ({name.value!r}); an X.509-SVID carries only its "
                "SPIFFE ID",
            )
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) > 1:
        raise InvalidRequest(
            "csr_multiple_uris", f"CSR carries {len(uris)} URI SANs; at most one is allowed"
        )
    if uris and uris[0] != str(caller.spiffe_id):
        raise PermissionDenied(
            "csr_identity_mismatch",
            f"CSR asks for {uris[0]!r} but the caller is {caller.spiffe_id}",
        )
