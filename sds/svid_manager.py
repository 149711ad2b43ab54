"""Keeps the workload's X.509-SVID fresh: the first one as soon as possible, then a new key and
certificate at the renewal point of each (grace ratio with jitter), retrying failures with backoff
while the current SVID keeps being served until it expires.

Each issuance re-reads the token (the kubelet rotates it), generates a new key in memory, and
sends a CSR naming the token's SPIFFE ID. When the CA refuses the token but the current SVID is
still valid and an mTLS address is known, the SVID itself authenticates the renewal.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from spiffe import SpiffeId, TrustDomain

from ca.core.errors import InvalidRequest, MeshcaError, Unauthenticated
from ca.core.keys import KeyType
from sds.ca_client import CaClient, ClientIdentity
from sds.core.credentials import Bundles, Svid, WorkloadKey, chains_to, parse_pem_chain, split_root
from sds.core.renewal import Backoff, RenewalPolicy
from sds.core.workload_csr import build_csr, generate_workload_key, spiffe_id_for_token
from sds.credential_store import CredentialStore
from sds.metrics import AgentMetrics
from sds.token_file import read_token

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


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
        self._rng = rng or random.Random()  # noqa: S311 - timing jitter, not secrets
        self._clock = clock
        self._renew_now = asyncio.Event()
        self._obtained_at: datetime | None = None
        self.last_error: MeshcaError | None = None

    def renew_soon(self) -> None:
        """Renew at once rather than at the renewal point (e.g. the CA's signing key changed)."""
        self._renew_now.set()

    def bundle_changed(self, old: Bundles, new: Bundles) -> None:
        """A new signing authority at the CA: re-issue now rather than at the renewal point, so
        a root rotation does not wait for every SVID's normal renewal."""
        if new.signer_changed_from(old):
            log.info(
                "the CA's signing authority changed; renewing the X.509-SVID",
                extra={"signing_key_id": new.signing_key_id},
            )
            self.renew_soon()

    async def run(self) -> None:
        while True:
            await self._wait_for_renewal_point()
            self._renew_now.clear()  # this attempt answers any request to renew so far
            try:
                svid, via = await self._obtain()
            except MeshcaError as error:
                self._on_failure(error)
                await self._sleep(self._backoff.next_delay(self._rng))
                continue
            self._backoff.reset()
            self.last_error = None
            self._obtained_at = self._clock()
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

    async def _wait_for_renewal_point(self) -> None:
        svid = self._store.current.svid
        if svid is None:
            return
        renew_at = self._policy.renew_at(
            svid.not_before, svid.not_after, self._rng, received_at=self._obtained_at
        )
        await self._sleep(renew_at - self._clock())

    async def _sleep(self, delay: timedelta) -> None:
        """Sleep ``delay``, cut short by :meth:`renew_soon`; drop an SVID that expires meanwhile."""
        deadline = self._clock() + delay
        while (remaining := (deadline - self._clock()).total_seconds()) > 0:
            svid = self._store.current.svid
            if svid is not None and svid.not_after <= self._clock():
                log.error(
                    "X.509-SVID expired without renewal; no longer serving it",
                    extra={"serial": svid.serial_hex},
                )
                self._store.set_svid(None)
                continue
            if svid is not None:
                remaining = min(remaining, (svid.not_after - self._clock()).total_seconds())
            try:
                await asyncio.wait_for(self._renew_now.wait(), timeout=max(remaining, 0.0))
            except TimeoutError:
                continue
            return

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
        roots = self._store.current.bundles.all_roots()
        chain = split_root(parse_pem_chain(pems), roots)
        if not chains_to(chain, roots):
            raise InvalidRequest(
                "untrusted_chain", "the CA returned a certificate that does not chain to the bundle"
            )
        return Svid(spiffe_id, chain, key)

    def _on_failure(self, error: MeshcaError) -> None:
        self.last_error = error
        self._metrics.ca_failures.labels("create_certificate", error.reason).inc()
        log.warning(
            "could not obtain an X.509-SVID: %s", error.message, extra={"reason": error.reason}
        )
