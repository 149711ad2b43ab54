"""An independent check of every X.509-SVID before it leaves the CA.

This module shares no code with :mod:`ca.core.svid_builder` on purpose: it re-reads the signed
certificate and checks it against the SPIFFE X509-SVID rules and the issuing certificate. A
failure means a bug in meshca, so it raises :class:`InternalError` and nothing is returned.

A :class:`SvidValidator` is made once per issuing certificate so that what is fixed for that
issuer (its public key, key identifier, name and validity) is parsed once, not per leaf.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
from spiffe import SpiffeId

from ca.core.errors import InternalError

_T = TypeVar("_T")
_REQUIRED_EKU = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
_MAX_SERIAL_BITS = 159  # 20 octets, positive


def _fail(detail: str) -> InternalError:
    return InternalError(
        "svid_validation_failed", f"issued certificate failed validation: {detail}"
    )


class SvidValidator:
    """Validates leaves issued by one issuing certificate."""

    def __init__(self, issuer: x509.Certificate) -> None:
        self._issuer_name = issuer.subject
        self._issuer_key = issuer.public_key()
        self._not_before = issuer.not_valid_before_utc
        self._not_after = issuer.not_valid_after_utc
        try:
            self._issuer_key_id = issuer.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier
            ).value.digest
        except x509.ExtensionNotFound:
            self._issuer_key_id = x509.SubjectKeyIdentifier.from_public_key(self._issuer_key).digest

    def validate(
        self,
        leaf: x509.Certificate,
        spiffe_id: SpiffeId,
        *,
        now: datetime,
        public_key: CertificatePublicKeyTypes | None = None,
        extra_names: Sequence[x509.GeneralName] = (),
    ) -> None:
        """Raise :class:`InternalError` unless ``leaf`` is a conforming SVID for
        ``spiffe_id`` (and exactly ``extra_names`` besides, in that order) over ``public_key``
        (when given), signed by this issuer and valid at
        ``now``."""
        if leaf.version is not x509.Version.v3:
            raise _fail("not an X.509 v3 certificate")
        if len(leaf.subject) != 0:
            raise _fail("subject is not empty")
        if leaf.serial_number <= 0 or leaf.serial_number.bit_length() > _MAX_SERIAL_BITS:
            raise _fail("serial number must be positive and at most 20 octets")
        seen = {ext.oid: ext for ext in leaf.extensions}
        _check_san(seen.get(ExtensionOID.SUBJECT_ALTERNATIVE_NAME), spiffe_id, extra_names)
        _check_constraints(seen)
        self._check_key_ids(leaf, seen, public_key)
        self._check_validity(leaf, now)
        self._check_signature(leaf)

    def _check_key_ids(
        self,
        leaf: x509.Certificate,
        seen: dict[x509.ObjectIdentifier, x509.Extension[x509.ExtensionType]],
        public_key: CertificatePublicKeyTypes | None,
    ) -> None:
        leaf_key = leaf.public_key()
        if public_key is not None and leaf_key != public_key:
            raise _fail("certificate does not certify the requested public key")
        ski = _value(seen, ExtensionOID.SUBJECT_KEY_IDENTIFIER, x509.SubjectKeyIdentifier)
        if ski.digest != x509.SubjectKeyIdentifier.from_public_key(leaf_key).digest:
            raise _fail("SubjectKeyIdentifier does not match the certificate's key")
        aki = _value(seen, ExtensionOID.AUTHORITY_KEY_IDENTIFIER, x509.AuthorityKeyIdentifier)
        if aki.key_identifier != self._issuer_key_id:
            raise _fail("AuthorityKeyIdentifier does not match the issuer's key")

    def _check_validity(self, leaf: x509.Certificate, now: datetime) -> None:
        not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
        if not not_before <= now < not_after:
            raise _fail("certificate is not valid now")
        if not_after > self._not_after:
            raise _fail("certificate outlives its issuer")
        if not_before < self._not_before:
            raise _fail("certificate predates its issuer")

    def _check_signature(self, leaf: x509.Certificate) -> None:
        if leaf.issuer != self._issuer_name:
            raise _fail("issuer name is not the issuing certificate's subject")
        try:
            self._verify(leaf)
        except InvalidSignature:
            raise _fail("signature does not verify against the issuer") from None

    def _verify(self, leaf: x509.Certificate) -> None:
        key = self._issuer_key
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(leaf.signature, leaf.tbs_certificate_bytes)
            return
        algorithm = leaf.signature_hash_algorithm
        if algorithm is None:
            raise _fail("signature has no hash algorithm")
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(leaf.signature, leaf.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        else:
            raise _fail(f"unsupported issuer key {type(key).__name__}")


def validate_svid(
    leaf: x509.Certificate,
    issuer: x509.Certificate,
    spiffe_id: SpiffeId,
    *,
    now: datetime,
) -> None:
    """One-off form of :meth:`SvidValidator.validate`."""
    SvidValidator(issuer).validate(leaf, spiffe_id, now=now)


def _value(
    seen: dict[x509.ObjectIdentifier, x509.Extension[x509.ExtensionType]],
    oid: x509.ObjectIdentifier,
    kind: type[_T],
) -> _T:
    ext = seen.get(oid)
    if ext is None:
        raise _fail(f"missing extension {oid._name}")
    value = ext.value
    if not isinstance(value, kind):
        raise _fail(f"extension {oid._name} is malformed")
    return value


def _check_san(
    ext: x509.Extension[x509.ExtensionType] | None,
    spiffe_id: SpiffeId,
    extra_names: Sequence[x509.GeneralName],
) -> None:
    if ext is None:
        raise _fail("missing SubjectAlternativeName")
    if not ext.critical:
        raise _fail("SAN must be critical when the subject is empty")
    assert isinstance(ext.value, x509.SubjectAlternativeName)
    names = list(ext.value)
    if names[1:] != list(extra_names) or any(
        isinstance(n, x509.UniformResourceIdentifier) for n in extra_names
    ):
        raise _fail("SAN must hold exactly one URI and only the expected other names")
    if not names or not isinstance(names[0], x509.UniformResourceIdentifier):
        raise _fail("SAN must hold exactly one URI and nothing else")
    if names[0].value != str(spiffe_id):
        raise _fail(f"URI SAN {names[0].value!r} is not {spiffe_id}")
    if not spiffe_id.path:
        raise _fail("leaf SPIFFE ID has no path")


def _check_constraints(
    seen: dict[x509.ObjectIdentifier, x509.Extension[x509.ExtensionType]],
) -> None:
    bc = seen.get(ExtensionOID.BASIC_CONSTRAINTS)
    if bc is None or not bc.critical or _value(seen, bc.oid, x509.BasicConstraints).ca:
        raise _fail("BasicConstraints must be present, critical, with CA=false")
    ku_ext = seen.get(ExtensionOID.KEY_USAGE)
    ku = _value(seen, ExtensionOID.KEY_USAGE, x509.KeyUsage)
    if ku_ext is None or not ku_ext.critical or not ku.digital_signature:
        raise _fail("KeyUsage must be critical and include digitalSignature")
    if ku.key_cert_sign or ku.crl_sign:
        raise _fail("KeyUsage must not include keyCertSign or cRLSign")
    eku = _value(seen, ExtensionOID.EXTENDED_KEY_USAGE, x509.ExtendedKeyUsage)
    if set(eku) != _REQUIRED_EKU:
        raise _fail("ExtendedKeyUsage must be serverAuth and clientAuth")
