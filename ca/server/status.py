"""The one place meshca's error types become gRPC status codes."""

from __future__ import annotations

import grpc

from ca.core.errors import (
    ConfigurationError,
    FailedPrecondition,
    InternalError,
    InvalidRequest,
    MeshcaError,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)

STATUS_CODES: dict[type[MeshcaError], grpc.StatusCode] = {
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    # A CA that cannot sign (expired, no key) is a server-side condition, not the caller's.
    ConfigurationError: grpc.StatusCode.UNAVAILABLE,
    InternalError: grpc.StatusCode.INTERNAL,
}


def status_code(error: MeshcaError) -> grpc.StatusCode:
    """The gRPC status for ``error`` (INTERNAL for anything unmapped)."""
    for kind in type(error).__mro__:
        code = STATUS_CODES.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def status_message(error: MeshcaError, request_id: str) -> str:
    """What the caller reads: the reason code, the message, and the request id to quote."""
    return f"{error.reason}: {error.message} (request id {request_id})"
