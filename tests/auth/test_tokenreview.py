"""TokenReview verification against a real HTTPS fake of the Kubernetes API server."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from spiffe import TrustDomain

from ca.auth.kubeconfig import ClusterAccess, load_kubeconfig
from ca.auth.tokenreview import TokenReviewVerifier
from ca.auth.verified import VerifiedToken
from ca.core.errors import ConfigurationError, MeshcaError, Unauthenticated, Unavailable
from ca.settings import Settings
from tests.fakes.kube_apiserver import PATH, KubeApiServer

TRUST_DOMAIN = TrustDomain("cluster.local")
TOKEN = "pod-token-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def api() -> Iterator[KubeApiServer]:
    with KubeApiServer() as server:
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


def access_for(api: KubeApiServer, **fields: Any) -> ClusterAccess:
    values: dict[str, Any] = {"server": api.url, "ca_pem": api.ca_pem, "token": api.client_token}
    return ClusterAccess(**(values | fields))


def make_verifier(
    api: KubeApiServer, access: ClusterAccess | None = None, **options: Any
) -> TokenReviewVerifier:
    settings: dict[str, Any] = {
        "audiences": ["istio-ca"],
        "trust_domain": TRUST_DOMAIN,
        "backoff": 0.001,
        "max_backoff": 0.002,
    }
    return TokenReviewVerifier(access or access_for(api), **(settings | options))


def verify_all(verifier: TokenReviewVerifier, *tokens: str) -> list[VerifiedToken | MeshcaError]:
    """Verify ``tokens`` in turn on one event loop; each result is the token or the refusal."""

    async def run() -> list[VerifiedToken | MeshcaError]:
        results: list[VerifiedToken | MeshcaError] = []
        async with verifier:
            for token in tokens:
                try:
                    results.append(await verifier.verify(token))
                except MeshcaError as exc:
                    results.append(exc)
        return results

    return asyncio.run(run())


def verify(verifier: TokenReviewVerifier, token: str = TOKEN) -> VerifiedToken:
    (result,) = verify_all(verifier, token)
    if isinstance(result, MeshcaError):
        raise result
    return result


def refusal(verifier: TokenReviewVerifier, token: str = TOKEN) -> MeshcaError:
    (result,) = verify_all(verifier, token)
    assert isinstance(result, MeshcaError), f"expected a refusal, got {result}"
    assert not token or token not in result.message
    return result


def jwt_with_exp(exp: datetime) -> str:
    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part({'exp': int(exp.timestamp())})}.c2ln"


# --- accepted tokens ---


def test_a_service_account_token_yields_its_identity_with_pod(api: KubeApiServer, clock: Clock):
    api.register(
        TOKEN, namespace="shop", service_account="cart", pod_name="cart-7d9f", pod_uid="0f1e-22"
    )
    verified = verify(make_verifier(api, clock=clock))
    identity = verified.identity
    assert str(identity.spiffe_id) == "spiffe://cluster.local/ns/shop/sa/cart"
    assert (identity.namespace, identity.service_account) == ("shop", "cart")
    assert (identity.pod_name, identity.pod_uid) == ("cart-7d9f", "0f1e-22")
    # an opaque token: relied on for the cache TTL
    assert verified.expires_at == clock.now + timedelta(seconds=10)
    # the CA asked about exactly this token, for its own audience
    assert api.received[0]["spec"] == {"token": TOKEN, "audiences": ["istio-ca"]}


def test_a_token_without_pod_binding_has_no_pod(api: KubeApiServer):
    api.register(TOKEN, namespace="shop", service_account="cart")
    identity = verify(make_verifier(api)).identity
    assert (identity.pod_name, identity.pod_uid) == (None, None)


def test_any_configured_audience_is_enough(api: KubeApiServer):
    api.register(TOKEN, audiences=["other", "meshca"])
    verifier = make_verifier(api, audiences=["istio-ca", "meshca"])
    assert verify(verifier).identity.service_account == "default"


def test_a_jwt_is_relied_on_no_later_than_its_exp(api: KubeApiServer, clock: Clock):
    token = jwt_with_exp(clock.now + timedelta(seconds=3))
    api.register(token)
    verifier = make_verifier(api, clock=clock, cache_ttl=timedelta(seconds=10))

    async def run() -> None:
        async with verifier:
            first = await verifier.verify(token)
            assert first.expires_at == clock.now + timedelta(seconds=3)
            clock.advance(timedelta(seconds=4))  # expired, although inside the cache TTL
            await verifier.verify(token)

    asyncio.run(run())
    assert api.requests == 2


# --- refused tokens ---


def test_an_unknown_token_is_rejected(api: KubeApiServer):
    error = refusal(make_verifier(api))
    assert isinstance(error, Unauthenticated)
    assert error.reason == "token_rejected"
    assert "did not authenticate" in error.message


def test_an_empty_token_is_rejected_without_asking(api: KubeApiServer):
    error = refusal(make_verifier(api), "")
    assert (type(error), error.reason) == (Unauthenticated, "token_rejected")
    assert api.requests == 0


def test_a_token_for_another_audience_is_refused(api: KubeApiServer):
    api.register(TOKEN, audiences=["https://kubernetes.default.svc.cluster.local"])
    error = refusal(make_verifier(api))
    assert (type(error), error.reason) == (Unauthenticated, "token_wrong_audience")
    assert "istio-ca" in error.message


def test_an_api_server_ignoring_audiences_is_not_trusted(api: KubeApiServer):
    api.register(TOKEN)
    api.ignore_audiences = True  # authenticated: true, but no status.audiences
    error = refusal(make_verifier(api))
    assert (type(error), error.reason) == (Unauthenticated, "token_wrong_audience")


def test_a_user_that_is_not_a_service_account_is_refused(api: KubeApiServer):
    api.register(TOKEN, username="alice", groups=["developers"])
    error = refusal(make_verifier(api))
    assert (type(error), error.reason) == (Unauthenticated, "token_not_service_account")
    assert "alice" in error.message


def test_a_malformed_service_account_username_is_refused(api: KubeApiServer):
    api.register(TOKEN, username="system:serviceaccount:shop")  # groups: service accounts
    error = refusal(make_verifier(api))
    assert (type(error), error.reason) == (Unauthenticated, "token_bad_subject")


def test_refusals_are_not_cached(api: KubeApiServer):
    results = verify_all(make_verifier(api), TOKEN, TOKEN)
    assert all(isinstance(r, Unauthenticated) for r in results)
    assert api.requests == 2
    api.register(TOKEN)  # e.g. the pod finished starting: the token now works at once
    assert verify(make_verifier(api)).identity.namespace == "default"


def test_the_token_is_never_logged(api: KubeApiServer, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    api.register(TOKEN, audiences=["other"])
    api.fail_next(1)
    verify_all(make_verifier(api), TOKEN, "unknown-" + TOKEN)
    assert caplog.records  # the retry and the refusals were logged
    assert TOKEN not in caplog.text


# --- the API server misbehaving ---


def test_transient_failures_are_retried(api: KubeApiServer):
    api.register(TOKEN)
    api.fail_next(2, status=503)
    assert verify(make_verifier(api)).identity.namespace == "default"
    assert api.requests == 3


@pytest.mark.parametrize("status", [429, 500, 502, 504])
def test_throttling_and_gateway_errors_are_retried(api: KubeApiServer, status: int):
    api.register(TOKEN)
    api.fail_next(1, status=status)
    verify(make_verifier(api))
    assert api.requests == 2


def test_dropped_connections_are_retried(api: KubeApiServer):
    api.register(TOKEN)
    api.drop_next(2)
    verify(make_verifier(api))
    assert api.requests == 3


def test_a_slow_answer_times_out_and_is_retried(api: KubeApiServer):
    api.register(TOKEN)
    api.delay_next(1, 30)
    verify(make_verifier(api, timeout=0.2))
    assert api.requests == 2


def test_an_api_server_that_stays_down_makes_the_ca_unavailable(api: KubeApiServer):
    api.register(TOKEN)
    api.fail_next(100, status=503)
    error = refusal(make_verifier(api, retries=3))
    assert (type(error), error.reason) == (Unavailable, "tokenreview_unavailable")
    assert "4 attempts" in error.message
    assert "HTTP 503 (ServiceUnavailable)" in error.message
    assert api.requests == 4


def test_an_unreachable_api_server_makes_the_ca_unavailable(api: KubeApiServer):
    with KubeApiServer() as gone:
        access = access_for(gone)
    error = refusal(make_verifier(api, access, retries=1))
    assert (type(error), error.reason) == (Unavailable, "tokenreview_unavailable")


def test_wrong_ca_credentials_tell_the_admin(api: KubeApiServer):
    api.register(TOKEN)
    error = refusal(make_verifier(api, access_for(api, token="not-the-ca-token")))
    assert (type(error), error.reason) == (Unavailable, "tokenreview_forbidden")
    assert "credentials" in error.message
    assert api.requests == 1  # not retried


def test_missing_rbac_tells_the_admin_what_to_grant(api: KubeApiServer):
    api.register(TOKEN)
    api.forbidden = True
    error = refusal(make_verifier(api))
    assert (type(error), error.reason) == (Unavailable, "tokenreview_forbidden")
    assert "`create` on `tokenreviews`" in error.message
    assert "authentication.k8s.io" in error.message


def test_a_server_without_the_tokenreview_api_is_a_bad_response(api: KubeApiServer):
    # also shows that a server URL's path prefix is kept
    error = refusal(make_verifier(api, access_for(api, server=api.url + "/not-kubernetes")))
    assert (type(error), error.reason) == (Unavailable, "tokenreview_bad_response")
    assert "HTTP 404 (NotFound)" in error.message


def test_an_answer_that_is_not_a_tokenreview_is_a_bad_response(api: KubeApiServer):
    api.register(TOKEN)
    api.fail_next(1, status=200)  # HTTP 200 with a Status object, not a TokenReview
    error = refusal(make_verifier(api))
    assert (type(error), error.reason) == (Unavailable, "tokenreview_bad_response")


def test_the_api_server_certificate_is_verified(api: KubeApiServer):
    api.register(TOKEN)
    with KubeApiServer() as other:
        access = access_for(api, ca_pem=other.ca_pem)  # trusts another cluster's CA
    error = refusal(make_verifier(api, access))
    assert (type(error), error.reason) == (Unavailable, "tokenreview_unavailable")
    assert "TLS verification" in error.message
    assert api.requests == 0  # the token never left the CA


# --- caching ---


def test_a_review_is_reused_within_the_ttl_then_asked_again(api: KubeApiServer, clock: Clock):
    api.register(TOKEN)
    verifier = make_verifier(api, clock=clock, cache_ttl=timedelta(seconds=10))

    async def run() -> None:
        async with verifier:
            first = await verifier.verify(TOKEN)
            clock.advance(timedelta(seconds=9))
            assert await verifier.verify(TOKEN) == first
            assert api.requests == 1
            clock.advance(timedelta(seconds=1))
            await verifier.verify(TOKEN)
            assert api.requests == 2

    asyncio.run(run())


def test_a_revoked_token_is_refused_once_the_ttl_passes(api: KubeApiServer, clock: Clock):
    api.register(TOKEN)
    verifier = make_verifier(api, clock=clock)

    async def run() -> None:
        async with verifier:
            await verifier.verify(TOKEN)
            api.revoke(TOKEN)  # the pod is deleted: its token stops working
            clock.advance(timedelta(seconds=11))
            with pytest.raises(Unauthenticated):
                await verifier.verify(TOKEN)

    asyncio.run(run())


def test_the_cache_is_bounded(api: KubeApiServer):
    api.register("token-a")
    api.register("token-b")
    verify_all(make_verifier(api, cache_size=1), "token-a", "token-b", "token-a")
    assert api.requests == 3


def test_caching_can_be_disabled(api: KubeApiServer):
    api.register(TOKEN)
    verify_all(make_verifier(api, cache_ttl=timedelta(0)), TOKEN, TOKEN)
    assert api.requests == 2


# --- the CA's own credentials ---


def test_the_ca_can_authenticate_with_a_client_certificate(api: KubeApiServer):
    api.register(TOKEN)
    cert, key = api.issue_client_cert()
    access = access_for(api, token=None, client_cert_pem=cert, client_key_pem=key)
    assert verify(make_verifier(api, access)).identity.namespace == "default"


def test_a_rotated_token_file_is_picked_up(api: KubeApiServer, tmp_path: Path):
    api.register(TOKEN)
    token_file = tmp_path / "token"
    token_file.write_text("expired-ca-token\n")
    verifier = make_verifier(api, access_for(api, token=None, token_file=token_file))

    async def run() -> None:
        async with verifier:
            with pytest.raises(Unavailable):
                await verifier.verify(TOKEN)
            token_file.write_text(api.client_token + "\n")  # the kubelet rotated it
            await verifier.verify(TOKEN)

    asyncio.run(run())


def test_a_vanished_token_file_makes_the_ca_unavailable(api: KubeApiServer, tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text(api.client_token)
    verifier = make_verifier(api, access_for(api, token=None, token_file=token_file))
    token_file.unlink()
    error = refusal(verifier)
    assert (type(error), error.reason) == (Unavailable, "tokenreview_unavailable")
    assert str(token_file) in error.message


def test_the_fake_writes_a_kubeconfig_the_loader_accepts(api: KubeApiServer, tmp_path: Path):
    api.register(TOKEN, namespace="shop", service_account="cart")
    access = load_kubeconfig(api.write_kubeconfig(tmp_path / "config"))
    assert verify(make_verifier(api, access)).identity.namespace == "shop"


def test_at_least_one_audience_is_required(api: KubeApiServer):
    with pytest.raises(ConfigurationError) as info:
        make_verifier(api, audiences=[])
    assert info.value.reason == "tokenreview_no_audience"


# --- the fake speaks the real wire format ---


def test_the_fake_answers_like_a_kubernetes_api_server(api: KubeApiServer):
    api.register(TOKEN, namespace="shop", service_account="cart", pod_name="p", pod_uid="u")
    auth = {"Authorization": f"Bearer {api.client_token}"}
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"}
    tls = ssl.create_default_context(cafile=api.ca_file)
    with httpx.Client(base_url=api.url, verify=tls, headers=auth) as client:
        ok = client.post(PATH, json=review | {"spec": {"token": TOKEN, "audiences": ["istio-ca"]}})
        unknown = client.post(PATH, json=review | {"spec": {"token": "nope"}})
        not_json = client.post(PATH, content=b"{", headers={"Content-Type": "application/json"})
        text = client.post(PATH, content=b"token", headers={"Content-Type": "text/plain"})
        not_found = client.post("/api/v1/pods", json={})
        no_auth = client.post(PATH, json=review, headers={"Authorization": "Bearer wrong"})
    assert ok.status_code == 201
    assert ok.json()["status"] == {
        "authenticated": True,
        "user": {
            "username": "system:serviceaccount:shop:cart",
            "uid": ok.json()["status"]["user"]["uid"],
            "groups": [
                "system:serviceaccounts",
                "system:serviceaccounts:shop",
                "system:authenticated",
            ],
            "extra": {
                "authentication.kubernetes.io/pod-name": ["p"],
                "authentication.kubernetes.io/pod-uid": ["u"],
            },
        },
        "audiences": ["istio-ca"],
    }
    assert unknown.status_code == 201
    assert "authenticated" not in unknown.json()["status"]  # omitempty, like the real one
    assert unknown.json()["status"]["error"]
    assert not_json.status_code == 400
    assert text.status_code == 415
    assert not_found.status_code == 404
    assert no_auth.status_code == 401
    assert no_auth.json() | {"metadata": {}, "message": ""} == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "",
        "reason": "Unauthorized",
        "code": 401,
    }


def test_the_verifier_is_built_from_settings(api: KubeApiServer, tmp_path: Path):
    api.register(TOKEN, namespace="shop", service_account="cart", audiences=["meshca"])
    settings = Settings(
        auth="tokenreview",
        kubeconfig=api.write_kubeconfig(tmp_path / "config"),
        trust_domain="example.org",
        jwt_audiences=["meshca"],
    )
    identity = verify(TokenReviewVerifier.from_settings(settings)).identity
    assert str(identity.spiffe_id) == "spiffe://example.org/ns/shop/sa/cart"
