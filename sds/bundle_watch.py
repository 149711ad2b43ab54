"""One ``WatchBundle`` stream to the CA, kept open: every bundle the CA pushes replaces the
agent's trust at once (and so reaches every SDS and Workload API stream). A broken stream is
reopened through the next CA address, with backoff once every address has failed."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from ca.api.methods import TrustBundleMessage
from ca.core.errors import ConfigurationError, MeshcaError, Unauthenticated
from ca.core.identity import parse_trust_domain
from sds.ca_client import CaClient, ClientIdentity
from sds.core.credentials import Bundles, parse_pem_chain
from sds.core.renewal import Backoff
from sds.credential_store import CredentialStore
from sds.metrics import AgentMetrics
from sds.token_file import read_token

log = logging.getLogger(__name__)

_MAX_BACKOFF = timedelta(seconds=10)


def bundles_from_message(message: TrustBundleMessage, current: Bundles) -> Bundles:
    """``current`` with the message's trust domain replaced by the roots it carries, and the
    CA's word on its authorities (signer, re-issue window, revocations) taken from it."""
    trust_domain = parse_trust_domain(message.trust_domain)
    roots = dict(current.roots)
    roots[trust_domain] = parse_pem_chain(list(message.root_certificates))
    return Bundles(
        roots,
        message.sequence,
        message.signing_key_id,
        reissue_window=_reissue_window(message),
        revoked_key_ids=frozenset(message.revoked_key_ids),
    )


def _reissue_window(message: TrustBundleMessage) -> timedelta:
    """The message's re-issue window: zero when unset (a CA from before the field) or, from a
    confused CA, negative; at once is the safe reading of both."""
    if not message.HasField("reissue_window"):
        return timedelta(0)
    return max(message.reissue_window.ToTimedelta(), timedelta(0))


class BundleWatch:
    """Runs the stream until cancelled."""

    def __init__(
        self,
        client: CaClient,
        store: CredentialStore,
        token_file: Path,
        metrics: AgentMetrics,
        *,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        on_change: Callable[[Bundles, Bundles], None] | None = None,
    ) -> None:
        self._client = client
        self._store = store
        self._token_file = token_file
        self._metrics = metrics
        self._backoff = backoff or Backoff(maximum=_MAX_BACKOFF)
        self._rng = rng or random.Random()  # noqa: S311 - timing jitter, not secrets
        self._on_change = on_change
        self._token_refused = False

    async def run(self) -> None:
        while True:
            try:
                await self._stream_once()
            except MeshcaError as error:
                # A refused token: the next attempt uses the SVID on the mTLS port, if any.
                self._token_refused = isinstance(error, Unauthenticated)
                self._metrics.ca_failures.labels("watch_bundle", error.reason).inc()
                log.warning(
                    "trust bundle stream failed: %s", error.message, extra={"reason": error.reason}
                )
            finally:
                self._metrics.bundle_connected.set(0)
            delay = self._backoff.next_delay(self._rng)
            await asyncio.sleep(delay.total_seconds())

    async def _stream_once(self) -> None:
        identity = self._identity()
        async for address, message in self._client.watch_bundle(identity):
            if self._backoff.failures:
                log.info("trust bundle stream open", extra={"address": address})
            self._backoff.reset()
            self._metrics.bundle_connected.set(1)
            self._apply(message)

    def _identity(self) -> ClientIdentity:
        svid = self._store.current.svid
        by_mtls = svid is not None and self._client.can_renew_by_mtls
        if self._token_refused and by_mtls:
            return ClientIdentity(svid=svid)
        try:
            return ClientIdentity(token=read_token(self._token_file))
        except MeshcaError:
            if by_mtls:
                return ClientIdentity(svid=svid)
            raise

    def _apply(self, message: TrustBundleMessage) -> None:
        credentials = self._store.current
        if message.trust_domain != credentials.trust_domain.name:
            raise ConfigurationError(
                "trust_domain_mismatch",
                f"the CA serves trust domain {message.trust_domain!r}, but this agent is for "
                f"{credentials.trust_domain.name!r} (--trust-domain)",
            )
        old = credentials.bundles
        new = bundles_from_message(message, old)
        if new == old:
            return
        self._store.set_bundles(new)
        if new.roots != old.roots:
            self._metrics.bundle_updates.inc()
            log.info(
                "trust bundle updated",
                extra={"sequence": new.sequence, "roots": len(new.all_roots())},
            )
        if self._on_change is not None:
            self._on_change(old, new)
