"""Workload identities: the Kubernetes mapping and the trust-domain rules."""

from __future__ import annotations

import pytest
from spiffe import SpiffeId, TrustDomain

from ca.core.errors import InvalidRequest, PermissionDenied
from ca.core.identity import (
    WorkloadIdentity,
    parse_spiffe_id,
    parse_trust_domain,
)
from tests.factories import TRUST_DOMAIN


def test_service_account_maps_to_the_kubernetes_spiffe_id() -> None:
    identity = WorkloadIdentity.for_service_account(
        TRUST_DOMAIN, "payments", "api", pod_name="api-7d9f", pod_uid="0b6f9f0e"
    )

    assert str(identity.spiffe_id) == "spiffe://cluster.local/ns/payments/sa/api"
    assert identity.spiffe_id.trust_domain == TRUST_DOMAIN
    assert (identity.namespace, identity.service_account) == ("payments", "api")
    assert (identity.pod_name, identity.pod_uid) == ("api-7d9f", "0b6f9f0e")


@pytest.mark.parametrize(
    ("spiffe_id", "namespace", "service_account"),
    [
        pytest.param("spiffe://cluster.local/ns/payments/sa/api", "payments", "api", id="k8s"),
        pytest.param("spiffe://cluster.local/workload/api", None, None, id="non-k8s-path"),
        pytest.param("spiffe://cluster.local/ns/a/sa/b/extra", None, None, id="extra-segment"),
        pytest.param("spiffe://cluster.local/ns/a", None, None, id="namespace-only"),
    ],
)
def test_from_spiffe_id_fills_in_kubernetes_facts_only_for_the_mapping(
    spiffe_id: str, namespace: str | None, service_account: str | None
) -> None:
    identity = WorkloadIdentity.from_spiffe_id(SpiffeId(spiffe_id))

    assert str(identity.spiffe_id) == spiffe_id
    assert (identity.namespace, identity.service_account) == (namespace, service_account)


@pytest.mark.parametrize(
    "namespace",
    [
        pytest.param("", id="empty"),
        pytest.param("Default", id="upper-case"),
        pytest.param("my_ns", id="underscore"),
        pytest.param("-ns", id="leading-hyphen"),
        pytest.param("ns-", id="trailing-hyphen"),
        pytest.param("ns.dot", id="dot"),
        pytest.param("a" * 64, id="64-characters"),
        pytest.param("default/sa/admin", id="path-injection"),
    ],
)
def test_invalid_namespace_is_refused(namespace: str) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        WorkloadIdentity.for_service_account(TRUST_DOMAIN, namespace, "web")

    assert excinfo.value.reason == "invalid_namespace"


@pytest.mark.parametrize(
    "service_account",
    [
        pytest.param("", id="empty"),
        pytest.param("Web", id="upper-case"),
        pytest.param("web_1", id="underscore"),
        pytest.param(".web", id="leading-dot"),
        pytest.param("a" * 254, id="254-characters"),
        pytest.param("web/../admin", id="path-injection"),
    ],
)
def test_invalid_service_account_is_refused(service_account: str) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        WorkloadIdentity.for_service_account(TRUST_DOMAIN, "default", service_account)

    assert excinfo.value.reason == "invalid_service_account"


@pytest.mark.parametrize(
    ("namespace", "service_account"),
    [
        pytest.param("a" * 63, "web", id="63-character-namespace"),
        pytest.param("0-ns", "web", id="namespace-starting-with-digit"),
        pytest.param("default", "web.v1-canary", id="dotted-service-account"),
        pytest.param("default", "a" * 253, id="253-character-service-account"),
    ],
)
def test_valid_kubernetes_names_at_the_edges_are_accepted(
    namespace: str, service_account: str
) -> None:
    identity = WorkloadIdentity.for_service_account(TRUST_DOMAIN, namespace, service_account)

    assert identity.spiffe_id.path == f"/ns/{namespace}/sa/{service_account}"


def test_identity_in_its_own_trust_domain_passes() -> None:
    identity = WorkloadIdentity.for_service_account(TRUST_DOMAIN, "default", "web")

    identity.require_trust_domain(TRUST_DOMAIN)


@pytest.mark.parametrize(
    ("spiffe_id", "error", "reason"),
    [
        pytest.param(
            "spiffe://other.example/ns/default/sa/web",
            PermissionDenied,
            "foreign_trust_domain",
            id="foreign-trust-domain",
        ),
        pytest.param(
            "spiffe://cluster.local.evil/ns/default/sa/web",
            PermissionDenied,
            "foreign_trust_domain",
            id="suffixed-trust-domain",
        ),
        pytest.param("spiffe://cluster.local", InvalidRequest, "invalid_spiffe_id", id="no-path"),
    ],
)
def test_require_trust_domain_refuses(spiffe_id: str, error: type[Exception], reason: str) -> None:
    identity = WorkloadIdentity.from_spiffe_id(SpiffeId(spiffe_id))

    with pytest.raises(error) as excinfo:
        identity.require_trust_domain(TRUST_DOMAIN)

    assert getattr(excinfo.value, "reason", None) == reason


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("spiffe://", id="no-trust-domain"),
        pytest.param("https://cluster.local/ns/a/sa/b", id="wrong-scheme"),
        pytest.param("spiffe://cluster!local/ns/a/sa/b", id="bad-trust-domain-character"),
        pytest.param("spiffe://cluster.local/ns/a%20b", id="percent-encoded-path"),
        pytest.param("spiffe://cluster.local/ns//sa/b", id="empty-segment"),
        pytest.param("spiffe://cluster.local/ns/../sa/b", id="dot-segment"),
        pytest.param("spiffe://cluster.local/ns/a/sa/b/", id="trailing-slash"),
        pytest.param("spiffe://cluster.local/ns/a?x=1", id="query"),
    ],
)
def test_parse_spiffe_id_refuses_malformed_ids(text: str) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        parse_spiffe_id(text)

    assert excinfo.value.reason == "invalid_spiffe_id"


def test_parse_spiffe_id_accepts_a_well_formed_id() -> None:
    assert parse_spiffe_id("spiffe://cluster.local/ns/a/sa/b") == SpiffeId(
        "spiffe://cluster.local/ns/a/sa/b"
    )


@pytest.mark.parametrize("text", ["cluster.local", "spiffe://cluster.local"])
def test_parse_trust_domain_accepts_a_name_or_an_id(text: str) -> None:
    trust_domain = parse_trust_domain(text)

    assert trust_domain == TrustDomain("cluster.local")
    assert trust_domain.as_spiffe_id() == "spiffe://cluster.local"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("cluster local", id="space"),
        pytest.param("cluster!local", id="punctuation"),
        pytest.param("https://cluster.local", id="wrong-scheme"),
    ],
)
def test_parse_trust_domain_refuses_malformed_names(text: str) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        parse_trust_domain(text)

    assert excinfo.value.reason == "invalid_trust_domain"
