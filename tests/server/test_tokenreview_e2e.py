"""``--auth tokenreview`` end to end: the CA asks a real HTTPS (fake) Kubernetes API server
about each token with the TokenReview wire format and issues only for tokens it vouches for."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from ca.core.keys import KeyType, generate_private_key
from tests.factories import make_csr
from tests.fakes.kube_apiserver import KubeApiServer
from tests.server.conftest import Served, certificates, refused, spiffe_id, uri_sans
from tests.server.harness import AUDIENCE


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    with KubeApiServer() as api:
        yield api


@pytest.fixture
def served(
    sqlite_url: str, kube: KubeApiServer, serve: Callable[..., Served], tmp_path: Path
) -> Served:
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    return serve(sqlite_url, auth="tokenreview", kubeconfig=kubeconfig)


def test_registered_token_is_issued_a_certificate(served: Served, kube: KubeApiServer) -> None:
    token = secrets.token_urlsafe(32)  # opaque to the CA: only the API server can say whose
    kube.register(
        token, namespace="shop", service_account="cart", pod_name="cart-5d4f", pod_uid="uid-cart"
    )

    chain = served.ca.create_certificate(make_csr(generate_private_key(KeyType.EC_P256)), token)

    assert len(chain) == 3
    assert uri_sans(certificates(chain)[0]) == [spiffe_id("shop", "cart")]
    (row,) = served.workload_rows()
    assert row.spiffe_id == spiffe_id("shop", "cart")
    assert (row.pod_name, row.pod_uid) == ("cart-5d4f", "uid-cart")
    # the review asked about this token, for the CA's audience
    (review,) = kube.received
    assert review["spec"]["token"] == token
    assert review["spec"]["audiences"] == [AUDIENCE]


def test_unknown_token_is_unauthenticated(served: Served, kube: KubeApiServer) -> None:
    token = secrets.token_urlsafe(32)

    failure = refused(lambda: served.ca.create_certificate(make_csr(), token))

    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert failure.reason == "token_rejected"
    assert token not in failure.details
    assert kube.requests == 1
    row = served.denied_row(failure.request_id)
    assert (row.reason, row.spiffe_id) == ("token_rejected", None)
    assert served.workload_rows() == []


def test_token_for_another_audience_is_unauthenticated(served: Served, kube: KubeApiServer) -> None:
    token = secrets.token_urlsafe(32)
    kube.register(token, audiences=["vault"])

    failure = refused(lambda: served.ca.create_certificate(make_csr(), token))

    assert (failure.code, failure.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "token_wrong_audience",
    )
    assert served.workload_rows() == []


def test_revoked_token_is_refused_once_the_cached_review_expires(
    sqlite_url: str, kube: KubeApiServer, serve: Callable[..., Served], tmp_path: Path
) -> None:
    """With no review cache, deleting the pod (revoking its token) takes effect at once."""
    served = serve(
        sqlite_url,
        auth="tokenreview",
        kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"),
        tokenreview_cache_ttl="0s",
    )
    token = secrets.token_urlsafe(32)
    kube.register(token, namespace="shop", service_account="cart")
    served.ca.create_certificate(make_csr(), token)

    kube.revoke(token)
    failure = refused(lambda: served.ca.create_certificate(make_csr(), token))

    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAUTHENTICATED, "token_rejected")
    assert len(served.workload_rows()) == 1


def test_api_server_down_is_unavailable_and_nothing_is_issued(
    served: Served, kube: KubeApiServer
) -> None:
    token = secrets.token_urlsafe(32)
    kube.register(token)
    kube.fail_next(20, 503)

    failure = refused(lambda: served.ca.create_certificate(make_csr(), token))

    assert failure.code == grpc.StatusCode.UNAVAILABLE
    assert failure.reason == "tokenreview_unavailable"
    assert served.workload_rows() == []
