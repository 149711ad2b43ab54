"""Local verification of Kubernetes service-account JWTs (``--auth=jwt``).

The order of checks is what makes it safe:

1. the token must parse as a compact JWS (``token_malformed``);
2. its header ``alg`` must be in the allow-list of asymmetric algorithms *before* any key is
   looked at (``token_algorithm_refused``), which defeats ``alg: none`` and an HMAC signature
   made with the public key as the secret;
3. a key with the token's ``kid`` (or, for keys without one, any key) must verify the signature
   (``token_unknown_key``, ``token_bad_signature``); an unknown ``kid`` makes the key source
   refresh, at most once per refresh interval;
4. then the claims, read only from the verified payload: issuer, audience and required claims
   through PyJWT, and the lifetime (``exp``, ``nbf``, ``iat``) against the injected clock with
   the configured leeway;
5. finally ``sub`` and the ``kubernetes.io`` claims become the workload identity
   (:mod:`ca.core.sa_token`).

Legacy secret-based tokens (no ``exp``, no ``aud``) are refused unless allowed; when allowed,
their issuer may also be the fixed legacy issuer ``kubernetes/serviceaccount``, as the API server
itself accepts. Note that a local verifier cannot see a deleted secret or pod: a token stays
valid until it expires.

Verifying a signature takes tens of microseconds, so it runs inline on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import jwt
from jwt.exceptions import InvalidSubjectError
from spiffe import TrustDomain

from ca.auth.jwt_keys import ASYMMETRIC_ALGORITHMS, KeySet, KeySource, key_source_from_settings
from ca.auth.verified import VerifiedToken
from ca.core.errors import ConfigurationError, Unauthenticated, Unavailable
from ca.core.identity import parse_trust_domain
from ca.core.sa_token import (
    LEGACY_ISSUER,
    identity_from_claims,
    is_legacy_token,
    legacy_token_refused,
)

if TYPE_CHECKING:
    from ca.settings import Settings

#: Longer strings are not tokens an API server mints; refused before any parsing.
MAX_TOKEN_LENGTH = 16 * 1024
DEFAULT_LEEWAY = timedelta(seconds=30)

_PROJECTED_REQUIRED = ["exp", "iat", "iss", "sub", "aud"]
_LEGACY_REQUIRED = ["iss", "sub"]
_MAX_SHOWN = 80


def _utcnow() -> datetime:
    return datetime.now(UTC)


class JwtVerifier:
    """Verifies service-account JWTs with keys from a :class:`KeySource`; a
    :class:`ca.auth.verified.TokenVerifier`."""

    def __init__(
        self,
        keys: KeySource,
        trust_domain: TrustDomain,
        *,
        issuer: str,
        audiences: Sequence[str],
        algorithms: Sequence[str],
        leeway: timedelta = DEFAULT_LEEWAY,
        allow_legacy: bool = False,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if not algorithms or not set(algorithms) <= ASYMMETRIC_ALGORITHMS:
            raise ConfigurationError(
                "jwt_algorithms_invalid",
                "JWT verification needs asymmetric algorithms only: "
                + ", ".join(sorted(ASYMMETRIC_ALGORITHMS)),
            )
        if not audiences:
            raise ConfigurationError("jwt_audiences_missing", "at least one JWT audience needed")
        self._keys = keys
        self._trust_domain = trust_domain
        self._issuer = issuer
        self._audiences = list(audiences)
        self._algorithms = frozenset(algorithms)
        self._leeway = leeway
        self._allow_legacy = allow_legacy
        self._clock = clock

    @property
    def key_source(self) -> KeySource:
        """Where the keys come from (to ``start()`` it)."""
        return self._keys

    async def verify(self, token: str) -> VerifiedToken:
        """The identity and expiry of ``token``; :class:`Unauthenticated` when it is not
        acceptable, :class:`Unavailable` when no keys could ever be loaded."""
        header = _header(token)
        algorithm = self._algorithm(header)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("token_malformed", "token header kid is not a string")
        preview = _unverified_claims(token)
        keys = await self._current_keys()
        try:
            claims = self._verify(token, algorithm, kid, preview, keys)
        except Unauthenticated as exc:
            if exc.reason not in ("token_unknown_key", "token_bad_signature") or keys.knows(kid):
                raise
            fresh = await self._keys.refresh_if_stale()
            if fresh is None or fresh is keys:
                raise
            claims = self._verify(token, algorithm, kid, preview, fresh)
        legacy = is_legacy_token(claims)
        if legacy and not self._allow_legacy:
            raise legacy_token_refused()
        expires_at = self._check_lifetime(claims, legacy)
        identity = identity_from_claims(claims, self._trust_domain, allow_legacy=self._allow_legacy)
        return VerifiedToken(identity, expires_at)

    def _algorithm(self, header: Mapping[str, Any]) -> str:
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise Unauthenticated(
                "token_algorithm_refused",
                f"token algorithm {_shown(algorithm)} is not allowed (allowed: "
                f"{', '.join(sorted(self._algorithms))})",
            )
        return algorithm

    async def _current_keys(self) -> KeySet:
        keys = self._keys.keys
        if keys is None:
            keys = await self._keys.refresh_if_stale()
        if keys is None:
            raise Unavailable(
                "jwks_unavailable",
                f"no JWT verification keys could be loaded from {self._keys.description}"
                + (f": {self._keys.last_error}" if self._keys.last_error else ""),
            )
        return keys

    def _verify(
        self,
        token: str,
        algorithm: str,
        kid: str | None,
        preview: Mapping[str, Any],
        keys: KeySet,
    ) -> dict[str, Any]:
        """The verified payload, held to the rules of its kind (projected or legacy).

        ``preview`` (the unverified payload) only chooses the rules; a signature over a
        different payload fails, and a legacy token is refused later unless allowed.
        """
        legacy = is_legacy_token(preview)
        candidates = keys.candidates(kid, algorithm)
        if not candidates:
            named = f" with kid {_shown(kid)}" if kid is not None else ""
            raise Unauthenticated(
                "token_unknown_key",
                f"no verification key{named} from {self._keys.description} verifies "
                f"{algorithm} tokens",
            )
        issuers = [self._issuer, LEGACY_ISSUER] if legacy else self._issuer
        for candidate in candidates:
            try:
                return jwt.decode(
                    token,
                    candidate.key,
                    algorithms=[algorithm],
                    issuer=issuers,
                    audience=self._audiences if not legacy else None,
                    options={
                        "require": _LEGACY_REQUIRED if legacy else _PROJECTED_REQUIRED,
                        # The lifetime is checked against the injected clock afterwards.
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                        "verify_aud": not legacy,
                    },
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                # The signature verified (PyJWT checks it before any claim), so the
                # preview is the payload that was signed.
                raise self._claim_error(exc, preview) from None
        raise Unauthenticated(
            "token_bad_signature",
            f"token signature does not verify with the key(s) from {self._keys.description}",
        )

    def _claim_error(self, exc: jwt.PyJWTError, claims: Mapping[str, Any]) -> Unauthenticated:
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return Unauthenticated("token_missing_claim", f"token has no {exc.claim!r} claim")
        if isinstance(exc, jwt.InvalidIssuerError):
            expected = repr(self._issuer)
            if is_legacy_token(claims):
                expected += f" or {LEGACY_ISSUER!r}"
            return Unauthenticated(
                "token_wrong_issuer", f"token issuer {_shown(claims.get('iss'))} is not {expected}"
            )
        if isinstance(exc, jwt.InvalidAudienceError):
            wanted = ", ".join(self._audiences)
            return Unauthenticated(
                "token_wrong_audience",
                f"token audience {_shown(claims.get('aud'))} does not include "
                + (wanted if len(self._audiences) == 1 else f"any of {wanted}"),
            )
        if isinstance(exc, InvalidSubjectError):
            return Unauthenticated("token_bad_subject", "token subject is not a string")
        if isinstance(exc, jwt.InvalidAlgorithmError):
            return Unauthenticated("token_algorithm_refused", "token algorithm is not allowed")
        return Unauthenticated("token_malformed", f"token is malformed: {_pyjwt_message(exc)}")

    def _check_lifetime(self, claims: Mapping[str, Any], legacy: bool) -> datetime | None:
        """Check ``exp``, ``nbf`` and ``iat`` against the clock; return the expiry."""
        now = self._clock()
        expires_at = _time_claim(claims, "exp")
        not_before = _time_claim(claims, "nbf")
        issued_at = _time_claim(claims, "iat")
        if expires_at is None and not legacy:
            raise Unauthenticated("token_missing_claim", "token has no 'exp' claim")
        if expires_at is not None and expires_at <= now - self._leeway:
            raise Unauthenticated("token_expired", f"token expired at {_iso(expires_at)}")
        if not_before is not None and not_before > now + self._leeway:
            raise Unauthenticated(
                "token_not_yet_valid", f"token is not valid before {_iso(not_before)}"
            )
        if issued_at is not None and issued_at > now + self._leeway:
            raise Unauthenticated(
                "token_not_yet_valid", f"token is issued in the future, at {_iso(issued_at)}"
            )
        return expires_at


def _header(token: str) -> dict[str, Any]:
    if not isinstance(token, str) or not token:
        raise Unauthenticated("token_malformed", "token is empty")
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthenticated(
            "token_malformed", f"token is {len(token)} characters; at most {MAX_TOKEN_LENGTH}"
        )
    if not token.isascii():
        raise Unauthenticated("token_malformed", "token is not a JWT (non-ASCII characters)")
    if token.count(".") != 2:
        raise Unauthenticated("token_malformed", "token is not a JWT (header.payload.signature)")
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Unauthenticated(
            "token_malformed", f"token is malformed: {_pyjwt_message(exc)}"
        ) from None


def _unverified_claims(token: str) -> dict[str, Any]:
    """The payload without verification: only to choose the rules (legacy or projected) that
    the verified payload is then held to, and to describe claims that failed."""
    try:
        return jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise Unauthenticated(
            "token_malformed", f"token payload is malformed: {_pyjwt_message(exc)}"
        ) from None


def _time_claim(claims: Mapping[str, Any], name: str) -> datetime | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthenticated("token_malformed", f"token claim {name!r} is not a number")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise Unauthenticated("token_malformed", f"token claim {name!r} is out of range") from None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _pyjwt_message(exc: jwt.PyJWTError) -> str:
    # PyJWT's messages describe the structure, never the token itself; cut them short anyway.
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _shown(value: object) -> str:
    """``repr`` of a caller-controlled value, cut short."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def jwt_verifier_from_settings(
    settings: Settings,
    *,
    trust_domain: TrustDomain | None = None,
    keys: KeySource | None = None,
    clock: Callable[[], datetime] = _utcnow,
) -> JwtVerifier:
    """The verifier the settings describe, for ``trust_domain`` (default: the settings').

    The issuer is ``--jwt-issuer``, or else the ``--oidc-discovery`` URL (an OIDC issuer is the
    URL its discovery document lives under). The key source is not started: call
    ``await verifier.key_source.start()`` in the serving event loop.
    """
    issuer = settings.jwt_issuer or settings.oidc_discovery
    if not issuer:
        raise ConfigurationError(
            "jwt_issuer_missing",
            "--jwt-issuer is required to verify service-account tokens locally (the API "
            "server's --service-account-issuer, e.g. https://kubernetes.default.svc.cluster.local)",
        )
    return JwtVerifier(
        keys if keys is not None else key_source_from_settings(settings),
        trust_domain if trust_domain is not None else parse_trust_domain(settings.trust_domain),
        issuer=issuer,
        audiences=settings.jwt_audiences,
        algorithms=settings.jwt_algorithms,
        leeway=settings.jwt_leeway,
        allow_legacy=settings.allow_legacy_tokens,
        clock=clock,
    )
