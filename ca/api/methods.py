"""The RPC methods meshca serves, typed: full method names and (de)serializers shared by the
server's handlers and by clients (the SDS agent, tests, the load generator)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from ca.api import istio_ca_pb2, trust_bundle_pb2

CERTIFICATE_SERVICE = "istio.v1.auth.IstioCertificateService"
CREATE_CERTIFICATE = f"/{CERTIFICATE_SERVICE}/CreateCertificate"
BUNDLE_SERVICE = "meshca.v1.TrustBundleService"
WATCH_BUNDLE = f"/{BUNDLE_SERVICE}/WatchBundle"

CertificateRequest = istio_ca_pb2.IstioCertificateRequest
CertificateResponse = istio_ca_pb2.IstioCertificateResponse
WatchBundleRequest = trust_bundle_pb2.WatchBundleRequest
TrustBundleMessage = trust_bundle_pb2.TrustBundle


def create_certificate(
    channel: grpc.Channel,
) -> grpc.UnaryUnaryMultiCallable[CertificateRequest, CertificateResponse]:
    """A blocking client callable for ``CreateCertificate`` on ``channel``."""
    return channel.unary_unary(
        CREATE_CERTIFICATE,
        request_serializer=CertificateRequest.SerializeToString,
        response_deserializer=CertificateResponse.FromString,
    )


def watch_bundle(
    channel: grpc.Channel,
) -> grpc.UnaryStreamMultiCallable[WatchBundleRequest, TrustBundleMessage]:
    """A blocking client callable for the ``WatchBundle`` stream on ``channel``."""
    return channel.unary_stream(
        WATCH_BUNDLE,
        request_serializer=WatchBundleRequest.SerializeToString,
        response_deserializer=TrustBundleMessage.FromString,
    )


def create_certificate_aio(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryUnaryMultiCallable[CertificateRequest, CertificateResponse]:
    """An asyncio client callable for ``CreateCertificate``."""
    return channel.unary_unary(
        CREATE_CERTIFICATE,
        request_serializer=CertificateRequest.SerializeToString,
        response_deserializer=CertificateResponse.FromString,
    )


def watch_bundle_aio(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryStreamMultiCallable[WatchBundleRequest, TrustBundleMessage]:
    """An asyncio client callable for ``WatchBundle``."""
    return channel.unary_stream(
        WATCH_BUNDLE,
        request_serializer=WatchBundleRequest.SerializeToString,
        response_deserializer=TrustBundleMessage.FromString,
    )


def certificate_service_handler(
    create: Callable[[CertificateRequest, Any], Any],
) -> grpc.GenericRpcHandler[Any, Any]:
    """The ``CreateCertificate`` service answered by ``create(request, context)`` (a function
    or a coroutine function, for ``grpc.server`` or ``grpc.aio.server``)."""
    return grpc.method_handlers_generic_handler(
        CERTIFICATE_SERVICE,
        {
            "CreateCertificate": grpc.unary_unary_rpc_method_handler(
                create,
                request_deserializer=CertificateRequest.FromString,
                response_serializer=CertificateResponse.SerializeToString,
            )
        },
    )
