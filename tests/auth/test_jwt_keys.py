"""Key sources: PEM files, JWKS files, JWKS URLs and OIDC discovery, and when they refetch."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm

from ca.auth.jwt_keys import (
    JwksFileLoader,
    JwksUrlLoader,
    KeySet,
    KeySource,
    OidcDiscoveryLoader,
    PemFileLoader,
    UnusableKeyError,
    check_url,
    key_source_from_settings,
    keys_from_jwks,
    keys_from_pem,
    verification_key,
)
from ca.core.errors import ConfigurationError
from ca.settings import Settings
from tests.auth.jwt_helpers import (
    INTERVAL,
    NOW,
    FakeClock,
    SigningKey,
    document_server,
    jwks,
    make_tls,
    rsa_key,
    write_jwks,
    write_pem,
)

RSA_ALGS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}


def source_for(loader: Any, clock: FakeClock) -> KeySource:
    return KeySource(loader, refresh_interval=INTERVAL, clock=clock.monotonic)


# --- PEM ---


def test_a_pem_public_key_has_no_kid_and_verifies_every_rsa_algorithm(
    rsa_signer: SigningKey,
) -> None:
    [key] = keys_from_pem(rsa_signer.public_pem())

    assert key.kid is None
    assert key.algorithms == RSA_ALGS
    assert key.key.public_numbers() == rsa_signer.public.public_numbers()


def test_a_certificate_contributes_its_public_key(ec_signer: SigningKey) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_signer.public)
        .serial_number(1)
        .not_valid_before(NOW.replace(year=2017))  # long expired: only the key matters
        .not_valid_after(NOW.replace(year=2018))
        .sign(ec_signer.private, hashes.SHA256())
    )

    [key] = keys_from_pem(cert.public_bytes(serialization.Encoding.PEM))

    assert key.algorithms == {"ES256"}
    assert key.key.public_numbers() == ec_signer.public.public_numbers()


def test_a_pem_file_may_hold_several_keys(
    tmp_path: Path, clock: FakeClock, rsa_signer: SigningKey, ec_signer: SigningKey
) -> None:
    source = source_for(
        PemFileLoader([write_pem(tmp_path / "k.pem", rsa_signer, ec_signer)]), clock
    )

    assert asyncio.run(source.start())

    assert source.keys is not None
    assert len(source.keys.without_kid) == 2
    assert source.keys.by_kid == {}


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        pytest.param(b"", "no PEM", id="empty"),
        pytest.param(b"hello", "no PEM", id="not-pem"),
        pytest.param(
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "cannot be parsed",
            id="garbage-key",
        ),
        pytest.param(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "unsupported PEM block",
            id="csr",
        ),
    ],
)
def test_unusable_pem_content_is_refused(content: bytes, complaint: str) -> None:
    with pytest.raises(UnusableKeyError, match=complaint):
        keys_from_pem(content)


def test_a_private_key_file_is_refused_with_advice(tmp_path: Path, clock: FakeClock) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "sa.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    with pytest.raises(ConfigurationError) as caught:
        asyncio.run(source_for(PemFileLoader([path]), clock).start())

    assert caught.value.reason == "jwt_public_key_invalid"
    assert "-pubout" in caught.value.message
    assert str(path) in caught.value.message


def test_a_missing_pem_file_fails_the_start(tmp_path: Path, clock: FakeClock) -> None:
    with pytest.raises(ConfigurationError) as caught:
        asyncio.run(source_for(PemFileLoader([tmp_path / "absent.pem"]), clock).start())

    assert caught.value.reason == "jwt_public_key_invalid"
    assert "absent.pem" in caught.value.message


@pytest.mark.parametrize(
    "public_key",
    [
        pytest.param(rsa.generate_private_key(65537, 1024).public_key(), id="rsa-1024"),
        pytest.param(ec.generate_private_key(ec.SECP256K1()).public_key(), id="secp256k1"),
        pytest.param(ed25519.Ed25519PrivateKey.generate().public_key(), id="ed25519"),
    ],
)
def test_weak_or_unsupported_keys_are_refused(public_key: object) -> None:
    with pytest.raises(UnusableKeyError):
        verification_key(public_key)


# --- JWKS documents ---


def test_a_jwks_declared_alg_narrows_what_the_key_verifies(rsa_signer: SigningKey) -> None:
    keys = keys_from_jwks(
        {"keys": [rsa_signer.jwk(alg="RS256"), {**rsa_signer.jwk(), "kid": "any"}]}, "test"
    )

    assert keys.by_kid["rsa-1"].algorithms == {"RS256"}
    assert keys.by_kid["any"].algorithms == RSA_ALGS


def test_unusable_jwks_entries_are_skipped(
    rsa_signer: SigningKey, ec_signer: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    private = {**RSAAlgorithm.to_jwk(rsa_signer.private, as_dict=True), "kid": "private"}
    document = {
        "keys": [
            {**rsa_signer.jwk(), "kid": "enc", "use": "enc"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            private,
            {**rsa_signer.jwk(), "kid": 7},
            {**ec_signer.jwk(), "kid": "ec-as-rsa", "alg": "RS256"},
            "not an object",
            ec_signer.jwk(),
        ]
    }

    with caplog.at_level(logging.WARNING, logger="ca.auth.jwt_keys"):
        keys = keys_from_jwks(document, "test JWKS")

    assert set(keys.by_kid) == {"ec-1"}
    assert len([r for r in caplog.records if "skipping key" in r.getMessage()]) == 6


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"keys": []}, id="no-keys"),
        pytest.param({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, id="only-hmac"),
        pytest.param({"issuer": "x"}, id="not-a-jwks"),
        pytest.param([], id="array"),
    ],
)
def test_a_jwks_without_usable_keys_is_refused(document: object) -> None:
    with pytest.raises(UnusableKeyError):
        keys_from_jwks(document, "test")


def test_the_first_of_two_keys_sharing_a_kid_wins(
    rsa_signer: SigningKey, other_rsa_signer: SigningKey
) -> None:
    keys = keys_from_jwks(
        {"keys": [rsa_signer.jwk(), {**other_rsa_signer.jwk(), "kid": "rsa-1"}]}, "test"
    )

    assert keys.by_kid["rsa-1"].key.public_numbers() == rsa_signer.public.public_numbers()


def test_candidates_follow_the_kid_and_the_algorithm(
    rsa_signer: SigningKey, other_rsa_signer: SigningKey, ec_signer: SigningKey
) -> None:
    pem = verification_key(other_rsa_signer.public)
    keys = KeySet.of([*keys_from_jwks(jwks(rsa_signer, ec_signer), "t").by_kid.values(), pem], "t")

    assert [k.kid for k in keys.candidates("rsa-1", "RS256")] == ["rsa-1"]
    assert keys.candidates("rsa-1", "ES256") == ()  # a known kid never falls back
    assert keys.candidates("unknown", "RS256") == (pem,)  # an unknown kid tries kid-less keys
    assert keys.candidates("unknown", "ES256") == ()
    assert [k.kid for k in keys.candidates(None, "RS256")] == ["rsa-1", None]
    assert [k.kid for k in keys.candidates(None, "ES256")] == ["ec-1"]
    assert keys.knows("rsa-1")
    assert not keys.knows("unknown")
    assert not keys.knows(None)


def test_a_jwks_file_is_read_again_at_each_refresh(
    tmp_path: Path, clock: FakeClock, rsa_signer: SigningKey, other_rsa_signer: SigningKey
) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa_signer)
    source = source_for(JwksFileLoader(path), clock)
    asyncio.run(source.start())
    write_jwks(path, rsa_signer, other_rsa_signer)

    keys = asyncio.run(source.refresh())

    assert keys is not None
    assert set(keys.by_kid) == {"rsa-1", "rsa-2"}


def test_a_broken_jwks_file_fails_the_start_but_not_a_refresh(
    tmp_path: Path, clock: FakeClock, rsa_signer: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text("{not json")
    with pytest.raises(ConfigurationError) as caught:
        asyncio.run(source_for(JwksFileLoader(path), clock).start())
    assert caught.value.reason == "jwks_invalid"

    write_jwks(path, rsa_signer)
    source = source_for(JwksFileLoader(path), clock)
    asyncio.run(source.start())
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="ca.auth.jwt_keys"):
        keys = asyncio.run(source.refresh())

    assert keys is not None
    assert set(keys.by_kid) == {"rsa-1"}
    assert "keeping the 1 key(s)" in caplog.text
    assert source.last_error is not None


# --- JWKS over HTTP: refetch rules ---


def test_refresh_if_stale_fetches_at_most_once_per_interval(
    clock: FakeClock, rsa_signer: SigningKey
) -> None:
    with document_server() as server:
        server.put("/jwks", jwks(rsa_signer))
        source = source_for(JwksUrlLoader(server.url + "/jwks"), clock)
        assert asyncio.run(source.start())

        async def hammer() -> None:
            for _ in range(50):
                await source.refresh_if_stale()

        asyncio.run(hammer())
        assert server.requests["/jwks"] == 1

        clock.advance(INTERVAL)
        asyncio.run(hammer())
        assert server.requests["/jwks"] == 2
        assert source.fetches == 2


def test_concurrent_refreshes_share_one_fetch(clock: FakeClock, rsa_signer: SigningKey) -> None:
    with document_server() as server:
        server.put("/jwks", jwks(rsa_signer))
        source = source_for(JwksUrlLoader(server.url + "/jwks"), clock)

        async def together() -> list[KeySet | None]:
            return await asyncio.gather(*(source.refresh() for _ in range(20)))

        results = asyncio.run(together())

        assert server.requests["/jwks"] == 1
        assert all(r is results[0] and r is not None for r in results)


def test_a_failed_fetch_keeps_the_previous_keys(
    clock: FakeClock, rsa_signer: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    with document_server() as server:
        server.put("/jwks", jwks(rsa_signer))
        source = source_for(JwksUrlLoader(server.url + "/jwks"), clock)
        asyncio.run(source.start())
        before = source.keys
        server.put("/jwks", {"error": "overloaded"}, status=503)

        with caplog.at_level(logging.WARNING, logger="ca.auth.jwt_keys"):
            after = asyncio.run(source.refresh())

    assert after is before
    assert source.last_error is not None
    assert "HTTP 503" in source.last_error
    assert "keeping the 1 key(s) loaded before" in caplog.text


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        pytest.param(b"<html>", "not JSON", id="html"),
        pytest.param({"keys": []}, "no usable signature key", id="empty-jwks"),
        pytest.param(b"x" * (1024 * 1024 + 1), "document over", id="too-large"),
    ],
)
def test_a_bad_jwks_document_leaves_the_source_without_keys(
    clock: FakeClock, document: Any, complaint: str
) -> None:
    with document_server() as server:
        server.put("/jwks", document)
        source = source_for(JwksUrlLoader(server.url + "/jwks"), clock)

        assert asyncio.run(source.start()) is False

    assert source.keys is None
    assert source.last_error is not None
    assert complaint in source.last_error


def test_an_unreachable_server_leaves_the_source_without_keys(clock: FakeClock) -> None:
    with document_server() as server:
        url = server.url + "/jwks"
    source = source_for(JwksUrlLoader(url), clock)

    assert asyncio.run(source.start()) is False
    assert source.keys is None
    assert source.last_error is not None
    assert url in source.last_error


# --- OIDC discovery ---


@pytest.mark.parametrize("trailing_slash", [False, True], ids=["bare", "trailing-slash"])
def test_oidc_discovery_finds_the_jwks(
    clock: FakeClock, rsa_signer: SigningKey, trailing_slash: bool
) -> None:
    with document_server() as server:
        server.put(
            "/.well-known/openid-configuration",
            {"issuer": server.url, "jwks_uri": server.url + "/openid/v1/jwks"},
        )
        server.put("/openid/v1/jwks", jwks(rsa_signer))
        loader = OidcDiscoveryLoader(server.url + ("/" if trailing_slash else ""))
        source = source_for(loader, clock)

        assert asyncio.run(source.start())

    assert source.keys is not None
    assert set(source.keys.by_kid) == {"rsa-1"}
    assert server.requests == {"/.well-known/openid-configuration": 1, "/openid/v1/jwks": 1}


@pytest.mark.parametrize(
    ("discovery", "complaint"),
    [
        pytest.param({"issuer": "x"}, "names no jwks_uri", id="no-jwks-uri"),
        pytest.param({"jwks_uri": 5}, "names no jwks_uri", id="jwks-uri-not-string"),
        pytest.param({"jwks_uri": "http://10.0.0.1/jwks"}, "must be an https URL", id="plain"),
    ],
)
def test_a_bad_discovery_document_leaves_the_source_without_keys(
    clock: FakeClock, discovery: dict[str, Any], complaint: str
) -> None:
    with document_server() as server:
        server.put("/.well-known/openid-configuration", discovery)
        source = source_for(OidcDiscoveryLoader(server.url), clock)

        assert asyncio.run(source.start()) is False

    assert source.last_error is not None
    assert complaint in source.last_error


# --- HTTPS ---


def test_https_jwks_is_trusted_through_the_ca_file(
    tmp_path: Path, clock: FakeClock, rsa_signer: SigningKey
) -> None:
    tls = make_tls(tmp_path)
    with document_server(tls.server_context) as server:
        server.put("/jwks", jwks(rsa_signer))
        trusted = source_for(JwksUrlLoader(server.url + "/jwks", ca_file=tls.ca_file), clock)
        untrusted = source_for(JwksUrlLoader(server.url + "/jwks"), clock)

        assert asyncio.run(trusted.start())
        assert asyncio.run(untrusted.start()) is False

    assert trusted.keys is not None
    assert untrusted.keys is None
    assert untrusted.last_error is not None
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.last_error


def test_a_missing_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        JwksUrlLoader("https://127.0.0.1:1/jwks", ca_file=tmp_path / "absent.pem")

    assert caught.value.reason == "jwks_ca_file_invalid"


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        pytest.param("https://kubernetes.default.svc/openid/v1/jwks", True, id="https"),
        pytest.param("http://127.0.0.1:8080/jwks", True, id="http-loopback-v4"),
        pytest.param("http://[::1]:8080/jwks", True, id="http-loopback-v6"),
        pytest.param("http://localhost/jwks", True, id="http-localhost"),
        pytest.param("http://kubernetes.default.svc/jwks", False, id="http-remote"),
        pytest.param("file:///etc/jwks.json", False, id="file"),
        pytest.param("https:///jwks", False, id="no-host"),
    ],
)
def test_keys_are_fetched_over_https_or_loopback_only(url: str, accepted: bool) -> None:
    if accepted:
        assert check_url(url, "--jwks") == url
    else:
        with pytest.raises(ConfigurationError) as caught:
            check_url(url, "--jwks")
        assert caught.value.reason == "jwks_insecure_url"


# --- settings ---


def settings(**values: Any) -> Settings:
    return Settings(jwt_issuer="https://issuer", **values)


def test_settings_without_keys_name_the_three_flags() -> None:
    with pytest.raises(ConfigurationError) as caught:
        key_source_from_settings(settings())

    assert caught.value.reason == "jwt_keys_missing"
    for flag in ("--jwks", "--jwt-public-key", "--oidc-discovery"):
        assert flag in caught.value.message


def test_settings_with_two_key_sources_are_ambiguous() -> None:
    with pytest.raises(ConfigurationError) as caught:
        key_source_from_settings(
            settings(jwks="/etc/jwks.json", oidc_discovery="https://kubernetes.default.svc")
        )

    assert caught.value.reason == "jwt_keys_ambiguous"
    assert "--jwks, --oidc-discovery" in caught.value.message


@pytest.mark.parametrize(
    ("values", "description"),
    [
        pytest.param(
            {"jwks": "/etc/meshca/jwks.json"}, "JWKS file /etc/meshca/jwks.json", id="file"
        ),
        pytest.param(
            {"jwks": "https://k8s/openid/v1/jwks"}, "JWKS at https://k8s/openid/v1/jwks", id="url"
        ),
        pytest.param(
            {"jwt_public_keys": ["/a.pem", "/b.pem"]}, "PEM file(s) /a.pem, /b.pem", id="pem"
        ),
        pytest.param(
            {"oidc_discovery": "https://k8s/"}, "OIDC discovery at https://k8s", id="oidc"
        ),
    ],
)
def test_settings_choose_the_key_source(values: dict[str, Any], description: str) -> None:
    source = key_source_from_settings(settings(**values, jwks_refresh_interval="1m"))

    assert source.description == description
    assert source.keys is None


def test_a_rotation_is_picked_up_by_a_new_key_appearing(
    clock: FakeClock, rsa_signer: SigningKey
) -> None:
    new = rsa_key("rsa-new")
    with document_server() as server:
        server.put("/jwks", jwks(rsa_signer))
        source = source_for(JwksUrlLoader(server.url + "/jwks"), clock)
        asyncio.run(source.start())
        server.put("/jwks", jwks(rsa_signer, new))
        clock.advance(INTERVAL)

        keys = asyncio.run(source.refresh_if_stale())

    assert keys is not None
    assert set(keys.by_kid) == {"rsa-1", "rsa-new"}
