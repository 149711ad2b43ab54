"""The CA's issuing core: CSR policy, SVID signing and independent validation, with no I/O.

The caller supplies the clock (``now``) and the signing authority; recording the result is the
job of the service layer above, which returns a certificate only after its row is durable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from spiffe import TrustDomain

from ca.core.authority import SigningAuthority
from ca.core.csr_policy import TtlPolicy, check_csr
from ca.core.errors import ConfigurationError, MeshcaError
from ca.core.identity import WorkloadIdentity
from ca.core.keys import public_key_sha256
from ca.core.records import DeniedRecord, IssuedRecord, ttl_seconds
from ca.core.serials import random_serial, serial_hex
from ca.core.svid_builder import SvidBuilder
from ca.core.svid_validator import SvidValidator

DEFAULT_BACKDATE = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class IssuanceRequest:
    """One request for an X.509-SVID by an authenticated ``caller``."""

    csr: bytes
    caller: WorkloadIdentity
    requested_ttl: timedelta | None
    requester: str
    request_id: str


@dataclass(frozen=True, slots=True)
class IssuedSvid:
    """A signed and validated SVID, the chain above it, and its ledger record."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    record: IssuedRecord

    def chain_pem(self) -> list[str]:
        """PEM certificates, leaf first, then intermediates, root last (Istio's ordering)."""
        return [
            c.public_bytes(serialization.Encoding.PEM).decode()
            for c in (self.certificate, *self.chain)
        ]


def deny_record(request: IssuanceRequest, error: MeshcaError, now: datetime) -> DeniedRecord:
    """The ledger row for ``request`` refused with ``error``."""
    return refusal_record(
        error,
        request_id=request.request_id,
        requester=request.requester,
        caller=request.caller,
        requested_ttl=request.requested_ttl,
        now=now,
    )


def refusal_record(
    error: MeshcaError,
    *,
    request_id: str,
    requester: str,
    caller: WorkloadIdentity | None,
    requested_ttl: timedelta | None,
    now: datetime,
) -> DeniedRecord:
    """The ledger row for a refused request; ``caller`` is ``None`` when it was not
    authenticated."""
    return DeniedRecord(
        request_id=request_id,
        reason=error.reason,
        message=error.message,
        error_type=type(error).__name__,
        requester=requester,
        spiffe_id=str(caller.spiffe_id) if caller else None,
        namespace=caller.namespace if caller else None,
        service_account=caller.service_account if caller else None,
        pod_name=caller.pod_name if caller else None,
        pod_uid=caller.pod_uid if caller else None,
        requested_ttl_seconds=ttl_seconds(requested_ttl),
        denied_at=now,
    )


class Issuer:
    """Signs X.509-SVIDs for one trust domain with one signing authority."""

    def __init__(
        self,
        trust_domain: TrustDomain,
        signer: SigningAuthority,
        ttl_policy: TtlPolicy,
        *,
        backdate: timedelta = DEFAULT_BACKDATE,
    ) -> None:
        signer.verify_chain()
        self.trust_domain = trust_domain
        self.signer = signer
        self.ttl_policy = ttl_policy
        self.backdate = backdate
        self._signer_key_id = signer.key_id
        self._builder = SvidBuilder(signer)
        self._validator = SvidValidator(signer.certificate)
        self._not_before = signer.not_before
        self._not_after = signer.not_after
        self._chain = signer.chain_for_leaf

    def issue(self, request: IssuanceRequest, now: datetime) -> IssuedSvid:
        """Check, sign and validate; raise a :class:`MeshcaError` subclass on refusal."""
        request.caller.require_trust_domain(self.trust_domain)
        validated = check_csr(request.csr, request.caller)
        ttl = self.ttl_policy.resolve(request.requested_ttl)
        return self._sign(
            validated.public_key,
            request.caller,
            ttl,
            now,
            requested_ttl=request.requested_ttl,
            requester=request.requester,
            request_id=request.request_id,
        )

    def issue_serving(
        self,
        public_key: CertificatePublicKeyTypes,
        identity: WorkloadIdentity,
        extra_names: Sequence[x509.GeneralName],
        ttl: timedelta,
        now: datetime,
        *,
        requester: str,
        request_id: str,
    ) -> IssuedSvid:
        """An SVID for the CA's own server over a key it generated itself (no CSR), carrying
        the DNS names and IP addresses clients connect to besides its SPIFFE ID."""
        identity.require_trust_domain(self.trust_domain)
        return self._sign(
            public_key,
            identity,
            ttl,
            now,
            requested_ttl=ttl,
            requester=requester,
            request_id=request_id,
            extra_names=extra_names,
        )

    def _sign(
        self,
        public_key: CertificatePublicKeyTypes,
        caller: WorkloadIdentity,
        ttl: timedelta,
        now: datetime,
        *,
        requested_ttl: timedelta | None,
        requester: str,
        request_id: str,
        extra_names: Sequence[x509.GeneralName] = (),
    ) -> IssuedSvid:
        if now >= self._not_after:
            raise ConfigurationError("ca_expired", "the signing CA certificate has expired")
        # X.509 times have whole seconds; the ledger records exactly what the certificate says.
        not_before = max(now - self.backdate, self._not_before).replace(microsecond=0)
        not_after = min(now + ttl, self._not_after).replace(microsecond=0)
        serial = random_serial()
        spiffe_id = caller.spiffe_id
        cert = self._builder.build(
            public_key,
            spiffe_id,
            serial=serial,
            not_before=not_before,
            not_after=not_after,
            extra_names=extra_names,
        )
        self._validator.validate(
            cert, spiffe_id, now=now, public_key=public_key, extra_names=extra_names
        )
        record = IssuedRecord(
            serial=serial_hex(serial),
            spiffe_id=str(spiffe_id),
            namespace=caller.namespace,
            service_account=caller.service_account,
            pod_name=caller.pod_name,
            pod_uid=caller.pod_uid,
            issuer_key_id=self._signer_key_id,
            not_before=not_before,
            not_after=not_after,
            cert_sha256=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
            public_key_sha256=public_key_sha256(public_key),
            requested_ttl_seconds=ttl_seconds(requested_ttl),
            requester=requester,
            request_id=request_id,
            issued_at=now,
        )
        return IssuedSvid(cert, self._chain, record)
