"""Kubernetes service-account token claims and TokenReview results mapped to workload identities.

A service account's username is ``system:serviceaccount:<namespace>:<name>``; it is the ``sub``
of every service-account JWT and the ``username`` of a TokenReview status. Two kinds of JWT
exist:

* projected (bound) tokens, which expire, name an audience, and carry a ``kubernetes.io`` claim
  ``{"namespace": ..., "serviceaccount": {"name": ..., "uid": ...}, "pod": {"name": ..., "uid":
  ...}}`` (``pod`` is absent when the token is bound to a secret or a node, or to nothing);
* legacy secret-based tokens, which never expire, have no audience, and carry flat
  ``kubernetes.io/serviceaccount/...`` claims. They stay valid until their secret is deleted,
  which a local verifier cannot see, so they are refused unless explicitly allowed.

Every claim that names the namespace or service account must agree with ``sub``. This module
only interprets claims whose signature, issuer, audience and lifetime were already verified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from spiffe import TrustDomain

from ca.core.errors import InvalidRequest, Unauthenticated
from ca.core.identity import WorkloadIdentity

#: The claim of a projected token that names its namespace, service account and bound object.
PROJECTED_CLAIM = "kubernetes.io"
#: The flat claims of a legacy secret-based token.
LEGACY_NAMESPACE_CLAIM = "kubernetes.io/serviceaccount/namespace"
LEGACY_SERVICE_ACCOUNT_CLAIM = "kubernetes.io/serviceaccount/service-account.name"
#: The ``iss`` every legacy secret-based token carries, whatever the API server's issuer is.
LEGACY_ISSUER = "kubernetes/serviceaccount"
#: TokenReview ``status.user.extra`` keys naming the pod a token is bound to.
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"

_USERNAME_PREFIX = ("system", "serviceaccount")
_MAX_SHOWN = 80


def is_legacy_token(claims: Mapping[str, object]) -> bool:
    """Whether ``claims`` are those of a legacy secret-based token: no ``exp``, no
    ``kubernetes.io`` claim, and the flat legacy namespace claim."""
    return (
        "exp" not in claims and PROJECTED_CLAIM not in claims and LEGACY_NAMESPACE_CLAIM in claims
    )


def legacy_token_refused() -> Unauthenticated:
    """The error for a legacy token where they are not allowed."""
    return Unauthenticated(
        "token_legacy_refused",
        "legacy secret-based service-account tokens (no expiry, no audience) are not accepted; "
        "use a projected token, or set allow_legacy_tokens",
    )


def parse_service_account_username(username: object) -> tuple[str, str]:
    """Split ``system:serviceaccount:<namespace>:<name>`` into namespace and name.

    Raises :class:`Unauthenticated` (``token_bad_subject``) for anything else. The names are not
    validated here; :func:`identity_from_claims` and :func:`identity_from_username` do that.
    """
    if not isinstance(username, str):
        raise Unauthenticated("token_bad_subject", "token subject is not a string")
    parts = username.split(":")
    if len(parts) != 4 or tuple(parts[:2]) != _USERNAME_PREFIX or not parts[2] or not parts[3]:
        raise Unauthenticated(
            "token_bad_subject",
            f"token subject {_shown(username)} is not a Kubernetes service account "
            "(system:serviceaccount:<namespace>:<name>)",
        )
    return parts[2], parts[3]


def identity_from_claims(
    claims: Mapping[str, object], trust_domain: TrustDomain, *, allow_legacy: bool = False
) -> WorkloadIdentity:
    """The identity named by the verified claims of a service-account JWT.

    Raises :class:`Unauthenticated` with reason ``token_bad_subject``, ``token_claims_mismatch``,
    ``token_missing_claim``, ``token_malformed`` or ``token_legacy_refused``.
    """
    namespace, service_account = parse_service_account_username(claims.get("sub"))
    pod_name: str | None = None
    pod_uid: str | None = None
    if PROJECTED_CLAIM in claims:
        claimed_ns, claimed_sa, pod_name, pod_uid = _projected_claims(claims[PROJECTED_CLAIM])
    elif is_legacy_token(claims):
        if not allow_legacy:
            raise legacy_token_refused()
        claimed_ns = _string_claim(claims, LEGACY_NAMESPACE_CLAIM)
        claimed_sa = _string_claim(claims, LEGACY_SERVICE_ACCOUNT_CLAIM)
    else:
        raise Unauthenticated(
            "token_missing_claim",
            f"token has no {PROJECTED_CLAIM!r} claim and is not a legacy service-account token",
        )
    if (claimed_ns, claimed_sa) != (namespace, service_account):
        raise Unauthenticated(
            "token_claims_mismatch",
            f"token subject names namespace {_shown(namespace)}, service account "
            f"{_shown(service_account)} but its Kubernetes claims name namespace "
            f"{_shown(claimed_ns)}, service account {_shown(claimed_sa)}",
        )
    return _identity(trust_domain, namespace, service_account, pod_name, pod_uid)


def identity_from_username(
    username: str, extra: Mapping[str, Sequence[str]], trust_domain: TrustDomain
) -> WorkloadIdentity:
    """The identity of an authenticated TokenReview status: ``user.username`` and ``user.extra``.

    The pod name and UID come from the ``authentication.kubernetes.io/pod-name`` and
    ``authentication.kubernetes.io/pod-uid`` extras when the token is bound to a pod.
    """
    namespace, service_account = parse_service_account_username(username)
    return _identity(
        trust_domain,
        namespace,
        service_account,
        _first(extra.get(POD_NAME_EXTRA)),
        _first(extra.get(POD_UID_EXTRA)),
    )


def _projected_claims(value: object) -> tuple[str, str, str | None, str | None]:
    """Namespace, service account, pod name and pod UID of a ``kubernetes.io`` claim."""
    if not isinstance(value, Mapping):
        raise _malformed(f"token claim {PROJECTED_CLAIM!r} is not an object")
    namespace = _string_claim(value, "namespace", PROJECTED_CLAIM)
    service_account = value.get("serviceaccount")
    if not isinstance(service_account, Mapping):
        raise Unauthenticated(
            "token_missing_claim",
            f"token claim {PROJECTED_CLAIM!r} has no serviceaccount object",
        )
    name = _string_claim(service_account, "name", f"{PROJECTED_CLAIM}.serviceaccount")
    pod = value.get("pod")
    if pod is None:
        return namespace, name, None, None
    if not isinstance(pod, Mapping):
        raise _malformed(f"token claim {PROJECTED_CLAIM}.pod is not an object")
    pod_name = _optional_string(pod, "name", f"{PROJECTED_CLAIM}.pod")
    pod_uid = _optional_string(pod, "uid", f"{PROJECTED_CLAIM}.pod")
    return namespace, name, pod_name, pod_uid


def _string_claim(claims: Mapping[str, object], key: str, parent: str | None = None) -> str:
    where = f"{parent}.{key}" if parent else key
    value = claims.get(key)
    if value is None:
        raise Unauthenticated("token_missing_claim", f"token has no {where!r} claim")
    if not isinstance(value, str):
        raise _malformed(f"token claim {where!r} is not a string")
    return value


def _optional_string(claims: Mapping[str, object], key: str, parent: str) -> str | None:
    value = claims.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _malformed(f"token claim '{parent}.{key}' is not a string")


def _identity(
    trust_domain: TrustDomain,
    namespace: str,
    service_account: str,
    pod_name: str | None,
    pod_uid: str | None,
) -> WorkloadIdentity:
    try:
        return WorkloadIdentity.for_service_account(
            trust_domain, namespace, service_account, pod_name=pod_name, pod_uid=pod_uid
        )
    except InvalidRequest as exc:
        raise Unauthenticated("token_bad_subject", f"token subject: {exc.message}") from exc


def _first(values: Sequence[str] | str | None) -> str | None:
    """The first value of a TokenReview extra (a list of strings); a bare string is itself."""
    if isinstance(values, str):
        return values or None
    if not values or not isinstance(values[0], str):
        return None
    return values[0] or None


def _malformed(message: str) -> Unauthenticated:
    return Unauthenticated("token_malformed", message)


def _shown(value: object) -> str:
    """``repr`` of a claim value, cut short: claims are caller-controlled."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."
