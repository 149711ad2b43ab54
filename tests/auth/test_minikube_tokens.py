"""Tokens a real API server minted (minikube, published as test data by the Vault Kubernetes auth
plugin) against the real verifier, so validation is proven on more than our own tokens.

The fixtures are in ``tests/fixtures/k8s-tokens/`` (``k8s_tokens_dir`` in conftest.py). The clock is
fixed at 2026-11-21: ``minikube-projected.jwt`` expires on 2030-11-05 (exp 1920082797), so
with the real clock this test would start failing then; ``minikube-projected-expired.jwt``
expired on 2020-10-30.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ca.auth.jwt_keys import KeySource, PemFileLoader
from ca.auth.jwt_verifier import JwtVerifier
from ca.auth.verified import VerifiedToken
from ca.core.errors import Unauthenticated
from ca.settings import JWT_ALGORITHMS
from tests.auth.jwt_helpers import TRUST_DOMAIN

MINIKUBE_ISSUER = "kubernetes/serviceaccount"
MINIKUBE_AUDIENCE = "kubernetes.default.svc"
FIXED_NOW = datetime(2026, 11, 21, tzinfo=UTC)
VALID_TOKEN_EXPIRES = datetime(2030, 11, 5, 4, 19, 57, tzinfo=UTC)


def verifier(
    keys_file: Path,
    *,
    issuer: str = MINIKUBE_ISSUER,
    audience: str = MINIKUBE_AUDIENCE,
    allow_legacy: bool = False,
    now: datetime = FIXED_NOW,
) -> JwtVerifier:
    source = KeySource(PemFileLoader([keys_file]), clock=lambda: 0.0)
    assert asyncio.run(source.start())
    return JwtVerifier(
        source,
        TRUST_DOMAIN,
        issuer=issuer,
        audiences=[audience],
        algorithms=JWT_ALGORITHMS,
        leeway=timedelta(seconds=30),
        allow_legacy=allow_legacy,
        clock=lambda: now,
    )


def verify(verifier: JwtVerifier, token_file: Path) -> VerifiedToken:
    return asyncio.run(verifier.verify(token_file.read_text().strip()))


def reason(verifier: JwtVerifier, token_file: Path) -> str:
    with pytest.raises(Unauthenticated) as caught:
        verify(verifier, token_file)
    assert token_file.read_text().strip() not in caught.value.message
    return caught.value.reason


def test_the_projected_minikube_token_verifies(k8s_tokens_dir: Path) -> None:
    verified = verify(
        verifier(k8s_tokens_dir / "minikube-sa-signing-key.pub.pem"),
        k8s_tokens_dir / "minikube-projected.jwt",
    )

    assert str(verified.identity.spiffe_id) == "spiffe://cluster.local/ns/default/sa/default"
    assert verified.identity.pod_name == "vault"
    assert verified.identity.pod_uid == "086c2f61-dea2-47bb-b5ca-63e63c5c9885"
    assert verified.expires_at == VALID_TOKEN_EXPIRES


def test_the_projected_minikube_token_expires_in_2030(k8s_tokens_dir: Path) -> None:
    after = VALID_TOKEN_EXPIRES + timedelta(seconds=31)

    assert (
        reason(
            verifier(k8s_tokens_dir / "minikube-sa-signing-key.pub.pem", now=after),
            k8s_tokens_dir / "minikube-projected.jwt",
        )
        == "token_expired"
    )


def test_the_expired_minikube_token_is_refused(k8s_tokens_dir: Path) -> None:
    with pytest.raises(Unauthenticated) as caught:
        verify(
            verifier(k8s_tokens_dir / "minikube-sa-signing-key.pub.pem"),
            k8s_tokens_dir / "minikube-projected-expired.jwt",
        )

    assert caught.value.reason == "token_expired"
    assert "2020-10-30T18:51:26Z" in caught.value.message


@pytest.mark.parametrize(
    ("issuer", "audience", "expected"),
    [
        pytest.param(MINIKUBE_ISSUER, "istio-ca", "token_wrong_audience", id="audience"),
        pytest.param(
            "https://kubernetes.default.svc", MINIKUBE_AUDIENCE, "token_wrong_issuer", id="issuer"
        ),
    ],
)
def test_the_minikube_token_is_refused_for_another_audience_or_issuer(
    k8s_tokens_dir: Path, issuer: str, audience: str, expected: str
) -> None:
    refused = verifier(
        k8s_tokens_dir / "minikube-sa-signing-key.pub.pem", issuer=issuer, audience=audience
    )

    assert reason(refused, k8s_tokens_dir / "minikube-projected.jwt") == expected


def test_the_minikube_token_does_not_verify_with_another_clusters_key(
    k8s_tokens_dir: Path,
) -> None:
    other = verifier(k8s_tokens_dir / "legacy-signer-cert.pem")

    assert reason(other, k8s_tokens_dir / "minikube-projected.jwt") == "token_bad_signature"


def test_the_legacy_token_is_refused_by_default(k8s_tokens_dir: Path) -> None:
    refused = verifier(k8s_tokens_dir / "legacy-signer-cert.pem")

    assert reason(refused, k8s_tokens_dir / "legacy-secret.jwt") == "token_legacy_refused"


def test_the_legacy_token_is_accepted_when_allowed(k8s_tokens_dir: Path) -> None:
    verified = verify(
        verifier(k8s_tokens_dir / "legacy-signer-cert.pem", allow_legacy=True),
        k8s_tokens_dir / "legacy-secret.jwt",
    )

    assert str(verified.identity.spiffe_id) == "spiffe://cluster.local/ns/default/sa/vault-auth"
    assert (verified.identity.namespace, verified.identity.service_account) == (
        "default",
        "vault-auth",
    )
    assert verified.identity.pod_name is None
    assert verified.expires_at is None
