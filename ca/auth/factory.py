"""The token verifier ``--auth`` asks for, built from :class:`Settings`: local JWT verification
(keys from PEM files, a JWKS file or URL, or OIDC discovery) or Kubernetes TokenReview, behind
a cache of verified tokens."""

from __future__ import annotations

import functools
from datetime import timedelta

from spiffe import TrustDomain

from ca.auth.jwt_keys import key_source_from_settings
from ca.auth.jwt_verifier import jwt_verifier_from_settings
from ca.auth.kubeconfig import load_cluster_access
from ca.auth.token_cache import CachingVerifier
from ca.auth.tokenreview import TokenReviewVerifier
from ca.auth.verified import TokenVerifier, VerifierFactory
from ca.settings import Settings

CACHE_MAX_AGE = timedelta(minutes=5)


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
    keys = key_source_from_settings(settings)
    verifier = jwt_verifier_from_settings(settings, trust_domain=trust_domain, keys=keys)
    await keys.start()
    # Bounded age: a token signed by a key since removed from the key set stops being honoured
    # from the cache within minutes, even if the token itself lives for a year.
    return CachingVerifier(verifier, settings.token_cache_size, max_age=CACHE_MAX_AGE)
