"""Keeps the workload's X.509-SVID fresh: the first one as soon as possible, then a new key and
certificate at the renewal point of each (grace ratio with jitter), retrying failures with backoff
while the current SVID keeps being served until it expires.

Each issuance re-reads the token (the kubelet rotates it), generates a new key in memory, and
sends a CSR naming the token's SPIFFE ID. When the CA refuses the token but the current SVID is
still valid and an mTLS address is known, the SVID itself authenticates the renewal.

The trust bundle can call for a re-issue before the renewal point (:mod:`sds.core.reissue`): at
once when the SVID rests on a revoked or no longer trusted authority, at a random point of the
bundle's re-issue window when the CA signs with another authority. Every new SVID is asked the
same question, since a CA replica that has not switched yet may still answer with the old
authority; such repeats wait at least a growing backoff, so that a CA stuck on the old authority
(or a zero window) does not turn the agent into a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from spiffe import SpiffeId, TrustDomain

from ca.core.errors import MeshcaError, Unauthenticated
from ca.core.keys import KeyType
from sds.ca_client import CaClient, ClientIdentity
from sds.core.credentials import Bundles, Svid, WorkloadKey, svid_from_reply
from sds.core.reissue import Reissue, Urgency, reissue_deadline, reissue_needed
from sds.core.renewal import Backoff, RenewalPolicy
from sds.core.workload_csr import build_csr, generate_workload_key, spiffe_id_for_token
from sds.credential_store import CredentialStore
from sds.metrics import AgentMetrics
from sds.token_file import read_token

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


_DUE_AT_ONCE = datetime.min.replace(tzinfo=UTC)


def repeat_backoff() -> Backoff:
    """The least wait before re-issuing again an SVID that was just obtained but that the bundle
    already rules out (the CA answered from an authority it no longer signs with)."""
    return Backoff(initial=timedelta(seconds=1), maximum=timedelta(minutes=1))


class SvidManager:
    """Runs the renewal loop until cancelled."""

    def __init__(
        self,
        client: CaClient,
        store: CredentialStore,
        metrics: AgentMetrics,
        *,
        token_file: Path,
        key_type: KeyType,
        ttl: timedelta,
        policy: RenewalPolicy,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._client = client
        self._store = store
        self._metrics = metrics
        self._token_file = token_file
        self._key_type = key_type
        self._ttl = ttl
        self._policy = policy
        self._backoff = backoff or Backoff()
        self._repeat_backoff = repeat_backoff()
        self._rng = rng or random.Random()  # noqa: S311 - timing jitter, not secrets
        self._clock = clock
        self._wake = asyncio.Event()  # the schedule changed, or a renewal was asked for
        self._renew_requested = False
        self._renew_at: datetime | None = None  # drawn once per SVID: jitter must not re-draw
        self._reissue_at: datetime | None = None  # what the bundle called for, if anything
        self.last_error: MeshcaError | None = None

    def renew_soon(self) -> None:
        """Renew at once rather than at the renewal point (the wait after a failure still
        applies to the attempts that follow)."""
        self._renew_requested = True
        self._wake.set()

    @property
    def next_renewal(self) -> datetime | None:
        """When the SVID held will be renewed unless :meth:`renew_soon` asks sooner: its renewal
        point or the re-issue deadline, whichever comes first. ``None`` while no SVID is held
        (one is being obtained)."""
        if self._store.current.svid is None or self._renew_at is None:
            return None
        if self._reissue_at is None:
            return self._renew_at
        return min(self._renew_at, self._reissue_at)

    def bundle_changed(self, old: Bundles, new: Bundles) -> None:
        """Re-issue before the renewal point when ``new`` calls for it, so that a root rotation
        or a revocation does not wait for every SVID's normal renewal. (``old`` is not needed:
        the SVID held is what is compared with the bundle.)"""
        del old
        decision = reissue_needed(self._store.current.svid, new)
        if decision is None:
            self._cancel_reissue()
        elif decision.urgency is Urgency.NOW:
            self._count(decision, timedelta(0))
            self.renew_soon()
        else:
            now = self._clock()
            self._schedule(decision, reissue_deadline(now, new.reissue_window, self._rng), now)

    async def run(self) -> None:
        while True:
            await self._sleep_until(self._due)
            self._renew_requested = False  # this attempt answers any request to renew so far
            try:
                svid, via = await self._obtain()
            except MeshcaError as error:
                self._on_failure(error)
                await self._back_off()
                continue
            self._on_obtained(svid, via)

    async def _back_off(self) -> None:
        """Wait after a failure; only a new :meth:`renew_soon` cuts it short, not the schedule
        (a re-issue deadline that passed meanwhile must not defeat the backoff)."""
        retry_at = self._clock() + self._backoff.next_delay(self._rng)
        await self._sleep_until(lambda: retry_at)

    def _on_obtained(self, svid: Svid, via: str) -> None:
        self._backoff.reset()
        self.last_error = None
        now = self._clock()
        self._renew_at = self._policy.renew_at(
            svid.not_before, svid.not_after, self._rng, received_at=now
        )
        self._store.set_svid(svid)
        self._metrics.rotations.labels(via).inc()
        log.info(
            "X.509-SVID obtained",
            extra={
                "spiffe_id": str(svid.spiffe_id),
                "serial": svid.serial_hex,
                "not_after": svid.not_after.isoformat(),
                "via": via,
            },
        )
        self._reconsider(svid, now)

    def _reconsider(self, svid: Svid, now: datetime) -> None:
        """Ask of a new SVID whether the bundle already rules it out: a CA replica that has not
        switched signer yet may have issued it. A deadline that has passed was just honoured."""
        if self._reissue_at is not None and self._reissue_at <= now:
            self._reissue_at = None
        bundles = self._store.current.bundles
        decision = reissue_needed(svid, bundles)
        if decision is None:
            self._cancel_reissue()
            self._repeat_backoff.reset()
            return
        window = bundles.reissue_window
        if decision.urgency is Urgency.NOW:
            window = timedelta(0)
        drawn = reissue_deadline(now, window, self._rng)
        earliest = now + self._repeat_backoff.next_delay(self._rng)
        self._schedule(decision, max(drawn, earliest), now)

    def _schedule(self, decision: Reissue, at: datetime, now: datetime) -> None:
        """Re-issue at ``at``, unless a re-issue is already due sooner (a later bundle must not
        postpone it, nor re-draw it)."""
        if self._reissue_at is not None and self._reissue_at <= at:
            log.info(
                "X.509-SVID re-issue already due in %.1f s: %s",
                (self._reissue_at - now).total_seconds(),
                decision.detail,
                extra={"reason": decision.reason},
            )
            return
        self._reissue_at = at
        self._count(decision, at - now)
        self._wake.set()

    def _cancel_reissue(self) -> None:
        if self._reissue_at is not None:
            log.info("X.509-SVID re-issue no longer needed: it is from the CA's signer")
            self._reissue_at = None

    def _count(self, decision: Reissue, delay: timedelta) -> None:
        self._metrics.reissues.labels(decision.reason).inc()
        log.info(
            "re-issuing the X.509-SVID in %.1f s: %s",
            delay.total_seconds(),
            decision.detail,
            extra={"reason": decision.reason, "delay_seconds": delay.total_seconds()},
        )

    def _due(self) -> datetime:
        """When to renew next: at once when no SVID is held. (Not ``self._clock()``: a clock
        read again is always a little later than the ``now`` it is compared with, so the wait
        would never end.)"""
        return self.next_renewal or _DUE_AT_ONCE

    async def _sleep_until(self, deadline: Callable[[], datetime]) -> None:
        """Sleep until ``deadline()`` (asked again whenever the schedule changes), cut short by
        :meth:`renew_soon`; drop an SVID that expires meanwhile."""
        while True:
            now = self._clock()
            svid = self._store.current.svid
            if svid is not None and svid.not_after <= now:
                log.error(
                    "X.509-SVID expired without renewal; no longer serving it",
                    extra={"serial": svid.serial_hex},
                )
                self._store.set_svid(None)
                continue
            if self._renew_requested:
                return
            remaining = deadline() - now
            if svid is not None:
                remaining = min(remaining, svid.not_after - now)
            if remaining <= timedelta(0):
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining.total_seconds())

    async def _obtain(self) -> tuple[Svid, str]:
        token = read_token(self._token_file)
        trust_domain: TrustDomain = self._store.current.trust_domain
        spiffe_id = spiffe_id_for_token(token, trust_domain)
        key = await asyncio.to_thread(generate_workload_key, self._key_type)
        csr = build_csr(key, spiffe_id)
        via = "token"
        try:
            pems = await self._client.create_certificate(
                csr, self._ttl, ClientIdentity(token=token)
            )
        except Unauthenticated:
            current = self._store.current.svid
            if current is None or not self._client.can_renew_by_mtls:
                raise
            if current.not_after <= self._clock():
                raise
            log.warning("the CA refused the token; renewing by mTLS with the current SVID")
            via = "mtls"
            pems = await self._client.create_certificate(
                csr, self._ttl, ClientIdentity(svid=current)
            )
        return self._checked(pems, spiffe_id, key), via

    def _checked(self, pems: list[str], spiffe_id: SpiffeId, key: WorkloadKey) -> Svid:
        """The CA's answer as an :class:`Svid`, refused unless it is ours and chains to trust."""
        return svid_from_reply(pems, spiffe_id, key, self._store.current.bundles.all_roots())

    def _on_failure(self, error: MeshcaError) -> None:
        self.last_error = error
        self._metrics.ca_failures.labels("create_certificate", error.reason).inc()
        log.warning(
            "could not obtain an X.509-SVID: %s", error.message, extra={"reason": error.reason}
        )
