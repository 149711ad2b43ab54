"""Envoy's ``SecretDiscoveryService`` (SDS v3) over grpc.aio: ``StreamSecrets`` (state of the
world), ``DeltaSecrets`` (incremental) and ``FetchSecrets`` (unary). The protocol itself lives in
:mod:`sds.core.xds_protocol`; this module moves messages between it, the credential store and the
network, and pushes every credential change to every open stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc

from sds.api import xds
from sds.core.credentials import Credentials
from sds.core.xds_protocol import DeltaStream, Outcome, SotwStream, UnknownResources
from sds.credential_store import CredentialStore
from sds.metrics import AgentMetrics

log = logging.getLogger(__name__)

_END = object()


class _Stream(Protocol):
    node: Any
    nack_detail: str | None

    def on_request(self, request: Any) -> Outcome: ...


class SdsService:
    """The SDS handlers, over one :class:`CredentialStore`."""

    def __init__(self, store: CredentialStore, metrics: AgentMetrics) -> None:
        self._store = store
        self._metrics = metrics

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            xds.SDS_SERVICE,
            {
                "StreamSecrets": grpc.stream_stream_rpc_method_handler(
                    self.stream_secrets,
                    request_deserializer=xds.DiscoveryRequest.FromString,
                    response_serializer=xds.DiscoveryResponse.SerializeToString,
                ),
                "DeltaSecrets": grpc.stream_stream_rpc_method_handler(
                    self.delta_secrets,
                    request_deserializer=xds.DeltaDiscoveryRequest.FromString,
                    response_serializer=xds.DeltaDiscoveryResponse.SerializeToString,
                ),
                "FetchSecrets": grpc.unary_unary_rpc_method_handler(
                    self.fetch_secrets,
                    request_deserializer=xds.DiscoveryRequest.FromString,
                    response_serializer=xds.DiscoveryResponse.SerializeToString,
                ),
            },
        )

    async def stream_secrets(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        stream = SotwStream()
        async for credentials, outcome in self._events(stream, requests, "sotw"):
            try:
                response = stream.respond(
                    credentials, force=outcome in (Outcome.INITIAL, Outcome.SUBSCRIBE)
                )
            except UnknownResources as error:
                await self._refuse(context, error)
                return
            if response is not None:
                self._sent("sotw", stream, response.version_info)
                yield response

    async def delta_secrets(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        stream = DeltaStream()
        async for credentials, _ in self._events(stream, requests, "delta"):
            response = stream.respond(credentials)
            if response is not None:
                if response.removed_resources:
                    self._metrics.sds_errors.labels("unknown_resource").inc()
                    log.warning(
                        "SDS request for unknown secret name(s)",
                        extra={"names": list(response.removed_resources)},
                    )
                self._sent("delta", stream, response.system_version_info)
                yield response

    async def fetch_secrets(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if not request.resource_names:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "name the secrets to fetch (resource_names)"
            )
        stream = SotwStream()
        stream.on_request(request)
        credentials = self._store.current
        try:
            response = stream.respond(credentials, force=True)
        except UnknownResources as error:
            await self._refuse(context, error)
            raise AssertionError("unreachable") from None
        if response is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the agent holds no X.509-SVID yet; retry shortly",
            )
        return response

    async def _events(
        self, stream: _Stream, requests: AsyncIterator[Any], api: str
    ) -> AsyncIterator[tuple[Credentials, Outcome]]:
        """Requests and credential changes, merged: yields the credentials to answer from and
        why (the request's outcome, or ``ACK`` for a credential change: push only if new)."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        reader = asyncio.create_task(_pump(requests, queue))
        self._metrics.sds_streams.labels(api).inc()
        generation = self._store.current.generation
        get: asyncio.Future[Any] | None = None
        change: asyncio.Future[Credentials] | None = None
        try:
            while True:
                get = get or asyncio.ensure_future(queue.get())
                change = change or asyncio.ensure_future(self._store.wait_newer(generation))
                await asyncio.wait({get, change}, return_when=asyncio.FIRST_COMPLETED)
                if change.done():
                    generation = change.result().generation
                    change = None
                if not get.done():
                    yield self._store.current, Outcome.ACK  # pushed only if it is new
                    continue
                request, get = get.result(), None
                if request is _END:
                    return
                outcome = stream.on_request(request)
                if outcome is Outcome.NACK:
                    self._nacked(api, stream)
                if outcome in (Outcome.NACK, Outcome.STALE):
                    continue
                yield self._store.current, outcome
        finally:
            self._metrics.sds_streams.labels(api).dec()
            for pending in (get, change, reader):
                if pending is not None:
                    pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _nacked(self, api: str, stream: _Stream) -> None:
        self._metrics.sds_nacks.labels(api).inc()
        log.warning(
            "Envoy rejected a secret (NACK): %s",
            stream.nack_detail,
            extra={"node": _node_id(stream.node), "api": api},
        )

    def _sent(self, api: str, stream: _Stream, version: str) -> None:
        self._metrics.sds_pushes.labels(api).inc()
        log.debug("SDS response sent", extra={"node": _node_id(stream.node), "version": version})

    async def _refuse(
        self, context: grpc.aio.ServicerContext[Any, Any], error: UnknownResources
    ) -> None:
        self._metrics.sds_errors.labels("unknown_resource").inc()
        log.warning("SDS request for unknown secret name(s)", extra={"names": list(error.names)})
        await context.abort(grpc.StatusCode.NOT_FOUND, str(error))


async def _pump(requests: AsyncIterator[Any], queue: asyncio.Queue[Any]) -> None:
    try:
        async for request in requests:
            await queue.put(request)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass
    finally:
        await queue.put(_END)


def _node_id(node: Any) -> str:
    return str(node.id) if node is not None else ""
