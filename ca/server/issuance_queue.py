"""Group commit for the gRPC server: requests that arrive together are signed together (in the
event loop, CPU only) and their ledger rows written in one transaction by a writer thread. One
transaction is in flight at a time: requests arriving meanwhile wait and form the next batch
(under load, a batch also lingers briefly for more requests), because every commit costs CPU
(an fsync, a round trip) whatever its size. A certificate is handed to its caller only after
its batch's transaction committed; if the write fails, every caller in the batch gets the error
(fail closed)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ca.core.errors import MeshcaError
from ca.core.issuer import IssuanceRequest, IssuedSvid
from ca.core.records import DeniedRecord
from ca.issuance import IssuanceService, Result, SignedBatch

log = logging.getLogger(__name__)

_Waiter = asyncio.Future[IssuedSvid]


class IssuanceQueue:
    """Batches :class:`IssuanceRequest` objects through the current :class:`IssuanceService`."""

    def __init__(
        self,
        service: Callable[[], IssuanceService],
        *,
        max_batch: int = 32,
        max_commits_in_flight: int = 1,
        linger: float = 0.002,
    ) -> None:
        self._service = service
        self._max_batch = max_batch
        self._linger = linger
        self._pending: list[tuple[IssuanceRequest, _Waiter]] = []
        self._denials: list[DeniedRecord] = []
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max_commits_in_flight)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="meshca-ledger")
        self._inflight: set[asyncio.Future[list[Result]]] = set()

    async def issue(self, request: IssuanceRequest) -> IssuedSvid:
        """Sign ``request`` and return its SVID once recorded, or raise its refusal."""
        waiter: _Waiter = asyncio.get_running_loop().create_future()
        self._pending.append((request, waiter))
        self._wakeup.set()
        return await waiter

    def record_refusal(self, record: DeniedRecord) -> None:
        """Write a refusal decided before signing (authentication, rate limit) with the next
        batch."""
        self._denials.append(record)
        self._wakeup.set()

    async def run(self) -> None:
        """Process batches until cancelled."""
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._pending or self._denials:
                    await self._slots.acquire()
                    if self._linger and 1 < len(self._pending) < self._max_batch:
                        # Under load (more than one caller waiting): let more requests join.
                        await asyncio.sleep(self._linger)
                    self._dispatch()
                    await asyncio.sleep(0)  # let the loop serve I/O between batches
        finally:
            # Refusals and requests already handed over are still written (and answered).
            while self._pending or self._denials:
                await self._slots.acquire()
                self._dispatch()
            await self.drain()

    async def drain(self) -> None:
        """Wait for the commits in flight, then stop the writer."""
        if self._inflight:
            await asyncio.wait(self._inflight)
        self._writer.shutdown(wait=True)

    def _dispatch(self) -> None:
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        denials, self._denials = self._denials, []
        service = self._service()
        try:
            signed = service.sign([request for request, _ in batch])
        except Exception as exc:  # a bug in signing must fail this batch, not the server
            log.exception("signing a batch of %d failed", len(batch))
            self._slots.release()
            _fail_all(batch, exc)
            return
        signed = SignedBatch(signed.results, signed.issued, [*signed.denied, *denials])
        commit = asyncio.get_running_loop().run_in_executor(self._writer, service.commit, signed)
        self._inflight.add(commit)
        commit.add_done_callback(lambda done: self._resolve(batch, done))

    def _resolve(
        self, batch: list[tuple[IssuanceRequest, _Waiter]], done: asyncio.Future[list[Result]]
    ) -> None:
        self._inflight.discard(done)
        self._slots.release()
        if done.cancelled():
            _fail_all(batch, asyncio.CancelledError())
            return
        error = done.exception()
        if error is not None:
            _fail_all(batch, error)
            return
        for (_, waiter), result in zip(batch, done.result(), strict=True):
            if waiter.done():
                continue  # the caller went away; its certificate is recorded, never delivered
            if isinstance(result, MeshcaError):
                waiter.set_exception(result)
            else:
                waiter.set_result(result)


def _fail_all(batch: list[tuple[IssuanceRequest, _Waiter]], error: BaseException) -> None:
    for _, waiter in batch:
        if not waiter.done():
            waiter.set_exception(error)
