"""The trust bundle in the SPIFFE trust-domain bundle format (a JWK Set) and in PEM."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe.bundle.x509_bundle.x509_bundle import X509Bundle

from ca.core.authority import build_root
from ca.core.bundle import TrustBundle
from ca.core.keys import CA_KEY_TYPES, KeyType, spki_der
from tests.core.builders import CaBank, KeyBank
from tests.factories import TRUST_DOMAIN

PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def _root(key_bank: KeyBank, ca_bank: CaBank, key_type: KeyType) -> x509.Certificate:
    if key_type in CA_KEY_TYPES:
        return ca_bank.ca(key_type).root.certificate
    return build_root(
        TRUST_DOMAIN,
        key_bank.key(key_type, "root"),
        now=ca_bank.created,
        ttl=timedelta(days=365),
    ).certificate


@pytest.mark.parametrize(
    ("key_type", "kty"),
    [
        pytest.param(KeyType.EC_P256, "EC", id="ec-p256"),
        pytest.param(KeyType.EC_P384, "EC", id="ec-p384"),
        pytest.param(KeyType.RSA_2048, "RSA", id="rsa-2048"),
        pytest.param(KeyType.RSA_3072, "RSA", id="rsa-3072"),
        pytest.param(KeyType.ED25519, "OKP", id="ed25519"),
    ],
)
def test_each_root_is_an_x509_svid_jwk_carrying_the_root_certificate(
    key_bank: KeyBank, ca_bank: CaBank, key_type: KeyType, kty: str
) -> None:
    root = _root(key_bank, ca_bank, key_type)
    bundle = TrustBundle(TRUST_DOMAIN, sequence=7, roots=(root,), signing_key_id=None)

    (jwk,) = bundle.jwks()["keys"]

    assert jwk["use"] == "x509-svid"
    assert jwk["kty"] == kty
    assert jwk["x5c"] == [base64.b64encode(root.public_bytes(serialization.Encoding.DER)).decode()]
    assert not PRIVATE_JWK_MEMBERS & jwk.keys()
    # The JWK's key material is the root's public key.
    assert spki_der(jwt.PyJWK(jwk).key) == spki_der(root.public_key())


def test_jwk_set_lists_every_root_in_order_with_sequence_and_refresh_hint(
    ca_bank: CaBank,
) -> None:
    roots = tuple(ca_bank.ca(t).root.certificate for t in (KeyType.EC_P256, KeyType.RSA_2048))
    bundle = TrustBundle(TRUST_DOMAIN, sequence=42, roots=roots, signing_key_id="abc")

    document = bundle.jwks(refresh_hint_seconds=120)

    assert [
        x509.load_der_x509_certificate(base64.b64decode(k["x5c"][0])) for k in document["keys"]
    ] == list(roots)
    assert document["spiffe_sequence"] == 42
    assert document["spiffe_refresh_hint"] == 120
    assert json.loads(bundle.jwks_json())["spiffe_sequence"] == 42
    assert json.loads(bundle.jwks_json()) == bundle.jwks()


def test_pem_bundle_is_readable_by_py_spiffe(ca_bank: CaBank) -> None:
    roots = tuple(ca_bank.ca(t).root.certificate for t in (KeyType.EC_P384, KeyType.RSA_3072))
    bundle = TrustBundle(TRUST_DOMAIN, sequence=1, roots=roots, signing_key_id=None)

    parsed = X509Bundle.parse(TRUST_DOMAIN, bundle.pem().encode())

    assert parsed.x509_authorities == set(roots)
    assert x509.load_pem_x509_certificates(bundle.pem().encode()) == list(roots)
