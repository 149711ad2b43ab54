"""Local JWT verification: honest tokens pass, and every forgery or defect is refused with its
precise reason, a message without the token, and no more key fetches than the rules allow."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ca.auth.jwt_keys import JwksUrlLoader, KeySource
from ca.auth.jwt_verifier import JwtVerifier, jwt_verifier_from_settings
from ca.auth.verified import VerifiedToken
from ca.core.errors import ConfigurationError, MeshcaError, Unauthenticated, Unavailable
from ca.settings import Settings
from tests.auth.jwt_helpers import (
    AUDIENCE,
    INTERVAL,
    ISSUER,
    LEEWAY,
    NOW,
    TRUST_DOMAIN,
    FakeClock,
    SigningKey,
    b64json,
    b64url,
    document_server,
    file_source,
    hmac_token,
    jwks,
    legacy_claims,
    make_tls,
    make_verifier,
    projected_claims,
    rsa_key,
    unsigned_token,
)


@dataclass(frozen=True)
class Keys:
    rsa: SigningKey
    other: SigningKey
    ec: SigningKey


@pytest.fixture
def keys(rsa_signer: SigningKey, other_rsa_signer: SigningKey, ec_signer: SigningKey) -> Keys:
    return Keys(rsa_signer, other_rsa_signer, ec_signer)


@pytest.fixture
def verifier(tmp_path: Path, clock: FakeClock, keys: Keys) -> JwtVerifier:
    """Trusts ``keys.rsa`` and ``keys.ec`` through a JWKS file; ``keys.other`` is a stranger."""
    return make_verifier(file_source(tmp_path, keys.rsa, keys.ec, clock=clock), clock)


def verify(verifier: JwtVerifier, token: str) -> VerifiedToken:
    return asyncio.run(verifier.verify(token))


def refusal(verifier: JwtVerifier, token: str) -> MeshcaError:
    with pytest.raises(MeshcaError) as caught:
        verify(verifier, token)
    return caught.value


def without(claims: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if k not in names}


def with_payload(token: str, payload_segment: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{payload_segment}.{signature}"


# --- honest tokens ---


def test_a_projected_token_yields_its_identity_and_expiry(
    verifier: JwtVerifier, keys: Keys
) -> None:
    verified = verify(verifier, keys.rsa.sign(projected_claims("payments", "api")))

    assert str(verified.identity.spiffe_id) == "spiffe://cluster.local/ns/payments/sa/api"
    assert verified.identity.pod_name == "api-7d9f"
    assert verified.identity.pod_uid == "0b6f9f0e-1f3c-4d8e-9a55-2c1c5a8d7e11"
    assert verified.expires_at == NOW + timedelta(hours=1)
    assert verified.expires_at.tzinfo is not None


def test_an_ec_signed_token_verifies(verifier: JwtVerifier, keys: Keys) -> None:
    verified = verify(verifier, keys.ec.sign(projected_claims("web", "frontend")))

    assert str(verified.identity.spiffe_id) == "spiffe://cluster.local/ns/web/sa/frontend"


def test_a_token_without_kid_is_tried_against_every_key(verifier: JwtVerifier, keys: Keys) -> None:
    token = SigningKey(keys.ec.private, None, "ES256").sign(projected_claims())

    assert verify(verifier, token).identity.service_account == "api"


def test_pem_keys_verify_tokens_whatever_their_kid(
    tmp_path: Path, clock: FakeClock, keys: Keys
) -> None:
    verifier = make_verifier(file_source(tmp_path, keys.rsa, clock=clock, pem=True), clock)

    for token in (
        keys.rsa.sign(projected_claims()),  # kid rsa-1, matched by no kid'd key
        keys.rsa.sign(projected_claims(), alg="PS256"),  # RSA-PSS with the same key
        SigningKey(keys.rsa.private, None).sign(projected_claims()),  # no kid
    ):
        assert verify(verifier, token).identity.namespace == "payments"


def test_any_configured_audience_is_accepted(tmp_path: Path, clock: FakeClock, keys: Keys) -> None:
    verifier = make_verifier(
        file_source(tmp_path, keys.rsa, clock=clock), clock, audiences=("istio-ca", "meshca")
    )

    token = keys.rsa.sign(projected_claims(audience=["vault", "meshca"]))

    assert verify(verifier, token).identity.service_account == "api"


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param(
            projected_claims(now=NOW - timedelta(hours=1), ttl=timedelta(seconds=3600 - 29)),
            id="expired-29s-ago",
        ),
        pytest.param(
            {**projected_claims(), "nbf": int((NOW + timedelta(seconds=29)).timestamp())},
            id="nbf-in-29s",
        ),
        pytest.param(
            {**projected_claims(), "iat": int((NOW + timedelta(seconds=29)).timestamp())},
            id="iat-in-29s",
        ),
    ],
)
def test_clock_skew_within_the_leeway_is_tolerated(
    verifier: JwtVerifier, keys: Keys, claims: dict[str, Any]
) -> None:
    assert verify(verifier, keys.rsa.sign(claims)).identity.service_account == "api"


def test_a_legacy_token_is_accepted_only_when_allowed(
    tmp_path: Path, clock: FakeClock, keys: Keys
) -> None:
    source = file_source(tmp_path, keys.rsa, clock=clock)
    token = SigningKey(keys.rsa.private, None).sign(legacy_claims())

    refused = refusal(make_verifier(source, clock), token)
    verified = verify(make_verifier(source, clock, allow_legacy=True), token)

    assert refused.reason == "token_legacy_refused"
    # The legacy issuer is accepted although the configured issuer is the API server's URL.
    assert str(verified.identity.spiffe_id) == "spiffe://cluster.local/ns/default/sa/vault-auth"
    assert verified.expires_at is None


def test_an_allowed_legacy_token_still_needs_a_known_issuer(
    tmp_path: Path, clock: FakeClock, keys: Keys
) -> None:
    verifier = make_verifier(file_source(tmp_path, keys.rsa, clock=clock), clock, allow_legacy=True)
    token = keys.rsa.sign({**legacy_claims(), "iss": "https://elsewhere"})

    assert refusal(verifier, token).reason == "token_wrong_issuer"


# --- refusals ---

Mint = Callable[[Keys], str]
HOUR_AGO = NOW - timedelta(hours=2)


def _forged_payload(k: Keys) -> str:
    honest = k.rsa.sign(projected_claims("payments", "api"))
    return with_payload(honest, b64json(projected_claims("kube-system", "admin")))


def _tampered_signature(k: Keys) -> str:
    header, payload, signature = k.rsa.sign(projected_claims()).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[0] ^= 0x01
    return f"{header}.{payload}.{b64url(bytes(raw))}"


def _truncated_signature(k: Keys) -> str:
    header, payload, signature = k.rsa.sign(projected_claims()).split(".")
    raw = base64.urlsafe_b64decode(signature + "==")
    return f"{header}.{payload}.{b64url(raw[:-16])}"


def _hs256_with_public_pem(k: Keys) -> str:
    return hmac_token(projected_claims(), k.rsa.public_pem(), kid="rsa-1")


REFUSALS: list[Any] = [
    # --- forgeries ---
    pytest.param(
        lambda k: k.other.sign(projected_claims(), kid="rsa-1"),
        "token_bad_signature",
        "does not verify",
        id="other-key-same-kid",
    ),
    pytest.param(
        lambda k: k.other.sign(projected_claims()),
        "token_unknown_key",
        "no verification key with kid 'rsa-2'",
        id="other-key-unknown-kid",
    ),
    pytest.param(
        lambda k: SigningKey(k.other.private, None).sign(projected_claims()),
        "token_bad_signature",
        "does not verify",
        id="other-key-no-kid",
    ),
    pytest.param(_forged_payload, "token_bad_signature", "does not verify", id="payload-swapped"),
    pytest.param(
        _tampered_signature, "token_bad_signature", "does not verify", id="signature-tampered"
    ),
    pytest.param(
        _truncated_signature, "token_bad_signature", "does not verify", id="signature-truncated"
    ),
    pytest.param(
        lambda k: k.rsa.sign(projected_claims())[:-1],
        "token_malformed",
        "is malformed",
        id="signature-bad-base64",
    ),
    pytest.param(
        lambda k: unsigned_token(projected_claims()),
        "token_algorithm_refused",
        "'none' is not allowed",
        id="alg-none",
    ),
    pytest.param(
        lambda k: unsigned_token(projected_claims(), kid=None),
        "token_algorithm_refused",
        "'none' is not allowed",
        id="alg-none-no-kid",
    ),
    pytest.param(
        _hs256_with_public_pem,
        "token_algorithm_refused",
        "'HS256' is not allowed",
        id="hs256-public-key-as-secret",
    ),
    pytest.param(
        lambda k: f"{b64json({'kid': 'rsa-1'})}.{b64json(projected_claims())}.",
        "token_algorithm_refused",
        "None is not allowed",
        id="no-alg",
    ),
    pytest.param(
        lambda k: k.rsa.sign(projected_claims(), kid="ec-1"),
        "token_unknown_key",
        "kid 'ec-1'",
        id="rs256-with-kid-of-ec-key",
    ),
    # --- lifetime ---
    pytest.param(
        lambda k: k.rsa.sign(projected_claims(now=HOUR_AGO)),
        "token_expired",
        "token expired at 2026-11-21T11:00:00Z",
        id="expired",
    ),
    pytest.param(
        lambda k: k.rsa.sign(projected_claims(now=NOW - timedelta(seconds=3631))),
        "token_expired",
        "expired at 2026-11-21T11:59:29Z",
        id="expired-beyond-leeway",
    ),
    pytest.param(
        lambda k: k.rsa.sign({**projected_claims(), "nbf": int(NOW.timestamp()) + 300}),
        "token_not_yet_valid",
        "not valid before 2026-11-21T12:05:00Z",
        id="nbf-future",
    ),
    pytest.param(
        lambda k: k.rsa.sign({**projected_claims(), "iat": int(NOW.timestamp()) + 300}),
        "token_not_yet_valid",
        "issued in the future",
        id="iat-future",
    ),
    pytest.param(
        lambda k: k.rsa.sign(without(projected_claims(), "exp")),
        "token_missing_claim",
        "no 'exp' claim",
        id="no-exp",
    ),
    pytest.param(
        lambda k: k.rsa.sign(without(projected_claims(), "iat")),
        "token_missing_claim",
        "no 'iat' claim",
        id="no-iat",
    ),
    pytest.param(
        lambda k: k.rsa.sign({**projected_claims(), "exp": "soon"}),
        "token_malformed",
        "'exp' is not a number",
        id="exp-not-a-number",
    ),
    pytest.param(
        lambda k: k.rsa.sign({**projected_claims(), "exp": True}),
        "token_malformed",
        "'exp' is not a number",
        id="exp-boolean",
    ),
    pytest.param(
        lambda k: k.rsa.sign({**projected_claims(), "exp": 10**30}),
        "token_malformed",
        "'exp' is out of range",
        id="exp-huge",
    ),
    # --- issuer and audience ---
    pytest.param(
        lambda k: k.rsa.sign(projected_claims(issuer="https://evil.example")),
        "token_wrong_issuer",
        f"token issuer 'https://evil.example' is not '{ISSUER}'",
        id="wrong-issuer",
    ),
    pytest.param(
        lambda k: k.rsa.sign(projected_claims(issuer="kubernetes/serviceaccount")),
        "token_wrong_issuer",
        "is not",
        id="legacy-issuer-on-projected-token",
    ),
    pytest.param(
        lambda k: k.rsa.sign(without(projected_claims(), "iss")),
        "token_missing_claim",
        "no 'iss' claim",
        id="no-issuer",
    ),
    pytest.param(
        lambda k: k.rsa.sign(projected_claims(audience="vault")),
        "token_wrong_audience",
        "token audience ['vault'] does not include istio-ca",
        id="wrong-audience",
    ),
    pytest.param(
        lambda k: k.rsa.sign(projected_claims(audience=["a", "b"])),
        "token_wrong_audience",
        "['a', 'b'] does not include istio-ca",
        id="wrong-audiences",
    ),
    pytest.param(
        lambda k: k.rsa.sign(without(projected_claims(), "aud")),
        "token_missing_claim",
        "no 'aud' claim",
        id="no-audience",
    ),
    pytest.param(
        lambda k: k.rsa.sign({**projected_claims(), "aud": [1]}),
        "token_wrong_audience",
        "[1]",
        id="audience-not-strings",
    ),
    # --- subject and Kubernetes claims ---
    pytest.param(
        lambda k: k.rsa.sign(
            {**projected_claims("a", "api"), "sub": "system:serviceaccount:b:api"}
        ),
        "token_claims_mismatch",
        "'b'",
        id="subject-names-other-namespace",
    ),
    pytest.param(
        lambda k: k.rsa.sign({**projected_claims(), "sub": "system:admin"}),
        "token_bad_subject",
        "not a Kubernetes service account",
        id="not-a-service-account",
    ),
    pytest.param(
        lambda k: k.rsa.sign({**projected_claims(), "sub": 5}),
        "token_bad_subject",
        "not a string",
        id="subject-not-string",
    ),
    pytest.param(
        lambda k: k.rsa.sign(without(projected_claims(), "sub")),
        "token_missing_claim",
        "no 'sub' claim",
        id="no-subject",
    ),
    pytest.param(
        lambda k: k.rsa.sign(without(projected_claims(), "kubernetes.io")),
        "token_missing_claim",
        "'kubernetes.io'",
        id="no-kubernetes-claim",
    ),
    pytest.param(
        lambda k: SigningKey(k.rsa.private, None).sign(legacy_claims()),
        "token_legacy_refused",
        "legacy",
        id="legacy",
    ),
    # --- not a JWT ---
    pytest.param(lambda k: "", "token_malformed", "empty", id="empty"),
    pytest.param(lambda k: "not-a-jwt", "token_malformed", "not a JWT", id="no-dots"),
    pytest.param(lambda k: "a.b", "token_malformed", "not a JWT", id="two-parts"),
    pytest.param(lambda k: "a.b.c.d.e", "token_malformed", "not a JWT", id="jwe-shape"),
    pytest.param(lambda k: "..", "token_malformed", "header", id="empty-parts"),
    pytest.param(lambda k: "!!!.e30.c2ln", "token_malformed", "header", id="bad-base64"),
    pytest.param(
        lambda k: f"{b64url(b'not json')}.e30.c2ln",
        "token_malformed",
        "header",
        id="header-not-json",
    ),
    pytest.param(
        lambda k: f"{b64json(['RS256'])}.e30.c2ln",
        "token_malformed",
        "header",
        id="header-not-object",
    ),
    pytest.param(
        lambda k: f"{b64json({'alg': 'RS256', 'kid': 7})}.e30.c2ln",
        "token_malformed",
        "Key ID",
        id="kid-not-string",
    ),
    pytest.param(
        lambda k: with_payload(k.rsa.sign(projected_claims()), b64url(b"not json")),
        "token_malformed",
        "payload",
        id="payload-not-json",
    ),
    pytest.param(
        lambda k: with_payload(k.rsa.sign(projected_claims()), b64json([1, 2])),
        "token_malformed",
        "payload",
        id="payload-not-object",
    ),
    pytest.param(lambda k: "e" * 20_000, "token_malformed", "at most", id="huge"),
    pytest.param(lambda k: "\u00e9.\u00e9.\u00e9", "token_malformed", "non-ASCII", id="non-ascii"),
    pytest.param(lambda k: "\udcff.a.b", "token_malformed", "non-ASCII", id="lone-surrogate"),
    pytest.param(
        lambda k: k.rsa.sign(projected_claims()) + "\n",
        "token_malformed",
        "is malformed",
        id="trailing-newline",
    ),
]


@pytest.mark.parametrize(("mint", "reason", "message"), REFUSALS)
def test_a_bad_token_is_refused_with_its_reason_and_never_echoed(
    verifier: JwtVerifier, keys: Keys, mint: Mint, reason: str, message: str
) -> None:
    token = mint(keys)

    error = refusal(verifier, token)

    assert isinstance(error, Unauthenticated)
    assert error.reason == reason
    assert message in error.message
    assert error.message == str(error)
    if token:
        assert token not in error.message
        for segment in token.split("."):
            if len(segment) >= 16:
                assert segment not in error.message


def test_the_algorithm_allow_list_is_checked_before_any_key(
    tmp_path: Path, clock: FakeClock, keys: Keys
) -> None:
    verifier = make_verifier(
        file_source(tmp_path, keys.rsa, keys.ec, clock=clock), clock, algorithms=("ES256",)
    )

    error = refusal(verifier, keys.rsa.sign(projected_claims()))

    assert error.reason == "token_algorithm_refused"
    assert "allowed: ES256" in error.message
    assert verify(verifier, keys.ec.sign(projected_claims())).identity.namespace == "payments"


@pytest.mark.parametrize(
    ("algorithms", "audiences"),
    [
        pytest.param(("RS256", "HS256"), (AUDIENCE,), id="hmac"),
        pytest.param(("none",), (AUDIENCE,), id="none"),
        pytest.param(("EdDSA",), (AUDIENCE,), id="unsupported"),
        pytest.param((), (AUDIENCE,), id="no-algorithms"),
        pytest.param(("RS256",), (), id="no-audiences"),
    ],
)
def test_the_verifier_refuses_unsafe_configuration(
    tmp_path: Path,
    clock: FakeClock,
    keys: Keys,
    algorithms: tuple[str, ...],
    audiences: tuple[str, ...],
) -> None:
    source = file_source(tmp_path, keys.rsa, clock=clock)
    with pytest.raises(ConfigurationError):
        make_verifier(source, clock, algorithms=algorithms, audiences=audiences)


# --- key rotation and refetch rules, against a real HTTP server ---


def url_verifier(url: str, clock: FakeClock, **options: Any) -> JwtVerifier:
    source = KeySource(
        JwksUrlLoader(url, **options), refresh_interval=INTERVAL, clock=clock.monotonic
    )
    asyncio.run(source.start())
    return make_verifier(source, clock)


def test_a_rotated_key_is_picked_up_after_the_refresh_interval(
    clock: FakeClock, keys: Keys
) -> None:
    rotated = rsa_key("rsa-rotated")
    token = rotated.sign(projected_claims())
    with document_server() as server:
        server.put("/openid/v1/jwks", jwks(keys.rsa))
        verifier = url_verifier(server.url + "/openid/v1/jwks", clock)

        # The API server signs with a key its JWKS does not list yet.
        assert refusal(verifier, token).reason == "token_unknown_key"
        # It now lists the key, but the last fetch was less than the interval ago.
        server.put("/openid/v1/jwks", jwks(keys.rsa, rotated))
        assert refusal(verifier, token).reason == "token_unknown_key"
        assert server.requests["/openid/v1/jwks"] == 1

        clock.advance(INTERVAL)
        verified = verify(verifier, token)

        assert verified.identity.service_account == "api"
        assert server.requests["/openid/v1/jwks"] == 2
        # Tokens of the old key still verify, from the same verifier, without another fetch.
        assert verify(verifier, keys.rsa.sign(projected_claims())).identity.namespace == "payments"
        assert server.requests["/openid/v1/jwks"] == 2


def test_a_flood_of_unknown_kids_causes_at_most_one_fetch(clock: FakeClock, keys: Keys) -> None:
    forged = [keys.other.sign(projected_claims(), kid=secrets.token_hex(8)) for _ in range(100)]
    with document_server() as server:
        server.put("/jwks", jwks(keys.rsa))
        verifier = url_verifier(server.url + "/jwks", clock)
        clock.advance(INTERVAL)

        async def flood() -> list[BaseException | VerifiedToken]:
            return await asyncio.gather(
                *(verifier.verify(t) for t in forged), return_exceptions=True
            )

        results = asyncio.run(flood())
        for token in forged:  # and again, one after another
            assert refusal(verifier, token).reason == "token_unknown_key"

        assert server.requests["/jwks"] == 2  # the start, and one refresh for the whole flood
        assert all(isinstance(r, Unauthenticated) for r in results)
        assert {r.reason for r in results if isinstance(r, Unauthenticated)} == {
            "token_unknown_key"
        }


def test_a_bad_signature_under_a_known_kid_fetches_nothing(clock: FakeClock, keys: Keys) -> None:
    with document_server() as server:
        server.put("/jwks", jwks(keys.rsa))
        verifier = url_verifier(server.url + "/jwks", clock)
        clock.advance(INTERVAL)

        error = refusal(verifier, keys.other.sign(projected_claims(), kid="rsa-1"))

        assert error.reason == "token_bad_signature"
        assert server.requests["/jwks"] == 1


def test_without_keys_verification_is_unavailable_until_a_fetch_succeeds(
    clock: FakeClock, keys: Keys
) -> None:
    token = keys.rsa.sign(projected_claims())
    with document_server() as server:
        server.put("/jwks", {"message": "service unavailable"}, status=503)
        verifier = url_verifier(server.url + "/jwks", clock)

        error = refusal(verifier, token)
        assert isinstance(error, Unavailable)
        assert error.reason == "jwks_unavailable"
        assert "HTTP 503" in error.message
        assert token not in error.message

        server.put("/jwks", jwks(keys.rsa))
        assert isinstance(refusal(verifier, token), Unavailable)  # rate-limited: no fetch yet
        assert server.requests["/jwks"] == 1
        clock.advance(INTERVAL)

        assert verify(verifier, token).identity.service_account == "api"
        assert server.requests["/jwks"] == 2


def test_oidc_discovery_end_to_end_with_the_issuer_from_the_discovery_url(
    clock: FakeClock, keys: Keys
) -> None:
    with document_server() as server:
        server.put(
            "/.well-known/openid-configuration",
            {"issuer": server.url, "jwks_uri": server.url + "/openid/v1/jwks"},
        )
        server.put("/openid/v1/jwks", jwks(keys.rsa))
        settings = Settings(oidc_discovery=server.url, jwt_audiences=["istio-ca"])
        verifier = jwt_verifier_from_settings(settings, clock=clock.now)
        assert verifier.key_source.description == f"OIDC discovery at {server.url}"
        asyncio.run(verifier.key_source.start())

        verified = verify(verifier, keys.rsa.sign(projected_claims(issuer=server.url)))

        assert str(verified.identity.spiffe_id) == "spiffe://cluster.local/ns/payments/sa/api"
        assert refusal(verifier, keys.rsa.sign(projected_claims())).reason == "token_wrong_issuer"


def test_https_jwks_verifies_with_the_ca_file_and_is_unavailable_without(
    tmp_path: Path, clock: FakeClock, keys: Keys
) -> None:
    tls = make_tls(tmp_path)
    token = keys.rsa.sign(projected_claims())
    with document_server(tls.server_context) as server:
        server.put("/jwks", jwks(keys.rsa))
        trusted = url_verifier(server.url + "/jwks", clock, ca_file=tls.ca_file)
        untrusted = url_verifier(server.url + "/jwks", clock)

        assert verify(trusted, token).identity.service_account == "api"
        error = refusal(untrusted, token)

    assert isinstance(error, Unavailable)
    assert error.reason == "jwks_unavailable"
    assert "CERTIFICATE_VERIFY_FAILED" in error.message


# --- settings ---


def test_settings_without_an_issuer_are_refused(tmp_path: Path, keys: Keys) -> None:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(jwks(keys.rsa)))

    with pytest.raises(ConfigurationError) as caught:
        jwt_verifier_from_settings(Settings(jwks=str(jwks_file)))

    assert caught.value.reason == "jwt_issuer_missing"
    assert "--jwt-issuer" in caught.value.message


def test_settings_build_a_working_verifier(tmp_path: Path, clock: FakeClock, keys: Keys) -> None:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(jwks(keys.rsa)))
    settings = Settings(
        jwks=str(jwks_file),
        jwt_issuer=ISSUER,
        jwt_audiences=["meshca"],
        jwt_leeway=f"{int(LEEWAY.total_seconds())}s",
        trust_domain="example.org",
    )
    verifier = jwt_verifier_from_settings(settings, clock=clock.now)
    asyncio.run(verifier.key_source.start())

    token = keys.rsa.sign(projected_claims(audience="meshca"))
    assert str(verify(verifier, token).identity.spiffe_id) == (
        "spiffe://example.org/ns/payments/sa/api"
    )
    # The server passes the trust domain of its CA, which wins over the settings'.
    other = jwt_verifier_from_settings(settings, trust_domain=TRUST_DOMAIN, clock=clock.now)
    asyncio.run(other.key_source.start())
    assert str(verify(other, token).identity.spiffe_id) == (
        "spiffe://cluster.local/ns/payments/sa/api"
    )
