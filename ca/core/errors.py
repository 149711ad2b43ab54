"""The few named exception types meshca raises.

Each carries a stable machine-readable ``reason`` (recorded in the ledger, counted in metrics)
and a human message that never contains a token or key material. Transport adapters map the
types to protocol status codes in exactly one place (gRPC: ``ca.server.status``; CLI:
``ca.cli.main``).
"""

from __future__ import annotations


class MeshcaError(Exception):
    """Base of every error meshca raises on purpose."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class InvalidRequest(MeshcaError):
    """The request is malformed or breaks policy (bad CSR, weak key, TTL over maximum)."""


class PermissionDenied(MeshcaError):
    """The caller asked for an identity that is not its own."""


class Unauthenticated(MeshcaError):
    """The caller's credentials are missing, invalid or expired."""


class RateLimited(MeshcaError):
    """The caller (or the CA as a whole) is over its request budget."""


class FailedPrecondition(MeshcaError):
    """The CA's state does not allow the operation now (retiring a root whose certificates are
    still in use, revoking the authority that signs)."""


class Unavailable(MeshcaError):
    """A dependency (the database) is down; nothing was issued."""


class ConfigurationError(MeshcaError):
    """The CA is not set up for the operation (not initialised, wrong KEK, bad CA material)."""


class InternalError(MeshcaError):
    """A bug or broken invariant; the request failed closed."""
