"""An independent check of every X.509-SVID before it leaves the CA.

This module shares no code with :mod:`ca.core.svid_builder` on purpose: it re-reads the signed
certificate and checks it against the SPIFFE X509-SVID rules and the issuing certificate. A
failure means a bug in meshca, so it raises :class:`InternalError` and nothing is returned.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
from spiffe import SpiffeId

from ca.core.errors import InternalError


def _fail(detail: str) -> InternalError:
    return InternalError(
        "svid_validation_failed", f"issued certificate failed validation: {detail}"
    )


def _extension(
    cert: x509.Certificate, oid: x509.ObjectIdentifier
) -> x509.Extension[x509.ExtensionType]:
    try:
        return cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        raise _fail(f"missing extension {oid._name}") from None


def validate_svid(
    leaf: x509.Certificate,
    issuer: x509.Certificate,
    spiffe_id: SpiffeId,
    *,
    now: datetime,
) -> None:
    """Raise :class:`InternalError` unless ``leaf`` is a conforming SVID for ``spiffe_id``
    signed by ``issuer`` and valid at ``now``."""
    _check_identity(leaf, spiffe_id)
    _check_constraints(leaf)
    _check_key_ids(leaf, issuer)
    _check_validity(leaf, issuer, now)
    try:
        leaf.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise _fail(f"signature does not verify against the issuer: {exc}") from exc


def _check_identity(leaf: x509.Certificate, spiffe_id: SpiffeId) -> None:
    if leaf.version is not x509.Version.v3:
        raise _fail("not an X.509 v3 certificate")
    if len(leaf.subject) != 0:
        raise _fail("subject is not empty")
    san_ext = _extension(leaf, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    if not san_ext.critical:
        raise _fail("SAN must be critical when the subject is empty")
    san = san_ext.value
    assert isinstance(san, x509.SubjectAlternativeName)
    names = list(san)
    if len(names) != 1 or not isinstance(names[0], x509.UniformResourceIdentifier):
        raise _fail("SAN must hold exactly one URI and nothing else")
    if names[0].value != str(spiffe_id):
        raise _fail(f"URI SAN {names[0].value!r} is not {spiffe_id}")
    if not SpiffeId(names[0].value).path:
        raise _fail("leaf SPIFFE ID has no path")


def _check_constraints(leaf: x509.Certificate) -> None:
    bc = _extension(leaf, ExtensionOID.BASIC_CONSTRAINTS)
    assert isinstance(bc.value, x509.BasicConstraints)
    if not bc.critical or bc.value.ca:
        raise _fail("BasicConstraints must be critical with CA=false")
    ku = _extension(leaf, ExtensionOID.KEY_USAGE)
    assert isinstance(ku.value, x509.KeyUsage)
    if not ku.critical or not ku.value.digital_signature:
        raise _fail("KeyUsage must be critical and include digitalSignature")
    if ku.value.key_cert_sign or ku.value.crl_sign:
        raise _fail("KeyUsage must not include keyCertSign or cRLSign")
    eku = _extension(leaf, ExtensionOID.EXTENDED_KEY_USAGE).value
    assert isinstance(eku, x509.ExtendedKeyUsage)
    if set(eku) != {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}:
        raise _fail("ExtendedKeyUsage must be serverAuth and clientAuth")
    if leaf.serial_number <= 0 or leaf.serial_number.bit_length() > 159:
        raise _fail("serial number must be positive and at most 20 octets")


def _check_key_ids(leaf: x509.Certificate, issuer: x509.Certificate) -> None:
    ski = _extension(leaf, ExtensionOID.SUBJECT_KEY_IDENTIFIER).value
    assert isinstance(ski, x509.SubjectKeyIdentifier)
    if ski.digest != x509.SubjectKeyIdentifier.from_public_key(leaf.public_key()).digest:
        raise _fail("SubjectKeyIdentifier does not match the certificate's key")
    aki = _extension(leaf, ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    try:
        issuer_key_id = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        expected = issuer_key_id.value.digest
    except x509.ExtensionNotFound:
        expected = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest
    if aki.key_identifier != expected:
        raise _fail("AuthorityKeyIdentifier does not match the issuer's key")


def _check_validity(leaf: x509.Certificate, issuer: x509.Certificate, now: datetime) -> None:
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if not not_before <= now < not_after:
        raise _fail("certificate is not valid now")
    if not_after > issuer.not_valid_after_utc:
        raise _fail("certificate outlives its issuer")
    if not_before < issuer.not_valid_before_utc:
        raise _fail("certificate predates its issuer")
