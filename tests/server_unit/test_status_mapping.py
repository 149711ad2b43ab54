"""meshca's errors become the gRPC status codes its documentation promises: callers (and
istio-agent's retry logic) act on the code, so a refusal must never surface as a server fault
or the other way round; and the status message carries the reason and the request id."""

from __future__ import annotations

import grpc
import pytest

from ca.core import errors
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
from ca.server.status import status_code, status_message

DOCUMENTED: dict[type[MeshcaError], grpc.StatusCode] = {
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    ConfigurationError: grpc.StatusCode.UNAVAILABLE,
    InternalError: grpc.StatusCode.INTERNAL,
}


@pytest.mark.parametrize(
    ("error_type", "code"),
    [pytest.param(t, c, id=t.__name__) for t, c in DOCUMENTED.items()],
)
def test_each_error_type_maps_to_its_documented_code(
    error_type: type[MeshcaError], code: grpc.StatusCode
) -> None:
    assert status_code(error_type("some_reason", "some message")) is code


def test_every_error_type_meshca_defines_has_a_documented_code() -> None:
    """A new error type must be given a code on purpose (and added above)."""
    defined = {
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, MeshcaError) and value is not MeshcaError
    }
    assert defined == set(DOCUMENTED)


class TokenExpired(Unauthenticated):
    pass


class QuotaExceeded(RateLimited):
    pass


class KekMissing(ConfigurationError):
    pass


class DeepInvalid(TokenExpired, InvalidRequest):
    """Inherits from two mapped types: the nearer one in the MRO wins."""


@pytest.mark.parametrize(
    ("error_type", "code"),
    [
        pytest.param(TokenExpired, grpc.StatusCode.UNAUTHENTICATED, id="unauthenticated-sub"),
        pytest.param(QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED, id="rate-limited-sub"),
        pytest.param(KekMissing, grpc.StatusCode.UNAVAILABLE, id="configuration-sub"),
        pytest.param(DeepInvalid, grpc.StatusCode.UNAUTHENTICATED, id="nearest-base-wins"),
    ],
)
def test_a_subclass_inherits_the_code_of_its_mapped_base(
    error_type: type[MeshcaError], code: grpc.StatusCode
) -> None:
    assert status_code(error_type("r", "m")) is code


class Unmapped(MeshcaError):
    pass


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(MeshcaError("r", "m"), id="base"),
        pytest.param(Unmapped("r", "m"), id="unmapped-subclass"),
    ],
)
def test_unmapped_errors_are_internal(error: MeshcaError) -> None:
    assert status_code(error) is grpc.StatusCode.INTERNAL


@pytest.mark.parametrize(
    ("error", "request_id", "expected"),
    [
        pytest.param(
            PermissionDenied("identity_denied", "spiffe://cluster.local/ns/a/sa/b is denied"),
            "4f1c9a",
            "identity_denied: spiffe://cluster.local/ns/a/sa/b is denied (request id 4f1c9a)",
            id="permission-denied",
        ),
        pytest.param(
            RateLimited("rate_limited_global", "retry in 0.5s"),
            "r-2",
            "rate_limited_global: retry in 0.5s (request id r-2)",
            id="rate-limited",
        ),
    ],
)
def test_status_message_names_the_reason_the_message_and_the_request_id(
    error: MeshcaError, request_id: str, expected: str
) -> None:
    assert status_message(error, request_id) == expected
