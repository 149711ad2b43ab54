"""Issuance with a ledger: a certificate leaves the CA only after its row is durable.

Refusals are recorded too. Work is split in two stages so that callers can group-commit:
:meth:`IssuanceService.sign` checks and signs a batch (CPU only, nothing returned to anyone yet)
and :meth:`IssuanceService.commit` writes the batch's rows in one transaction and only then
releases its certificates. A server can commit one batch while it signs the next.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from ca.core.errors import MeshcaError
from ca.core.identity import WorkloadIdentity
from ca.core.issuer import IssuanceRequest, IssuedSvid, Issuer, deny_record
from ca.core.records import DeniedRecord, IssuedRecord
from ca.storage.ledger import Ledger

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Result = IssuedSvid | MeshcaError


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class SignedBatch:
    """Signed but not yet recorded: nothing here may reach a caller before :meth:`commit`."""

    results: list[Result]
    issued: list[IssuedRecord]
    denied: list[DeniedRecord]


class IssuanceService:
    """Joins the pure :class:`Issuer` to the :class:`Ledger`."""

    def __init__(self, issuer: Issuer, ledger: Ledger, clock: Clock = utc_now) -> None:
        self.issuer = issuer
        self.ledger = ledger
        self.clock = clock

    def issue(self, request: IssuanceRequest) -> IssuedSvid:
        """Issue one SVID, or raise the refusal after recording it."""
        (result,) = self.issue_batch([request])
        if isinstance(result, MeshcaError):
            raise result
        return result

    def issue_batch(self, requests: Sequence[IssuanceRequest]) -> list[Result]:
        """Issue many SVIDs with one ledger transaction; each result is the SVID or its refusal."""
        return self.commit(self.sign(requests))

    def issue_serving(
        self,
        public_key: CertificatePublicKeyTypes,
        identity: WorkloadIdentity,
        extra_names: Sequence[x509.GeneralName],
        ttl: timedelta,
        *,
        requester: str,
        request_id: str,
    ) -> IssuedSvid:
        """Issue and record the CA server's own certificate (see :meth:`Issuer.issue_serving`)."""
        svid = self.issuer.issue_serving(
            public_key,
            identity,
            extra_names,
            ttl,
            self.clock(),
            requester=requester,
            request_id=request_id,
        )
        self.commit(SignedBatch([svid], [svid.record], []))
        return svid

    def sign(self, requests: Sequence[IssuanceRequest]) -> SignedBatch:
        """Check and sign every request (no I/O)."""
        now = self.clock()
        results: list[Result] = []
        issued: list[IssuedRecord] = []
        denied: list[DeniedRecord] = []
        for request in requests:
            try:
                svid = self.issuer.issue(request, now)
            except MeshcaError as error:
                results.append(error)
                denied.append(deny_record(request, error, now))
            else:
                results.append(svid)
                issued.append(svid.record)
        return SignedBatch(results, issued, denied)

    def commit(self, batch: SignedBatch) -> list[Result]:
        """Record the batch in one transaction, then release its results.

        If the write fails and the batch holds certificates, the write error is raised and no
        certificate is released (fail closed). A batch of refusals only still returns them.
        """
        try:
            self.ledger.record(batch.issued, batch.denied)
        except MeshcaError:
            if batch.issued:
                log.exception(
                    "ledger write failed; withholding %d certificate(s)", len(batch.issued)
                )
                raise
            log.exception("ledger write failed; %d refusal(s) not recorded", len(batch.denied))
        for record in batch.denied:
            log.info(
                "refused request_id=%s spiffe_id=%s reason=%s",
                record.request_id,
                record.spiffe_id,
                record.reason,
            )
        return batch.results
