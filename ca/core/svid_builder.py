"""Building X.509-SVIDs exactly as the SPIFFE X509-SVID specification asks.

Leaf: empty subject, one critical URI SAN (the SPIFFE ID), KeyUsage critical digitalSignature
(+ keyEncipherment for RSA and EC keys), EKU serverAuth + clientAuth, BasicConstraints critical
CA=false, SubjectKeyIdentifier and AuthorityKeyIdentifier, a 128-bit random serial.

A :class:`SvidBuilder` is made once per signing authority: what every leaf of that signer shares
(issuer name, AKI, the constant extensions, the signature hash) is prepared once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID
from spiffe import SpiffeId

from ca.core.authority import SigningAuthority
from ca.core.keys import signature_hash_for

_EMPTY_NAME = x509.Name([])
_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
_NOT_CA = x509.BasicConstraints(ca=False, path_length=None)


def leaf_key_usage(public_key: CertificatePublicKeyTypes) -> x509.KeyUsage:
    """digitalSignature always; keyEncipherment too, except for Ed25519 (RFC 8410 forbids it)."""
    return _KEY_USAGE[not isinstance(public_key, ed25519.Ed25519PublicKey)]


def _key_usage(key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


_KEY_USAGE = {True: _key_usage(True), False: _key_usage(False)}


class SvidBuilder:
    """Signs X.509-SVIDs with one signing authority."""

    def __init__(self, signer: SigningAuthority) -> None:
        self._private_key = signer.private_key
        self._hash = signature_hash_for(signer.private_key)
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            signer.subject_key_identifier
        )
        self._base = (
            x509.CertificateBuilder()
            .subject_name(_EMPTY_NAME)
            .issuer_name(signer.certificate.subject)
            .add_extension(_NOT_CA, critical=True)
            .add_extension(_EKU, critical=False)
            .add_extension(aki, critical=False)
        )

    def build(
        self,
        public_key: CertificatePublicKeyTypes,
        spiffe_id: SpiffeId,
        *,
        serial: int,
        not_before: datetime,
        not_after: datetime,
        extra_names: Sequence[x509.GeneralName] = (),
    ) -> x509.Certificate:
        """Sign an X.509-SVID for ``spiffe_id`` over ``public_key``.

        ``extra_names`` (DNS names, IP addresses) follow the one URI SAN; the SPIFFE spec allows
        them, and the CA's own serving certificate needs them. Workload SVIDs carry none.
        """
        builder = (
            self._base.public_key(public_key)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(leaf_key_usage(public_key), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(str(spiffe_id)), *extra_names]
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )
        return builder.sign(self._private_key, self._hash)
