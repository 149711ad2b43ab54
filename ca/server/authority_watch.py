"""What the server signs with and which roots it trusts, kept current.

The database is the source of truth (several replicas and the admin CLI change it). The server
calls :meth:`AuthorityWatch.check` when PostgreSQL announces a change (``ca.storage.change_feed``)
and every ``bundle_refresh_interval`` (one cheap query for the bundle sequence); when the
sequence moves, the watch reloads the trust bundle and the signing authority and wakes every
subscriber (WatchBundle streams, the TLS credentials). Agents never poll: they hold a stream and
are pushed to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from cryptography import x509

from ca.core.bundle import TrustBundle
from ca.core.csr_policy import TtlPolicy
from ca.core.errors import MeshcaError
from ca.core.issuer import Issuer
from ca.core.kek import KeyEncryptionKey
from ca.core.keys import key_id
from ca.core.lifecycle import AuthorityRole, AuthorityState
from ca.issuance import Clock, IssuanceService, utc_now
from ca.server import metrics
from ca.storage.authority_store import AuthorityInfo, AuthorityStore
from ca.storage.ledger import Ledger

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CaSnapshot:
    """The CA as loaded at one bundle sequence."""

    bundle: TrustBundle
    issuers: tuple[x509.Certificate, ...]
    service: IssuanceService
    authorities: tuple[AuthorityInfo, ...] = ()
    event_counts: Mapping[tuple[str, str], int] = field(default_factory=dict)

    @property
    def sequence(self) -> int:
        return self.bundle.sequence


class AuthorityWatch:
    """Loads the CA from the database and reloads it when the bundle sequence changes."""

    def __init__(
        self,
        store: AuthorityStore,
        ledger: Ledger,
        kek: KeyEncryptionKey,
        ttl_policy: TtlPolicy,
        *,
        backdate: timedelta,
        clock: Clock = utc_now,
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._kek = kek
        self._ttl_policy = ttl_policy
        self._backdate = backdate
        self._clock = clock
        self._snapshot: CaSnapshot | None = None
        self._changed = asyncio.Condition()
        self.healthy = False
        self._listeners: list[Callable[[CaSnapshot], None]] = []
        self._checking = asyncio.Lock()

    @property
    def current(self) -> CaSnapshot:
        if self._snapshot is None:
            raise RuntimeError("AuthorityWatch.load() has not run")
        return self._snapshot

    def on_change(self, listener: Callable[[CaSnapshot], None]) -> None:
        """Call ``listener`` (in the event loop) with every new snapshot."""
        self._listeners.append(listener)

    async def load(self) -> CaSnapshot:
        """Load the CA now (raises :class:`MeshcaError` when it cannot)."""
        snapshot = await asyncio.to_thread(self._read)
        await self._publish(snapshot)
        self.healthy = True
        return snapshot

    async def check(self, trigger: str = "poll") -> None:
        """Reload when the sequence moved; record whether the database answered. ``trigger``
        says why this check runs (``poll``, ``notify``, ``rotation``), for the reload metric."""
        try:
            async with self._checking:
                sequence = await asyncio.to_thread(self._store.bundle_sequence)
                if sequence != self.current.sequence:
                    log.info(
                        "CA changed: bundle sequence %s -> %s", self.current.sequence, sequence
                    )
                    await self.load()
                    metrics.CA_RELOADS.labels(trigger).inc()
                elif trigger == "notify":
                    # A refused step changes nothing but is announced: count it.
                    counts = await asyncio.to_thread(self._store.event_counts)
                    _export_event_counts(counts)
        except MeshcaError as error:
            if self.healthy:
                log.warning("cannot check the CA state: %s", error.message)
            self.healthy = False
        else:
            self.healthy = True

    async def wait_for_change(self, sequence: int) -> CaSnapshot:
        """The next snapshot whose sequence is not ``sequence``."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.current.sequence != sequence)
            return self.current

    async def _publish(self, snapshot: CaSnapshot) -> None:
        self._snapshot = snapshot
        metrics.BUNDLE_SEQUENCE.set(snapshot.sequence)
        signer = snapshot.service.issuer.signer
        for cert in {signer.certificate, signer.root}:
            role = "root" if cert == signer.root else "intermediate"
            metrics.CA_EXPIRY.labels(role, key_id(cert.public_key())).set(  # type: ignore[arg-type]
                cert.not_valid_after_utc.timestamp()
            )
        _export_lifecycle(snapshot)
        for listener in self._listeners:
            listener(snapshot)
        async with self._changed:
            self._changed.notify_all()

    def _read(self) -> CaSnapshot:
        identity = self._store.require_identity()
        bundle = self._store.bundle()
        signer = self._store.signing_authority(self._kek)
        issuer = Issuer(identity.trust_domain, signer, self._ttl_policy, backdate=self._backdate)
        return CaSnapshot(
            bundle,
            tuple(self._store.trusted_issuers()),
            IssuanceService(issuer, self._ledger, self._clock),
            tuple(self._store.authorities()),
            self._store.event_counts(),
        )


def _export_lifecycle(snapshot: CaSnapshot) -> None:
    """The lifecycle as gauges: authorities by role and state, who signs, steps recorded."""
    for role in AuthorityRole:
        for state in AuthorityState:
            count = sum(1 for a in snapshot.authorities if a.role is role and a.state is state)
            metrics.AUTHORITIES.labels(role.value, state.value).set(count)
    signer = snapshot.bundle.signing_key_id
    for authority in snapshot.authorities:
        if authority.has_key:
            metrics.SIGNING_AUTHORITY.labels(authority.id).set(1 if authority.id == signer else 0)
    _export_event_counts(snapshot.event_counts)


def _export_event_counts(counts: Mapping[tuple[str, str], int]) -> None:
    for (action, outcome), count in counts.items():
        metrics.LIFECYCLE_STEPS.labels(action, outcome).set(count)
