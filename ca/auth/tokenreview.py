"""Service-account tokens verified by the Kubernetes API server (TokenReview).

The CA asks ``POST /apis/authentication.k8s.io/v1/tokenreviews`` about each token, with the
configured audiences, and accepts only a positive answer for one of them about a service
account. Unlike local JWT verification this notices tokens revoked by deleting their pod or
service account, at the cost of a round trip, so successes are cached briefly (by the SHA-256
of the token, never the token itself).

Failing closed: anything but an explicit ``authenticated: true`` with a confirmed audience, the
``system:serviceaccounts`` group and a ``system:serviceaccount:<ns>:<sa>`` username is refused.

``expires_at`` of the result is a trust horizon, not what the API server said (TokenReview does
not say when a token expires): the moment the review stops being reused, ``now + cache_ttl``,
brought forward to the token's ``exp`` when the token is a JWT carrying one. ``exp`` is read
without checking the signature; the API server has just verified the token, and the value can
only shorten the horizon.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx
from spiffe import TrustDomain

from ca.auth.kubeconfig import (
    ClusterAccess,
    async_client,
    load_cluster_access,
    request_extensions,
)
from ca.auth.verified import VerifiedToken
from ca.core.errors import ConfigurationError, Unauthenticated, Unavailable
from ca.core.identity import WorkloadIdentity, parse_trust_domain
from ca.core.sa_token import identity_from_username

if TYPE_CHECKING:
    from ca.settings import Settings

log = logging.getLogger(__name__)

TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
API_VERSION = "authentication.k8s.io/v1"
SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"
#: Answers worth asking again (after a short backoff).
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_RBAC_HINT = (
    "grant the CA's identity `create` on `tokenreviews` in API group `authentication.k8s.io` "
    "(for example by binding the ClusterRole system:auth-delegator)"
)

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TokenReviewVerifier:
    """A :class:`~ca.auth.verified.TokenVerifier` asking the API server (see the module doc).

    Use it within one event loop and close it with :meth:`aclose` (or ``async with``).
    """

    def __init__(
        self,
        access: ClusterAccess,
        *,
        audiences: Sequence[str],
        trust_domain: TrustDomain,
        cache_ttl: timedelta = timedelta(seconds=10),
        cache_size: int = 10_000,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        clock: Clock = _utc_now,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """``retries`` extra attempts follow a transient failure, after ``backoff`` seconds,
        doubling up to ``max_backoff``. ``cache_ttl`` zero or ``cache_size`` zero: no caching."""
        if not audiences:
            raise ConfigurationError(
                "tokenreview_no_audience",
                "TokenReview needs at least one audience; without one the API server would "
                "accept tokens meant for itself",
            )
        self.access = access
        self.audiences = tuple(audiences)
        self.trust_domain = trust_domain
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._clock = clock
        self._sleep = sleep
        self._cache: OrderedDict[bytes, VerifiedToken] = OrderedDict()
        self._client = async_client(access, timeout=timeout)  # loads TLS material now

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> TokenReviewVerifier:
        """From ``kubeconfig`` (else the in-cluster config), ``jwt_audiences``, ``trust_domain``,
        ``tokenreview_cache_ttl`` and ``token_cache_size``."""
        return cls(
            load_cluster_access(settings.kubeconfig),
            audiences=settings.jwt_audiences,
            trust_domain=parse_trust_domain(settings.trust_domain),
            cache_ttl=settings.tokenreview_cache_ttl,
            cache_size=settings.token_cache_size,
            **overrides,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> TokenReviewVerifier:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def verify(self, token: str) -> VerifiedToken:
        if not token:
            raise Unauthenticated("token_rejected", "the bearer token is empty")
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        cached = self._cached(key)
        if cached is not None:
            return cached
        status = await self._review(token)
        now = self._clock()
        verified = VerifiedToken(
            self._identity(status, token), _horizon(token, now, self.cache_ttl)
        )
        if self.cache_size > 0 and verified.expires_at is not None and verified.expires_at > now:
            self._cache[key] = verified
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return verified

    def _cached(self, key: bytes) -> VerifiedToken | None:
        hit = self._cache.get(key)
        if hit is None:
            return None
        if hit.expires_at is None or self._clock() >= hit.expires_at:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return hit

    # --- the request ---

    async def _review(self, token: str) -> dict[str, Any]:
        """The ``status`` of the API server's TokenReview of ``token``."""
        body = {
            "apiVersion": API_VERSION,
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": list(self.audiences)},
        }
        response = await self._post(body)
        server = self.access.server
        if response.status_code in (401, 403):
            if response.status_code == 401:
                problem = f"rejected the CA's own credentials ({self.access.source}); fix them, and"
            else:
                problem = "refused the CA's TokenReview;"
            raise Unavailable(
                "tokenreview_forbidden",
                f"the Kubernetes API server at {server} {problem} {_RBAC_HINT}",
            )
        if response.status_code not in (200, 201):
            raise Unavailable(
                "tokenreview_bad_response",
                f"the Kubernetes API server at {server} answered the TokenReview with HTTP "
                f"{response.status_code}{_status_reason(response)}",
            )
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if (
            not isinstance(doc, dict)
            or doc.get("kind") != "TokenReview"
            or doc.get("apiVersion") != API_VERSION
            or not isinstance(doc.get("status"), dict)
        ):
            raise _bad_response(server, "it is not a TokenReview with a status")
        status: dict[str, Any] = doc["status"]
        return status

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        """POST with retries of transient failures; raise :class:`Unavailable` when out of tries."""
        server = self.access.server
        attempts = self.retries + 1
        delay = self.backoff
        problem = ""
        for attempt in range(1, attempts + 1):
            try:
                response = await self._client.post(
                    TOKENREVIEW_PATH, json=body, extensions=request_extensions(self.access)
                )
            except ConfigurationError as exc:  # the CA's token file went missing
                raise Unavailable("tokenreview_unavailable", exc.message) from exc
            except httpx.TimeoutException:
                problem = f"no answer within {self.timeout:g}s"
            except httpx.TransportError as exc:
                if _tls_verification_failed(exc):
                    raise Unavailable(
                        "tokenreview_unavailable",
                        f"TLS verification of the Kubernetes API server at {server} failed "
                        f"({exc}); check the CA bundle of {self.access.source}",
                    ) from exc
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if response.status_code not in TRANSIENT_STATUS:
                    return response
                problem = f"HTTP {response.status_code}{_status_reason(response)}"
            if attempt < attempts:
                log.warning(
                    "TokenReview attempt %d/%d at %s failed (%s); retrying in %gs",
                    attempt,
                    attempts,
                    server,
                    problem,
                    delay,
                )
                await self._sleep(delay)
                delay = min(delay * 2, self.max_backoff)
        raise Unavailable(
            "tokenreview_unavailable",
            f"the Kubernetes API server at {server} could not review the token "
            f"({attempts} attempts; last: {problem})",
        )

    # --- the answer ---

    def _identity(self, status: dict[str, Any], token: str) -> WorkloadIdentity:
        server = self.access.server
        if status.get("authenticated") is not True:
            error = status.get("error")
            error_text = error if isinstance(error, str) else ""
            # The text may quote the token (webhooks do as they please): logged redacted, and
            # never returned to the caller.
            log.info(
                "the Kubernetes API server did not authenticate a token: %s",
                error_text.replace(token, "<token>")[:500] or "(no error given)",
            )
            if "is invalid for the target audiences" in error_text:
                raise Unauthenticated("token_wrong_audience", self._audience_message())
            raise Unauthenticated(
                "token_rejected", "the Kubernetes API server did not authenticate the token"
            )
        audiences = status.get("audiences")
        if audiences is None or audiences == []:
            log.error(
                "the Kubernetes API server at %s authenticated a token without confirming its "
                "audience; it ignores spec.audiences (or a webhook does), so tokens are refused",
                server,
            )
            raise Unauthenticated(
                "token_wrong_audience",
                "the Kubernetes API server did not confirm the token's audience",
            )
        if not _strings(audiences):
            raise _bad_response(server, "status.audiences is not a list of strings")
        if not set(audiences) & set(self.audiences):
            raise Unauthenticated("token_wrong_audience", self._audience_message())
        user = status.get("user")
        if not isinstance(user, dict):
            raise _bad_response(server, "status.user is missing")
        username = user.get("username")
        groups = user.get("groups", [])
        extra = user.get("extra") or {}
        if not isinstance(username, str) or not _strings(groups):
            raise _bad_response(server, "status.user has no username or malformed groups")
        if not isinstance(extra, dict) or not all(_strings(v) for v in extra.values()):
            raise _bad_response(server, "status.user.extra is not a map of string lists")
        if SERVICE_ACCOUNTS_GROUP not in groups:
            raise Unauthenticated(
                "token_not_service_account",
                f"the token authenticates {username!r}, which is not a Kubernetes service account",
            )
        return identity_from_username(username, extra, self.trust_domain)

    def _audience_message(self) -> str:
        return f"the token is not meant for audience {' or '.join(self.audiences)}"


def _horizon(token: str, now: datetime, ttl: timedelta) -> datetime:
    """Until when a review of ``token`` is relied on (see the module doc)."""
    horizon = now + ttl
    exp = _unverified_expiry(token)
    return min(horizon, exp) if exp is not None else horizon


def _unverified_expiry(token: str) -> datetime | None:
    """The ``exp`` claim of a JWT, signature not checked; ``None`` when there is none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            return None
        return datetime.fromtimestamp(exp, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _status_reason(response: httpx.Response) -> str:
    """`` (Reason)`` from a Kubernetes ``Status`` body; its message is not repeated."""
    try:
        doc = response.json()
    except ValueError:
        return ""
    reason = doc.get("reason") if isinstance(doc, dict) else None
    if isinstance(reason, str) and reason.isalnum():
        return f" ({reason})"
    return ""


def _bad_response(server: str, what: str) -> Unavailable:
    return Unavailable(
        "tokenreview_bad_response",
        f"the Kubernetes API server at {server} sent a malformed TokenReview answer: {what}",
    )


def _tls_verification_failed(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
