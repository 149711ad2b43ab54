"""The token verifier ``--auth`` asks for, built from :class:`Settings`: local JWT verification
(keys from PEM files, a JWKS file or URL, or OIDC discovery) or Kubernetes TokenReview, behind
a cache of verified tokens."""

from __future__ import annotations

import functools

from spiffe import TrustDomain

from ca.auth.jwt_keys import key_source_from_settings
from ca.auth.jwt_verifier import JwtVerifier
from ca.auth.kubeconfig import load_cluster_access
from ca.auth.token_cache import CachingVerifier
from ca.auth.tokenreview import TokenReviewVerifier
from ca.auth.verified import TokenVerifier, VerifierFactory
from ca.core.errors import ConfigurationError
from ca.settings import Settings


def verifier_factory(settings: Settings) -> VerifierFactory:
    """A picklable factory (each worker process builds its own verifier) for ``settings``."""
    return functools.partial(build_verifier, settings)


async def build_verifier(settings: Settings, trust_domain: TrustDomain) -> TokenVerifier:
    """Build and start the verifier: the key set is loaded before the server takes calls."""
    if settings.auth == "tokenreview":
        # TokenReview results are cached by the verifier itself, for tokenreview_cache_ttl.
        return TokenReviewVerifier(
            load_cluster_access(settings.kubeconfig),
            audiences=settings.jwt_audiences,
            trust_domain=trust_domain,
            cache_ttl=settings.tokenreview_cache_ttl,
            cache_size=settings.token_cache_size,
        )
    if not settings.jwt_issuer:
        raise ConfigurationError(
            "jwt_issuer_missing",
            "--jwt-issuer is required with --auth jwt (a cluster's service-account issuer, e.g. "
            "https://kubernetes.default.svc.cluster.local)",
        )
    keys = key_source_from_settings(settings)
    await keys.start()
    verifier = JwtVerifier(
        keys,
        trust_domain,
        issuer=settings.jwt_issuer,
        audiences=settings.jwt_audiences,
        algorithms=settings.jwt_algorithms,
        leeway=settings.jwt_leeway,
        allow_legacy=settings.allow_legacy_tokens,
    )
    return CachingVerifier(verifier, settings.token_cache_size)
