"""Every way a CreateCertificate call is refused, end to end over TLS gRPC: the status code, the
reason in the details (never the token), the refusal in the ledger, and nothing issued.

One CA per database dialect serves the whole module; each case checks the count of issued
certificates before and after itself."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm

from ca.api import methods
from ca.core.keys import KeyType, generate_private_key
from ca.storage.engine import make_engine
from ca.storage.ledger import Ledger
from tests.factories import make_csr
from tests.server.conftest import (
    Refusal,
    Served,
    certificates,
    refusal,
    refused,
    spiffe_id,
    uri_sans,
)
from tests.server.harness import ISSUER, TokenMinter, running_ca, serving_settings

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
PEER = re.compile(r"^ipv4:127\.0\.0\.1:\d+$")
QUARANTINE = "quarantine"


@pytest.fixture(scope="module")
def served(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    minter = TokenMinter()
    settings = serving_settings(
        tmp_path_factory.mktemp("auth-ca"),
        module_db_url,
        minter,
        deny_identities=[f"spiffe://cluster.local/ns/{QUARANTINE}/*"],
    )
    engine = make_engine(module_db_url)
    try:
        with running_ca(settings) as ca:
            yield Served(ca, minter, Ledger(engine))
    finally:
        engine.dispose()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def _claims(minter: TokenMinter) -> dict[str, Any]:
    """The claims of an honest token of ``minter`` (default/web)."""
    claims: dict[str, Any] = jwt.decode(minter.mint(), options={"verify_signature": False})
    return claims


def _no_token(m: TokenMinter) -> str | None:
    return None


def _alg_none(m: TokenMinter) -> str:
    return _compact({"alg": "none", "typ": "JWT"}, _claims(m), lambda _: b"")


def _hs256_with_public_key(m: TokenMinter) -> str:
    """The classic key-confusion forgery: HMAC keyed with the verifier's own public key PEM."""
    secret = m.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": m.kid}
    return _compact(
        header, _claims(m), lambda data: hmac.new(secret, data, hashlib.sha256).digest()
    )


def _forged(m: TokenMinter) -> str:
    """Same claims, same kid, signed by a key the CA does not trust."""
    return TokenMinter(kid=m.kid).mint()


def _mismatch_claims(m: TokenMinter) -> str:
    claims = _claims(m)["kubernetes.io"]
    claims["namespace"] = "kube-system"
    return m.mint("default", "web", **{"kubernetes.io": claims})


def _future() -> int:
    return int((datetime.now(UTC) + timedelta(hours=1)).timestamp())


@dataclass(frozen=True)
class Case:
    token: Callable[[TokenMinter], str | None]
    reason: str
    header: Callable[[str | None], str] | None = None  # the authorization value; Bearer <t>


AUTH_CASES = {
    "no-token": Case(_no_token, "token_missing"),
    "bearer-empty": Case(_no_token, "token_malformed", header=lambda _: "Bearer "),
    "basic-scheme": Case(lambda m: m.mint(), "token_malformed", header=lambda t: f"Basic {t}"),
    "not-a-jwt": Case(lambda m: "not-a-jwt", "token_malformed"),
    "forged-signature": Case(_forged, "token_bad_signature"),
    "alg-none": Case(_alg_none, "token_algorithm_refused"),
    "hs256-public-key-secret": Case(_hs256_with_public_key, "token_algorithm_refused"),
    "expired": Case(lambda m: m.mint(lifetime=-timedelta(minutes=5)), "token_expired"),
    "not-yet-valid": Case(lambda m: m.mint(nbf=_future()), "token_not_yet_valid"),
    "wrong-issuer": Case(lambda m: m.mint(iss="https://evil.example"), "token_wrong_issuer"),
    "wrong-audience": Case(
        lambda m: m.mint(aud=["kubernetes.default.svc"]), "token_wrong_audience"
    ),
    "sub-claims-mismatch": Case(_mismatch_claims, "token_claims_mismatch"),
    "sub-not-service-account": Case(lambda m: m.mint(sub="admin"), "token_bad_subject"),
}


def _call(served: Served, authorization: str | None, csr: bytes, validity: int = 0) -> Any:
    metadata = [("authorization", authorization)] if authorization is not None else []
    with served.ca.channel() as channel:
        return methods.create_certificate(channel)(
            methods.CertificateRequest(csr=csr.decode(), validity_duration=validity),
            metadata=metadata,
            timeout=30,
        )


def _assert_recorded(served: Served, failure: Refusal, reason: str) -> None:
    row = served.denied_row(failure.request_id)
    assert row.reason == reason
    assert PEER.match(row.requester), row.requester
    assert row.message
    assert row.message in failure.details


@pytest.mark.parametrize("case", AUTH_CASES.values(), ids=AUTH_CASES.keys())
def test_authentication_failures(served: Served, case: Case) -> None:
    issued_before = served.ledger.count_issued()
    token = case.token(served.minter)
    authorization = (
        case.header(token) if case.header else (f"Bearer {token}" if token is not None else None)
    )

    failure = refused(lambda: _call(served, authorization, make_csr()))

    assert failure.code == UNAUTHENTICATED
    assert failure.reason == case.reason, failure.details
    if token:
        assert token not in failure.details
        for part in token.split("."):
            assert len(part) < 8 or part not in failure.details, failure.details
    _assert_recorded(served, failure, case.reason)
    row = served.denied_row(failure.request_id)
    assert row.spiffe_id is None  # nobody was authenticated
    assert row.error_type == "Unauthenticated"
    assert served.ledger.count_issued() == issued_before


@dataclass(frozen=True)
class PolicyCase:
    namespace: str
    csr: Callable[[], bytes]
    code: grpc.StatusCode
    reason: str
    validity: int = 0
    requested_ttl_seconds: int | None = None


def _weak_rsa_csr() -> bytes:
    return make_csr(rsa.generate_private_key(public_exponent=65537, key_size=1024))


POLICY_CASES = {
    "csr-for-another-identity": PolicyCase(
        "default",
        lambda: make_csr(uris=[spiffe_id("payments", "api")]),
        PERMISSION_DENIED,
        "csr_identity_mismatch",
    ),
    "deny-list": PolicyCase(QUARANTINE, make_csr, PERMISSION_DENIED, "identity_denied"),
    "malformed-csr": PolicyCase(
        "default",
        lambda: (
            b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n"
        ),
        INVALID_ARGUMENT,
        "csr_malformed",
    ),
    "garbage-csr": PolicyCase("default", lambda: b"hello", INVALID_ARGUMENT, "csr_malformed"),
    "ttl-over-max": PolicyCase(
        "default",
        make_csr,
        INVALID_ARGUMENT,
        "ttl_too_long",
        validity=91 * 24 * 3600,
        requested_ttl_seconds=91 * 24 * 3600,
    ),
    "weak-rsa-1024": PolicyCase("default", _weak_rsa_csr, INVALID_ARGUMENT, "csr_weak_key"),
    "csr-asks-for-ca": PolicyCase(
        "default", lambda: make_csr(ca=True), INVALID_ARGUMENT, "csr_requests_ca"
    ),
    "csr-dns-san": PolicyCase(
        "default", lambda: make_csr(dns=["web.default.svc"]), INVALID_ARGUMENT, "csr_forbidden_san"
    ),
}


@pytest.mark.parametrize("case", POLICY_CASES.values(), ids=POLICY_CASES.keys())
def test_policy_refusals_of_authenticated_callers(served: Served, case: PolicyCase) -> None:
    issued_before = served.ledger.count_issued()
    token = served.minter.mint(case.namespace, "web", pod_name="web-1", pod_uid="uid-web-1")

    failure = refused(lambda: _call(served, f"Bearer {token}", case.csr(), case.validity))

    assert failure.code == case.code
    assert failure.reason == case.reason, failure.details
    assert token not in failure.details
    _assert_recorded(served, failure, case.reason)
    row = served.denied_row(failure.request_id)
    # the caller was authenticated: the refusal names who asked
    assert row.spiffe_id == spiffe_id(case.namespace, "web")
    assert (row.pod_name, row.pod_uid) == ("web-1", "uid-web-1")
    if case.requested_ttl_seconds is not None:
        assert row.requested_ttl_seconds == case.requested_ttl_seconds
    assert served.ledger.count_issued() == issued_before


def test_the_same_server_still_issues(served: Served) -> None:
    """The refusals above did not wedge anything: an honest caller is served."""
    chain = served.issue("default", "web")
    assert uri_sans(certificates(chain)[0]) == [spiffe_id("default", "web")]


def _jwks(path: Path, *keys: tuple[ec.EllipticCurvePrivateKey, str]) -> None:
    entries = []
    for key, kid in keys:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        entries.append({**jwk, "kid": kid, "use": "sig", "alg": "ES256"})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": entries}))
    tmp.replace(path)


def test_key_rotation_through_a_jwks_file(
    sqlite_url: str, serve: Callable[..., Served], tmp_path: Path
) -> None:
    """A token signed by a new API-server key (unknown kid) is refused until the JWKS holds the
    key, then the same token is accepted by the same running server."""
    old = TokenMinter(kid="old-key")
    new = TokenMinter(kid="new-key")
    jwks = tmp_path / "jwks.json"
    _jwks(jwks, (old.key, old.kid))
    served = serve(sqlite_url, jwks=str(jwks), jwks_refresh_interval="0s")
    assert served.ca.create_certificate(make_csr(), old.mint())  # the old key works
    port = served.ca.port
    token = new.mint("default", "web", pod_name="rotated")

    failure = refused(lambda: served.ca.create_certificate(make_csr(), token))
    assert failure.code == UNAUTHENTICATED
    assert failure.reason == "token_unknown_key"
    assert token not in failure.details
    assert served.denied_row(failure.request_id).reason == "token_unknown_key"

    _jwks(jwks, (old.key, old.kid), (new.key, new.kid))
    chain = served.ca.create_certificate(make_csr(), token)

    assert served.ca.port == port  # no restart
    leaf = certificates(chain)[0]
    assert uri_sans(leaf) == [spiffe_id("default", "web")]
    (row,) = [r for r in served.workload_rows() if r.pod_name == "rotated"]
    assert row.spiffe_id == spiffe_id("default", "web")


def test_legacy_tokens_refused_by_default(sqlite_url: str, serve: Callable[..., Served]) -> None:
    """A secret-based token (no exp, no aud, no kubernetes.io claim) never expires; refused."""
    served = serve(sqlite_url)
    legacy = {
        "iss": ISSUER,
        "sub": "system:serviceaccount:default:web",
        "kubernetes.io/serviceaccount/namespace": "default",
        "kubernetes.io/serviceaccount/service-account.name": "web",
        "kubernetes.io/serviceaccount/secret.name": "web-token-abcde",
    }
    token = jwt.encode(legacy, served.minter.key, algorithm="ES256")

    failure = refused(lambda: served.ca.create_certificate(make_csr(), token))

    assert (failure.code, failure.reason) == (UNAUTHENTICATED, "token_legacy_refused")
    assert served.denied_row(failure.request_id).reason == "token_legacy_refused"


def test_refusals_carry_distinct_request_ids(served: Served) -> None:
    ids = set()
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as info:
            _call(served, None, make_csr())
        ids.add(refusal(info.value).request_id)
    assert len(ids) == 3


def test_csr_key_reuse_across_identities_is_still_bound_to_the_token(served: Served) -> None:
    """The identity comes from the token alone: the same key under two tokens gets two IDs."""
    key = generate_private_key(KeyType.EC_P256)
    first = served.issue("default", "web", key=key)
    second = served.issue("payments", "web", key=key)
    assert uri_sans(certificates(first)[0]) == [spiffe_id("default", "web")]
    assert uri_sans(certificates(second)[0]) == [spiffe_id("payments", "web")]


def test_real_minikube_tokens(
    sqlite_url: str, serve: Callable[..., Served], k8s_tokens_dir: Path
) -> None:
    """Tokens a real API server minted (RS256, kid, iss kubernetes/serviceaccount) against the
    cluster's real public key: the projected token issues, the expired one and the legacy
    secret-based one are refused."""
    served = serve(
        sqlite_url,
        jwt_public_keys=[
            str(k8s_tokens_dir / "minikube-sa-signing-key.pub.pem"),
            str(k8s_tokens_dir / "legacy-signer-cert.pem"),
        ],
        jwt_issuer="kubernetes/serviceaccount",
        jwt_audiences=["kubernetes.default.svc"],
    )
    token = (k8s_tokens_dir / "minikube-projected.jwt").read_text().strip()

    chain = served.ca.create_certificate(make_csr(), token)

    leaf = certificates(chain)[0]
    assert uri_sans(leaf) == [spiffe_id("default", "default")]
    (row,) = served.workload_rows()
    assert row.spiffe_id == spiffe_id("default", "default")
    assert (row.pod_name, row.pod_uid) == ("vault", "086c2f61-dea2-47bb-b5ca-63e63c5c9885")

    for name, reason in (
        ("minikube-projected-expired.jwt", "token_expired"),
        ("legacy-secret.jwt", "token_legacy_refused"),
    ):
        bad = (k8s_tokens_dir / name).read_text().strip()
        failure = refused(lambda bad=bad: served.ca.create_certificate(make_csr(), bad))
        assert (failure.code, failure.reason) == (UNAUTHENTICATED, reason), name
        assert bad not in failure.details
        assert served.denied_row(failure.request_id).reason == reason
    assert len(served.workload_rows()) == 1


def test_real_legacy_token_when_legacy_tokens_are_allowed(
    sqlite_url: str, serve: Callable[..., Served], k8s_tokens_dir: Path
) -> None:
    """``allow_legacy_tokens``: the real secret-based token (iss kubernetes/serviceaccount, the
    fixed legacy issuer, whatever --jwt-issuer says) is accepted; it names no pod."""
    served = serve(
        sqlite_url,
        jwt_public_keys=[str(k8s_tokens_dir / "legacy-signer-cert.pem")],
        allow_legacy_tokens=True,
    )
    token = (k8s_tokens_dir / "legacy-secret.jwt").read_text().strip()

    chain = served.ca.create_certificate(make_csr(), token)

    assert uri_sans(certificates(chain)[0]) == [spiffe_id("default", "vault-auth")]
    (row,) = served.workload_rows()
    assert (row.pod_name, row.pod_uid) == (None, None)
