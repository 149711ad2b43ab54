"""Issuance with a ledger: a certificate leaves the CA only after its row is durable.

Refusals are recorded too. Requests can be issued one at a time or in batches that share one
transaction (group commit): every certificate of a batch is returned only after the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from ca.core.errors import MeshcaError
from ca.core.issuer import IssuanceRequest, IssuedSvid, Issuer, deny_record
from ca.core.records import DeniedRecord
from ca.storage.ledger import Ledger

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


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

    def issue_batch(self, requests: Sequence[IssuanceRequest]) -> list[IssuedSvid | MeshcaError]:
        """Issue many SVIDs with one ledger transaction; each result is the SVID or its refusal.

        If the ledger write fails, the write error is raised and no certificate is returned.
        """
        now = self.clock()
        results: list[IssuedSvid | MeshcaError] = []
        denied: list[DeniedRecord] = []
        for request in requests:
            try:
                results.append(self.issuer.issue(request, now))
            except MeshcaError as error:
                results.append(error)
                denied.append(deny_record(request, error, now))
        issued = [r.record for r in results if isinstance(r, IssuedSvid)]
        try:
            self.ledger.record(issued, denied)
        except MeshcaError:
            if issued:
                log.exception("ledger write failed; withholding %d certificate(s)", len(issued))
                raise
            # Nothing to withhold: the callers still get their precise refusals.
            log.exception("ledger write failed; %d refusal(s) not recorded", len(denied))
        for record in denied:
            log.info(
                "refused request_id=%s spiffe_id=%s reason=%s",
                record.request_id,
                record.spiffe_id,
                record.reason,
            )
        return results
