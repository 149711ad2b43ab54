"""The SPIFFE Workload API (X.509 part) over grpc.aio: ``FetchX509SVID`` and ``FetchX509Bundles``
stream the workload's SVID and bundles now and after every change.

As the specification requires, every call must carry the ``workload.spiffe.io: true`` metadata
(INVALID_ARGUMENT otherwise), and the X.509 streams answer UNAVAILABLE while the agent holds no
SVID. JWT-SVIDs are not issued yet: those methods answer UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from sds.api import workload_pb2 as wl
from sds.core.credentials import Credentials
from sds.credential_store import CredentialStore
from sds.metrics import AgentMetrics

SERVICE = "SpiffeWorkloadAPI"
HEADER = "workload.spiffe.io"

_Context = grpc.aio.ServicerContext[Any, Any]


def x509_svid_response(credentials: Credentials) -> wl.X509SVIDResponse | None:
    """The response for ``credentials``, or ``None`` while no SVID is held."""
    svid = credentials.svid
    if svid is None:
        return None
    own = svid.spiffe_id.trust_domain
    bundles = credentials.bundles
    return wl.X509SVIDResponse(
        svids=[
            wl.X509SVID(
                spiffe_id=str(svid.spiffe_id),
                x509_svid=svid.chain_der(),
                x509_svid_key=svid.key_pkcs8_der(),
                bundle=bundles.der(own),
            )
        ],
        federated_bundles={
            str(td.as_spiffe_id()): bundles.der(td) for td in bundles.roots if td != own
        },
    )


def x509_bundles_response(credentials: Credentials) -> wl.X509BundlesResponse | None:
    if credentials.svid is None:
        return None
    bundles = credentials.bundles
    return wl.X509BundlesResponse(
        bundles={str(td.as_spiffe_id()): bundles.der(td) for td in bundles.roots}
    )


class WorkloadApiService:
    """The Workload API handlers over one :class:`CredentialStore`."""

    def __init__(self, store: CredentialStore, metrics: AgentMetrics) -> None:
        self._store = store
        self._metrics = metrics

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        def stream(method: Any, request: Any, response: Any) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_stream_rpc_method_handler(
                method,
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )

        def unary(method: Any, request: Any, response: Any) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "FetchX509SVID": stream(
                    self.fetch_x509_svid, wl.X509SVIDRequest, wl.X509SVIDResponse
                ),
                "FetchX509Bundles": stream(
                    self.fetch_x509_bundles, wl.X509BundlesRequest, wl.X509BundlesResponse
                ),
                "FetchJWTSVID": unary(self.unimplemented, wl.JWTSVIDRequest, wl.JWTSVIDResponse),
                "FetchJWTBundles": stream(
                    self.unimplemented_stream, wl.JWTBundlesRequest, wl.JWTBundlesResponse
                ),
                "ValidateJWTSVID": unary(
                    self.unimplemented, wl.ValidateJWTSVIDRequest, wl.ValidateJWTSVIDResponse
                ),
            },
        )

    async def fetch_x509_svid(
        self, request: wl.X509SVIDRequest, context: _Context
    ) -> AsyncIterator[wl.X509SVIDResponse]:
        async for response in self._watch(context, x509_svid_response):
            yield response

    async def fetch_x509_bundles(
        self, request: wl.X509BundlesRequest, context: _Context
    ) -> AsyncIterator[wl.X509BundlesResponse]:
        async for response in self._watch(context, x509_bundles_response):
            yield response

    async def unimplemented(self, request: Any, context: _Context) -> Any:
        await _require_header(context)
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "JWT-SVIDs are not issued by this agent yet"
        )

    async def unimplemented_stream(self, request: Any, context: _Context) -> AsyncIterator[Any]:
        await self.unimplemented(request, context)
        yield  # pragma: no cover - unreachable, makes this an async generator

    async def _watch(
        self, context: _Context, build: Callable[[Credentials], Any | None]
    ) -> AsyncIterator[Any]:
        await _require_header(context)
        credentials = self._store.current
        first = build(credentials)
        if first is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the agent holds no X.509-SVID yet; retry shortly"
            )
        self._metrics.workload_api_streams.inc()
        try:
            last = first
            yield first
            while True:
                credentials = await self._store.wait_newer(credentials.generation)
                response = build(credentials)
                if response is None:
                    continue
                if response != last:
                    last = response
                    yield response
        finally:
            self._metrics.workload_api_streams.dec()


async def _require_header(context: _Context) -> None:
    metadata = dict(context.invocation_metadata() or ())
    if metadata.get(HEADER) != "true":
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"security header missing from request: the {HEADER!r} metadata must be 'true'",
        )
