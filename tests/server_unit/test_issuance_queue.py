"""The server's group-commit queue over a real issuance service and ledger (SQLite and
PostgreSQL): requests that arrive together are signed and recorded together, each caller gets
its own certificate or its own refusal, refusals decided before signing are recorded with the
next batch, and a failed ledger write fails every caller of the batch (fail closed) without
stopping the queue.

Which batch a request went into is read from the ledger: the service reads its clock once per
batch, and the test clock ticks one second per read, so rows of one batch share ``issued_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import pytest
from sqlalchemy import Engine

from ca.core.csr_policy import TtlPolicy
from ca.core.errors import InvalidRequest, MeshcaError, Unauthenticated, Unavailable
from ca.core.identity import WorkloadIdentity
from ca.core.issuer import IssuanceRequest, IssuedSvid, Issuer, refusal_record
from ca.core.records import DeniedRecord
from ca.issuance import IssuanceService, utc_now
from ca.server.issuance_queue import IssuanceQueue
from ca.storage.ledger import Ledger, LedgerQuery
from tests.factories import TRUST_DOMAIN, WEB_ID, make_ca, make_csr
from tests.test_issuance_service import break_inserts, count_rows, repair_inserts

T = TypeVar("T")
REQUESTER = "system:serviceaccount:default:web"


class TickingClock:
    """A clock one second later at every read; ``fail_next`` makes the next read raise."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.reads = 0
        self.fail_next = False

    def __call__(self) -> datetime:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("clock exploded")
        self.reads += 1
        return self.start + timedelta(seconds=self.reads)


@dataclass
class Ca:
    service: IssuanceService
    ledger: Ledger
    engine: Engine
    clock: TickingClock


@pytest.fixture
def ca(migrated_engine: Engine) -> Ca:
    _root, intermediate = make_ca()
    clock = TickingClock(utc_now().replace(microsecond=0))
    ledger = Ledger(migrated_engine)
    service = IssuanceService(Issuer(TRUST_DOMAIN, intermediate, TtlPolicy()), ledger, clock)
    return Ca(service, ledger, migrated_engine, clock)


def web() -> WorkloadIdentity:
    return WorkloadIdentity.for_service_account(TRUST_DOMAIN, "default", "web")


def good() -> IssuanceRequest:
    return IssuanceRequest(make_csr(uris=[WEB_ID]), web(), None, REQUESTER, uuid.uuid4().hex)


def bad() -> IssuanceRequest:
    """A CSR asking to be a CA: refused while signing."""
    return IssuanceRequest(
        make_csr(uris=[WEB_ID], ca=True), web(), None, REQUESTER, uuid.uuid4().hex
    )


def with_queue(
    queue_factory: Callable[[], IssuanceQueue], work: Callable[[IssuanceQueue], Awaitable[T]]
) -> T:
    """Run ``work`` against a running queue in a fresh event loop; stop the queue after."""

    async def main() -> T:
        queue = queue_factory()
        runner = asyncio.create_task(queue.run())
        try:
            return await work(queue)
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    return asyncio.run(main())


async def issue_all(
    queue: IssuanceQueue, requests: list[IssuanceRequest]
) -> list[IssuedSvid | BaseException]:
    """Issue ``requests`` concurrently; each result is the SVID or what was raised."""
    return await asyncio.gather(*(queue.issue(r) for r in requests), return_exceptions=True)


def batches(ledger: Ledger, request_ids: list[str]) -> list[list[str]]:
    """``request_ids`` grouped by the batch (the ``issued_at``) their rows were written in."""
    at = {r.request_id: r.issued_at for r in ledger.certs(LedgerQuery(limit=1000))}
    groups: dict[datetime, list[str]] = {}
    for request_id in request_ids:
        groups.setdefault(at[request_id], []).append(request_id)
    return [groups[t] for t in sorted(groups)]


# --- batching -------------------------------------------------------------------------------


def test_concurrent_requests_are_signed_and_recorded_in_one_batch(ca: Ca) -> None:
    requests = [good() for _ in range(10)]

    results = with_queue(
        lambda: IssuanceQueue(lambda: ca.service), lambda q: issue_all(q, requests)
    )

    svids = [r for r in results if isinstance(r, IssuedSvid)]
    ids = [r.request_id for r in requests]
    assert [s.record.request_id for s in svids] == ids
    assert len({s.record.serial for s in svids}) == 10
    assert ca.ledger.count_issued() == 10
    assert batches(ca.ledger, ids) == [ids]
    assert ca.clock.reads == 1


def test_batches_are_at_most_max_batch_and_first_come_first_served(ca: Ca) -> None:
    requests = [good() for _ in range(10)]

    results = with_queue(
        lambda: IssuanceQueue(lambda: ca.service, max_batch=4), lambda q: issue_all(q, requests)
    )

    assert all(isinstance(r, IssuedSvid) for r in results)
    ids = [r.request_id for r in requests]
    assert batches(ca.ledger, ids) == [ids[0:4], ids[4:8], ids[8:10]]


def test_a_lone_request_is_not_held_back_for_company(ca: Ca) -> None:
    requests = [good() for _ in range(3)]

    async def one_at_a_time(queue: IssuanceQueue) -> list[IssuedSvid]:
        return [await queue.issue(r) for r in requests]

    results = with_queue(lambda: IssuanceQueue(lambda: ca.service), one_at_a_time)

    ids = [r.request_id for r in requests]
    assert [r.record.request_id for r in results] == ids
    assert batches(ca.ledger, ids) == [[i] for i in ids]


def test_the_current_service_is_asked_for_each_batch(ca: Ca, migrated_engine: Engine) -> None:
    """After a rotation the next batch signs with the new authority."""
    _root, other_intermediate = make_ca()
    rotated = IssuanceService(
        Issuer(TRUST_DOMAIN, other_intermediate, TtlPolicy()), ca.ledger, ca.clock
    )
    services = [ca.service, rotated]

    async def twice(queue: IssuanceQueue) -> list[IssuedSvid]:
        first = await queue.issue(good())
        services.pop(0)
        return [first, await queue.issue(good())]

    first, second = with_queue(lambda: IssuanceQueue(lambda: services[0]), twice)

    assert first.record.issuer_key_id == ca.service.issuer.signer.key_id
    assert second.record.issuer_key_id == other_intermediate.key_id
    second.certificate.verify_directly_issued_by(other_intermediate.certificate)


# --- refusals -------------------------------------------------------------------------------


def test_refusal_raises_for_its_caller_only_and_is_recorded_with_the_batch(ca: Ca) -> None:
    requests = [good(), bad(), good()]

    results = with_queue(
        lambda: IssuanceQueue(lambda: ca.service), lambda q: issue_all(q, requests)
    )

    ok_first, refused, ok_last = results
    assert isinstance(ok_first, IssuedSvid)
    assert isinstance(ok_last, IssuedSvid)
    assert isinstance(refused, InvalidRequest)
    assert refused.reason == "csr_requests_ca"
    (row,) = ca.ledger.denied(LedgerQuery())
    assert row.request_id == requests[1].request_id
    assert row.reason == "csr_requests_ca"
    assert row.error_type == "InvalidRequest"
    assert row.spiffe_id == WEB_ID
    assert row.denied_at == ok_first.record.issued_at == ok_last.record.issued_at
    assert sorted(r.request_id for r in ca.ledger.certs(LedgerQuery())) == sorted(
        [requests[0].request_id, requests[2].request_id]
    )


def unauthenticated_refusal(request_id: str) -> DeniedRecord:
    return refusal_record(
        Unauthenticated("token_invalid", "the service-account token is not valid"),
        request_id=request_id,
        requester="10.0.0.7:51234",
        caller=None,
        requested_ttl=None,
        now=utc_now(),
    )


def test_recorded_refusal_is_written_with_the_next_batch(ca: Ca) -> None:
    record = unauthenticated_refusal("refused-before-signing")
    request = good()

    async def refuse_then_issue(queue: IssuanceQueue) -> IssuedSvid:
        queue.record_refusal(record)
        return await queue.issue(request)

    svid = with_queue(lambda: IssuanceQueue(lambda: ca.service), refuse_then_issue)

    # Durable by the time the certificate of the same batch is returned.
    assert ca.ledger.cert(svid.record.serial) == svid.record
    (row,) = ca.ledger.denied(LedgerQuery())
    assert row == record
    assert row.spiffe_id is None
    assert row.reason == "token_invalid"
    assert row.error_type == "Unauthenticated"


def test_refusals_alone_are_written_without_any_issuance(ca: Ca) -> None:
    records = [unauthenticated_refusal(f"flood-{i}") for i in range(5)]

    async def refuse(queue: IssuanceQueue) -> None:
        for record in records:
            queue.record_refusal(record)
        for _ in range(10):  # let the queue pick them up; stopping it waits for the write
            await asyncio.sleep(0)

    with_queue(lambda: IssuanceQueue(lambda: ca.service), refuse)

    assert sorted(r.request_id for r in ca.ledger.denied(LedgerQuery())) == sorted(
        f"flood-{i}" for i in range(5)
    )
    assert ca.ledger.count_issued() == 0


def test_stopping_the_queue_writes_refusals_already_handed_to_it(ca: Ca) -> None:
    record = unauthenticated_refusal("refused-at-shutdown")

    async def main() -> None:
        queue = IssuanceQueue(lambda: ca.service)
        runner = asyncio.create_task(queue.run())
        await asyncio.sleep(0)  # the queue is idle, waiting for work
        queue.record_refusal(record)
        runner.cancel()  # shutdown arrives before the queue got to it
        with contextlib.suppress(asyncio.CancelledError):
            await runner

    asyncio.run(main())

    assert [r.request_id for r in ca.ledger.denied(LedgerQuery())] == ["refused-at-shutdown"]


def test_a_caller_that_went_away_still_has_its_certificate_recorded(ca: Ca) -> None:
    gone, present = good(), good()

    async def main() -> IssuedSvid:
        queue = IssuanceQueue(lambda: ca.service)
        abandoned = asyncio.create_task(queue.issue(gone))
        await asyncio.sleep(0)  # queued
        abandoned.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await abandoned
        runner = asyncio.create_task(queue.run())
        try:
            return await queue.issue(present)
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    svid = asyncio.run(main())

    assert svid.record.request_id == present.request_id
    assert sorted(r.request_id for r in ca.ledger.certs(LedgerQuery())) == sorted(
        [gone.request_id, present.request_id]
    )


# --- fail closed ----------------------------------------------------------------------------


def test_failed_ledger_write_fails_every_caller_in_the_batch(ca: Ca) -> None:
    break_inserts(ca.engine, "issued_certs")
    requests = [good(), good(), bad(), good()]

    results = with_queue(
        lambda: IssuanceQueue(lambda: ca.service), lambda q: issue_all(q, requests)
    )

    assert ca.clock.reads == 1  # one batch
    assert all(isinstance(r, Unavailable) for r in results), results
    assert {r.reason for r in results if isinstance(r, MeshcaError)} == {"database_unavailable"}
    assert count_rows(ca.engine, "issued_certs") == 0
    assert count_rows(ca.engine, "denied_requests") == 0


def test_queue_keeps_serving_after_a_failed_batch(ca: Ca) -> None:
    break_inserts(ca.engine, "issued_certs")
    first, second = good(), good()

    async def fail_then_recover(queue: IssuanceQueue) -> IssuedSvid:
        with pytest.raises(Unavailable):
            await queue.issue(first)
        await asyncio.to_thread(repair_inserts, ca.engine, "issued_certs")
        return await queue.issue(second)

    svid = with_queue(lambda: IssuanceQueue(lambda: ca.service), fail_then_recover)

    assert [r.request_id for r in ca.ledger.certs(LedgerQuery())] == [second.request_id]
    assert ca.ledger.cert(svid.record.serial) == svid.record


def test_failure_while_signing_fails_that_batch_only(ca: Ca) -> None:
    batch_one, batch_two = [good(), good()], [good()]

    async def main(queue: IssuanceQueue) -> list[object]:
        ca.clock.fail_next = True
        failed = await issue_all(queue, batch_one)
        return [*failed, *(await issue_all(queue, batch_two))]

    first, second, third = with_queue(lambda: IssuanceQueue(lambda: ca.service), main)

    assert isinstance(first, RuntimeError)
    assert isinstance(second, RuntimeError)
    assert isinstance(third, IssuedSvid)
    assert [r.request_id for r in ca.ledger.certs(LedgerQuery())] == [batch_two[0].request_id]
