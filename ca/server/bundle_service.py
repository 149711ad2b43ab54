"""``meshca.v1.TrustBundleService/WatchBundle``: the current trust bundle at once, then every
change as it happens, to any authenticated caller."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TypeAlias

import grpc
from cryptography.hazmat.primitives import serialization

from ca.api.methods import TrustBundleMessage, WatchBundleRequest
from ca.core.errors import MeshcaError, Unauthenticated
from ca.server import metrics
from ca.server.authority_watch import AuthorityWatch, CaSnapshot
from ca.server.callers import CallerAuthenticator, request_metadata
from ca.server.status import status_code, status_message

log = logging.getLogger(__name__)

_Context: TypeAlias = "grpc.aio.ServicerContext[WatchBundleRequest, TrustBundleMessage]"


def bundle_message(snapshot: CaSnapshot, reissue_window: timedelta) -> TrustBundleMessage:
    bundle = snapshot.bundle
    message = TrustBundleMessage(
        trust_domain=bundle.trust_domain.name,
        sequence=bundle.sequence,
        root_certificates=[
            root.public_bytes(serialization.Encoding.PEM).decode() for root in bundle.roots
        ],
        signing_key_id=bundle.signing_key_id or "",
        revoked_key_ids=list(bundle.revoked_key_ids),
    )
    message.reissue_window.FromTimedelta(reissue_window)
    return message


class BundleService:
    """The WatchBundle handler."""

    def __init__(
        self,
        authenticator: CallerAuthenticator,
        watch: AuthorityWatch,
        reissue_window: timedelta,
    ) -> None:
        self._authenticator = authenticator
        self._watch = watch
        self._reissue_window = reissue_window
        self._built: tuple[int, TrustBundleMessage] | None = None

    def _message(self, snapshot: CaSnapshot) -> TrustBundleMessage:
        """The message for ``snapshot``, built once for every stream it goes to (10,000 streams
        would otherwise PEM-encode every root 10,000 times per change). Never modified."""
        if self._built is None or self._built[0] != snapshot.sequence:
            self._built = (snapshot.sequence, bundle_message(snapshot, self._reissue_window))
        return self._built[1]

    async def watch_bundle(
        self, request: WatchBundleRequest, context: _Context
    ) -> AsyncIterator[TrustBundleMessage]:
        request_id = uuid.uuid4().hex
        try:
            caller = await self._authenticator.authenticate(
                request_metadata(context), context.auth_context()
            )
        except MeshcaError as error:
            if isinstance(error, Unauthenticated):
                metrics.AUTH_FAILURES.labels(error.reason).inc()
            await context.abort(status_code(error), status_message(error, request_id))
            raise
        log.info(
            "bundle watch opened",
            extra={"request_id": request_id, "spiffe_id": str(caller.identity.spiffe_id)},
        )
        metrics.BUNDLE_WATCHERS.inc()
        try:
            snapshot = self._watch.current
            yield self._message(snapshot)
            while True:
                snapshot = await self._watch.wait_for_change(snapshot.sequence)
                yield self._message(snapshot)
        finally:
            metrics.BUNDLE_WATCHERS.dec()
            log.info("bundle watch closed", extra={"request_id": request_id})
