"""Service-account claims and TokenReview usernames mapped to workload identities."""

from __future__ import annotations

from typing import Any

import pytest

from ca.core.errors import Unauthenticated
from ca.core.sa_token import (
    identity_from_claims,
    identity_from_username,
    is_legacy_token,
    parse_service_account_username,
)
from tests.auth.jwt_helpers import TRUST_DOMAIN, legacy_claims, projected_claims


def test_projected_claims_name_the_service_account_and_the_pod() -> None:
    identity = identity_from_claims(projected_claims("payments", "api"), TRUST_DOMAIN)

    assert str(identity.spiffe_id) == "spiffe://cluster.local/ns/payments/sa/api"
    assert (identity.namespace, identity.service_account) == ("payments", "api")
    assert identity.pod_name == "api-7d9f"
    assert identity.pod_uid == "0b6f9f0e-1f3c-4d8e-9a55-2c1c5a8d7e11"


@pytest.mark.parametrize(
    "binding",
    [
        pytest.param(None, id="unbound"),
        pytest.param({"secret": {"name": "s", "uid": "1"}}, id="secret-bound"),
        pytest.param({"node": {"name": "n1", "uid": "2"}}, id="node-bound"),
    ],
)
def test_tokens_bound_to_no_pod_have_no_pod_facts(binding: dict[str, Any] | None) -> None:
    claims = projected_claims(pod=None)
    claims["kubernetes.io"].update(binding or {})

    identity = identity_from_claims(claims, TRUST_DOMAIN)

    assert str(identity.spiffe_id) == "spiffe://cluster.local/ns/payments/sa/api"
    assert (identity.pod_name, identity.pod_uid) == (None, None)


@pytest.mark.parametrize(
    "subject",
    [
        pytest.param("system:serviceaccount:default", id="three-parts"),
        pytest.param("system:serviceaccount:a:b:c", id="five-parts"),
        pytest.param("system:serviceaccount::api", id="empty-namespace"),
        pytest.param("system:serviceaccount:default:", id="empty-name"),
        pytest.param("system:node:default:api", id="not-a-service-account"),
        pytest.param("admin", id="user"),
        pytest.param("", id="empty"),
        pytest.param(42, id="number"),
        pytest.param(None, id="missing"),
    ],
)
def test_a_subject_that_is_not_a_service_account_is_refused(subject: object) -> None:
    claims = projected_claims()
    claims["sub"] = subject

    with pytest.raises(Unauthenticated) as caught:
        identity_from_claims(claims, TRUST_DOMAIN)

    assert caught.value.reason == "token_bad_subject"


@pytest.mark.parametrize(
    ("namespace", "service_account", "named"),
    [
        pytest.param("Payments", "api", "namespace", id="uppercase-namespace"),
        pytest.param("pay.ments", "api", "namespace", id="dotted-namespace"),
        pytest.param("n" * 64, "api", "namespace", id="long-namespace"),
        pytest.param("payments", "api_v1", "service account", id="underscore-name"),
        pytest.param("payments", "-api", "service account", id="leading-dash"),
    ],
)
def test_invalid_kubernetes_names_are_a_bad_subject(
    namespace: str, service_account: str, named: str
) -> None:
    claims = projected_claims(namespace, service_account)

    with pytest.raises(Unauthenticated) as caught:
        identity_from_claims(claims, TRUST_DOMAIN)

    assert caught.value.reason == "token_bad_subject"
    assert named in caught.value.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("namespace", "other", id="namespace"),
        pytest.param("serviceaccount", {"name": "admin", "uid": "1"}, id="service-account"),
    ],
)
def test_kubernetes_claims_must_agree_with_the_subject(field: str, value: object) -> None:
    claims = projected_claims("payments", "api")
    claims["kubernetes.io"][field] = value

    with pytest.raises(Unauthenticated) as caught:
        identity_from_claims(claims, TRUST_DOMAIN)

    assert caught.value.reason == "token_claims_mismatch"
    assert "'payments'" in caught.value.message


@pytest.mark.parametrize(
    ("k8s", "reason"),
    [
        pytest.param("payments", "token_malformed", id="not-an-object"),
        pytest.param(
            {"namespace": 7, "serviceaccount": {"name": "api"}},
            "token_malformed",
            id="namespace-not-string",
        ),
        pytest.param({"serviceaccount": {"name": "api"}}, "token_missing_claim", id="no-namespace"),
        pytest.param({"namespace": "payments"}, "token_missing_claim", id="no-serviceaccount"),
        pytest.param(
            {"namespace": "payments", "serviceaccount": {}},
            "token_missing_claim",
            id="no-serviceaccount-name",
        ),
        pytest.param(
            {"namespace": "payments", "serviceaccount": {"name": "api"}, "pod": "x"},
            "token_malformed",
            id="pod-not-object",
        ),
        pytest.param(
            {"namespace": "payments", "serviceaccount": {"name": "api"}, "pod": {"name": 1}},
            "token_malformed",
            id="pod-name-not-string",
        ),
    ],
)
def test_malformed_kubernetes_claims_are_refused(k8s: object, reason: str) -> None:
    claims = projected_claims("payments", "api")
    claims["kubernetes.io"] = k8s

    with pytest.raises(Unauthenticated) as caught:
        identity_from_claims(claims, TRUST_DOMAIN)

    assert caught.value.reason == reason


def test_claims_of_neither_kind_are_refused() -> None:
    claims = projected_claims()
    del claims["kubernetes.io"]

    with pytest.raises(Unauthenticated) as caught:
        identity_from_claims(claims, TRUST_DOMAIN)

    assert caught.value.reason == "token_missing_claim"


def test_legacy_claims_are_refused_unless_allowed() -> None:
    with pytest.raises(Unauthenticated) as caught:
        identity_from_claims(legacy_claims(), TRUST_DOMAIN)
    assert caught.value.reason == "token_legacy_refused"

    identity = identity_from_claims(legacy_claims(), TRUST_DOMAIN, allow_legacy=True)
    assert str(identity.spiffe_id) == "spiffe://cluster.local/ns/default/sa/vault-auth"
    assert (identity.pod_name, identity.pod_uid) == (None, None)


@pytest.mark.parametrize(
    ("claim", "value", "reason"),
    [
        pytest.param(
            "kubernetes.io/serviceaccount/namespace",
            "kube-system",
            "token_claims_mismatch",
            id="namespace",
        ),
        pytest.param(
            "kubernetes.io/serviceaccount/service-account.name",
            "admin",
            "token_claims_mismatch",
            id="service-account",
        ),
        pytest.param(
            "kubernetes.io/serviceaccount/service-account.name",
            None,
            "token_missing_claim",
            id="no-service-account",
        ),
    ],
)
def test_legacy_claims_must_agree_with_the_subject(claim: str, value: object, reason: str) -> None:
    claims = legacy_claims()
    if value is None:
        del claims[claim]
    else:
        claims[claim] = value

    with pytest.raises(Unauthenticated) as caught:
        identity_from_claims(claims, TRUST_DOMAIN, allow_legacy=True)

    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("claims", "legacy"),
    [
        pytest.param(legacy_claims(), True, id="legacy"),
        pytest.param(projected_claims(), False, id="projected"),
        pytest.param({**legacy_claims(), "exp": 1}, False, id="legacy-with-exp"),
        pytest.param({**legacy_claims(), "kubernetes.io": {}}, False, id="both"),
        pytest.param({"sub": "system:serviceaccount:a:b"}, False, id="bare"),
    ],
)
def test_which_claims_are_legacy(claims: dict[str, Any], legacy: bool) -> None:
    assert is_legacy_token(claims) is legacy


def test_username_and_pod_extras_make_the_identity() -> None:
    identity = identity_from_username(
        "system:serviceaccount:payments:api",
        {
            "authentication.kubernetes.io/pod-name": ["api-7d9f"],
            "authentication.kubernetes.io/pod-uid": ["0b6f9f0e", "ignored"],
            "authentication.kubernetes.io/credential-id": ["JTI=x"],
        },
        TRUST_DOMAIN,
    )

    assert str(identity.spiffe_id) == "spiffe://cluster.local/ns/payments/sa/api"
    assert (identity.pod_name, identity.pod_uid) == ("api-7d9f", "0b6f9f0e")


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="none"),
        pytest.param({"authentication.kubernetes.io/pod-name": []}, id="empty-list"),
        pytest.param({"authentication.kubernetes.io/pod-name": [""]}, id="empty-string"),
    ],
)
def test_username_without_pod_extras_has_no_pod(extra: dict[str, list[str]]) -> None:
    identity = identity_from_username("system:serviceaccount:payments:api", extra, TRUST_DOMAIN)

    assert (identity.pod_name, identity.pod_uid) == (None, None)


@pytest.mark.parametrize(
    "username",
    [
        "system:serviceaccount:payments",
        "system:anonymous",
        "kubernetes-admin",
        "system:serviceaccount:Payments:api",
    ],
)
def test_a_username_that_is_not_a_valid_service_account_is_refused(username: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        identity_from_username(username, {}, TRUST_DOMAIN)

    assert caught.value.reason == "token_bad_subject"


def test_usernames_split_into_namespace_and_name() -> None:
    assert parse_service_account_username("system:serviceaccount:a:b") == ("a", "b")
