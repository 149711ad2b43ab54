"""The agent reads the CA's gRPC status precisely (the one place codes become errors): a refused
token must be told from an unreachable CA, or the mTLS fallback and failover go wrong."""

from __future__ import annotations

import grpc
import pytest

from ca.core.errors import (
    InternalError,
    InvalidRequest,
    MeshcaError,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from sds.ca_client import error_from_rpc


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequest),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, RateLimited),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Unavailable),
        (grpc.StatusCode.INTERNAL, InternalError),
    ],
)
def test_asyncio_call_errors_keep_their_status_and_details(
    code: grpc.StatusCode, expected: type[MeshcaError]
) -> None:
    error = grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="token_expired: token expired"
    )
    mapped = error_from_rpc(error, "ca:15012")
    assert type(mapped) is expected
    assert mapped.message == "CA ca:15012: token_expired: token expired"


def test_no_details_names_the_code() -> None:
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata()
    )
    assert error_from_rpc(error, "ca:15012").message == "CA ca:15012: UNAVAILABLE"
