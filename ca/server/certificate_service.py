"""``istio.v1.auth.IstioCertificateService/CreateCertificate``: authenticate, admit, sign,
record, answer. Every refusal is answered with a precise status and written to the ledger."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeAlias

import grpc

from ca.api.methods import CertificateRequest, CertificateResponse
from ca.core.errors import InternalError, InvalidRequest, MeshcaError, Unauthenticated
from ca.core.identity import WorkloadIdentity
from ca.core.issuer import IssuanceRequest, refusal_record
from ca.issuance import Clock
from ca.server import metrics
from ca.server.callers import Admission, Caller, CallerAuthenticator, request_metadata
from ca.server.issuance_queue import IssuanceQueue
from ca.server.status import status_code, status_message

log = logging.getLogger(__name__)

_Context: TypeAlias = "grpc.aio.ServicerContext[CertificateRequest, CertificateResponse]"

#: Longest lifetime a request can even express (the TTL policy's maximum is usually far lower).
_MAX_VALIDITY_SECONDS = 100 * 365 * 24 * 3600


def requested_ttl(validity_seconds: int) -> timedelta | None:
    """``validity_duration`` as a TTL (0: the CA's default)."""
    if validity_seconds == 0:
        return None
    if not 0 < validity_seconds <= _MAX_VALIDITY_SECONDS:
        raise InvalidRequest(
            "ttl_invalid", f"validity_duration {validity_seconds}s is not a valid lifetime"
        )
    return timedelta(seconds=validity_seconds)


class CertificateService:
    """The CreateCertificate handler."""

    def __init__(
        self,
        authenticator: CallerAuthenticator,
        admission: Admission,
        queue: IssuanceQueue,
        clock: Clock,
    ) -> None:
        self._authenticator = authenticator
        self._admission = admission
        self._queue = queue
        self._clock = clock

    async def create_certificate(
        self, request: CertificateRequest, context: _Context
    ) -> CertificateResponse:
        started = time.perf_counter()
        call = _Call(uuid.uuid4().hex, context.peer())
        try:
            caller, ttl = await self._admit(request, context, call)
            svid = await self._queue.issue(
                IssuanceRequest(
                    request.csr.encode(), caller.identity, ttl, call.requester, call.request_id
                )
            )
        except MeshcaError as error:
            # Refusals made while signing are already in the batch's ledger rows.
            await self._abort(context, error, call)
            raise
        except Exception:
            log.exception("CreateCertificate failed (request id %s)", call.request_id)
            await self._abort(
                context, InternalError("internal", "the CA failed to process the request"), call
            )
            raise
        metrics.CSR_REQUESTS.labels("issued").inc()
        metrics.ISSUANCE_LATENCY.observe(time.perf_counter() - started)
        log.info(
            "issued",
            extra={
                "request_id": call.request_id,
                "spiffe_id": svid.record.spiffe_id,
                "serial": svid.record.serial,
                "result": "issued",
                "auth": caller.method,
            },
        )
        return CertificateResponse(cert_chain=svid.chain_pem())

    async def _admit(
        self, request: CertificateRequest, context: _Context, call: _Call
    ) -> tuple[Caller, timedelta | None]:
        """Authenticate and admit; a refusal here is recorded in the ledger, then raised."""
        caller: Caller | None = None
        try:
            self._admission.admit_global()
            caller = await self._authenticator.authenticate(
                request_metadata(context), context.auth_context()
            )
            call.caller = caller.identity
            self._admission.admit(caller)
            return caller, requested_ttl(request.validity_duration)
        except MeshcaError as error:
            self._queue.record_refusal(
                refusal_record(
                    error,
                    request_id=call.request_id,
                    requester=call.requester,
                    caller=call.caller,
                    requested_ttl=None,
                    now=self._clock(),
                )
            )
            raise

    async def _abort(self, context: _Context, error: MeshcaError, call: _Call) -> None:
        code = status_code(error)
        metrics.CSR_REQUESTS.labels(code.name).inc()
        metrics.REFUSALS.labels(error.reason).inc()
        if isinstance(error, Unauthenticated):
            metrics.AUTH_FAILURES.labels(error.reason).inc()
        log.info(
            "refused",
            extra={
                "request_id": call.request_id,
                "spiffe_id": str(call.caller.spiffe_id) if call.caller else None,
                "result": code.name,
                "reason": error.reason,
                "detail": error.message,
            },
        )
        await context.abort(code, status_message(error, call.request_id))


@dataclass(slots=True)
class _Call:
    request_id: str
    requester: str
    caller: WorkloadIdentity | None = None
