"""Who is calling: a bearer token in the call's metadata, or (on the mTLS port) a client
certificate this CA issued. Then admission: the deny list and the rate limits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from spiffe import TrustDomain

from ca.auth.verified import TokenVerifier
from ca.core.deny_list import DenyList
from ca.core.errors import Unauthenticated
from ca.core.identity import WorkloadIdentity
from ca.core.peer_svid import identity_from_peer_certificate
from ca.core.rate_limit import RateLimiter
from ca.issuance import Clock

_BEARER = "bearer "


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller and how it proved who it is (``token`` or ``certificate``)."""

    identity: WorkloadIdentity
    method: str

    @property
    def rate_key(self) -> str:
        """Rate limits are per pod when the token names one, else per identity."""
        return (
            f"pod {self.identity.pod_uid}"
            if self.identity.pod_uid
            else str(self.identity.spiffe_id)
        )


def bearer_token(metadata: Mapping[str, str]) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, if any."""
    value = metadata.get("authorization")
    if value is None:
        return None
    if not value.lower().startswith(_BEARER) or not value[len(_BEARER) :].strip():
        raise Unauthenticated(
            "token_malformed", "the authorization header must be `Bearer <token>`"
        )
    return value[len(_BEARER) :].strip()


class CallerAuthenticator:
    """Authenticates a call by its token, or else by its verified client certificate."""

    def __init__(
        self,
        verifier: TokenVerifier,
        issuers: Callable[[], Sequence[x509.Certificate]],
        trust_domain: TrustDomain,
        clock: Clock,
    ) -> None:
        self._verifier = verifier
        self._issuers = issuers
        self._trust_domain = trust_domain
        self._clock = clock

    async def authenticate(
        self, metadata: Mapping[str, str], auth_context: Mapping[str, Iterable[bytes]]
    ) -> Caller:
        token = bearer_token(metadata)
        if token is not None:
            verified = await self._verifier.verify(token)
            verified.identity.require_trust_domain(self._trust_domain)
            return Caller(verified.identity, "token")
        peer_cert = next(iter(auth_context.get("x509_pem_cert", ())), None)
        if peer_cert:
            identity = identity_from_peer_certificate(
                peer_cert, self._issuers(), self._trust_domain, self._clock()
            )
            return Caller(identity, "certificate")
        raise Unauthenticated(
            "token_missing",
            "no credentials: send `authorization: Bearer <service-account token>`, "
            "or renew over the mTLS port with a certificate from this CA",
        )


class Admission:
    """The deny list, then the per-caller rate limit (the global one is checked before
    authentication, so floods are cheap to refuse)."""

    def __init__(
        self,
        deny_list: DenyList,
        limiter: RateLimiter,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._deny_list = deny_list
        self._limiter = limiter
        self._monotonic = monotonic

    def admit_global(self) -> None:
        self._limiter.admit_global(self._monotonic())

    def admit(self, caller: Caller) -> None:
        self._deny_list.check(caller.identity)
        self._limiter.admit(caller.rate_key, self._monotonic())


def request_metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    """The call's text metadata (binary ``-bin`` values are left out)."""
    return {
        key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)
    }
