"""What every token verifier returns, and the interface the gRPC service calls."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from spiffe import TrustDomain

from ca.core.identity import WorkloadIdentity


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token that passed verification: whose it is and until when it may be trusted."""

    identity: WorkloadIdentity
    #: When the token stops being valid (``exp``); ``None`` when it never expires (legacy).
    expires_at: datetime | None


class TokenVerifier(Protocol):
    """Turns a bearer token into the caller's workload identity.

    Raises :class:`ca.core.errors.Unauthenticated` (with a stable ``reason``) for a token that is
    not acceptable, and :class:`ca.core.errors.Unavailable` when the keys or the Kubernetes API
    cannot be reached. Messages never contain the token.
    """

    async def verify(self, token: str) -> VerifiedToken: ...


#: Builds the verifier for the CA's trust domain, in the event loop that will use it.
VerifierFactory = Callable[[TrustDomain], Awaitable[TokenVerifier]]
