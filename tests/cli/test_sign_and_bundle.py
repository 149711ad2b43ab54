"""``meshca ca sign`` (offline issuance, same policy and ledger as the API) and ``meshca root
bundle``, on the shared CA of ``ledger_ca``."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.cli.conftest import LEGACY, PAY_API, PAY_WEB, WEB, LedgerCa
from tests.cli.helpers import (
    ADMIN_REQUESTER,
    assert_error,
    is_ca,
    openssl_verify,
    pem_certs,
    uri_sans,
)


@pytest.mark.parametrize("name", ["A", "B", "C", "D"])
def test_sign_prints_leaf_intermediate_root_that_openssl_verifies(
    ledger_ca: LedgerCa, name: str
) -> None:
    issued = ledger_ca.issued[name]
    leaf, intermediate, root = issued.chain
    assert uri_sans(leaf) == [issued.spiffe_id]
    assert not is_ca(leaf)
    assert leaf.subject == x509.Name([])
    assert leaf.issuer == intermediate.subject
    assert is_ca(intermediate)
    assert intermediate.issuer == root.subject
    assert [root] == pem_certs(ledger_ca.root_pem)
    openssl_verify(ledger_ca.path, issued.chain, ledger_ca.root_pem)
    assert issued.result.stderr == (
        f"issued serial {issued.serial} for {issued.spiffe_id}, valid until "
        f"{leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}\n"
    )


def test_out_writes_the_chain_to_the_file_and_nothing_to_stdout(ledger_ca: LedgerCa) -> None:
    issued = ledger_ca.issued["A"]
    assert issued.result.stdout == ""
    text = (ledger_ca.path / "A-chain.pem").read_text()
    assert text.count("-----BEGIN CERTIFICATE-----") == 3
    assert text == "".join(
        c.public_bytes(serialization.Encoding.PEM).decode() for c in issued.chain
    )


@pytest.mark.parametrize(
    ("name", "lifetime"),
    [("A", timedelta(hours=1)), ("B", timedelta(hours=48)), ("C", timedelta(hours=24))],
)
def test_ttl_sets_the_lifetime_and_the_default_is_a_day(
    ledger_ca: LedgerCa, name: str, lifetime: timedelta
) -> None:
    leaf = ledger_ca.issued[name].chain[0]
    issued_at = leaf.not_valid_after_utc - lifetime
    # NotBefore is backdated by at most a minute (and never before the intermediate's start).
    backdate = issued_at - leaf.not_valid_before_utc
    assert timedelta(0) <= backdate <= timedelta(seconds=61)


def test_the_rsa_csr_gets_an_rsa_leaf(ledger_ca: LedgerCa) -> None:
    leaf = ledger_ca.issued["D"].chain[0]
    assert uri_sans(leaf) == [LEGACY]
    assert leaf.public_key().key_size == 2048  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "X1",
            f"CSR asks for 'spiffe://cluster.local/ns/default/sa/db' but the caller is {WEB}",
        ),
        ("X2", "requested TTL of 8640000s exceeds the maximum of 7776000s"),
        ("X3", "requested TTL of 10800s exceeds the maximum of 7200s"),
    ],
    ids=["wrong-san", "ttl-over-default-max", "ttl-over-max-from-env"],
)
def test_refused_requests_exit_4_with_the_precise_reason(
    ledger_ca: LedgerCa, name: str, message: str
) -> None:
    result = ledger_ca.denied[name]
    assert assert_error(result, 4) == message
    assert result.stdout == ""


def test_refusals_are_in_the_ledger_with_their_reason(ledger_ca: LedgerCa) -> None:
    rows = json.loads(ledger_ca.meshca("audit", "denied", "--format", "json").stdout)
    got = [
        (r["spiffe_id"], r["reason"], r["error_type"], r["requested_ttl_seconds"], r["message"])
        for r in rows
    ]
    reason = {n: assert_error(ledger_ca.denied[n], 4) for n in ("X1", "X2", "X3")}
    assert got == [
        (PAY_API, "ttl_too_long", "InvalidRequest", 3 * 3600, reason["X3"]),
        (PAY_WEB, "ttl_too_long", "InvalidRequest", 100 * 86400, reason["X2"]),
        (WEB, "csr_identity_mismatch", "PermissionDenied", None, reason["X1"]),
    ]
    assert {r["requester"] for r in rows} == {ADMIN_REQUESTER}
    assert len({r["request_id"] for r in rows}) == 3


def test_root_bundle_pem_is_the_root_of_every_chain(ledger_ca: LedgerCa) -> None:
    (root,) = pem_certs(ledger_ca.root_pem)
    assert root.subject == root.issuer
    assert uri_sans(root) == ["spiffe://cluster.local"]
    assert all(issued.chain[-1] == root for issued in ledger_ca.issued.values())
    assert ledger_ca.root_pem == root.public_bytes(serialization.Encoding.PEM).decode()


def test_root_bundle_jwks_is_a_spiffe_bundle(ledger_ca: LedgerCa) -> None:
    bundle = json.loads(ledger_ca.meshca("root", "bundle", "--format", "jwks").stdout)
    (root,) = pem_certs(ledger_ca.root_pem)
    assert bundle["spiffe_sequence"] == 1
    (key,) = bundle["keys"]
    assert key["use"] == "x509-svid"
    assert key["kty"] == "EC"
    assert key["crv"] == "P-256"
    (der,) = key["x5c"]
    assert base64.b64decode(der) == root.public_bytes(serialization.Encoding.DER)
    numbers = root.public_key().public_numbers()  # type: ignore[union-attr]
    x = base64.urlsafe_b64decode(key["x"] + "==")
    assert int.from_bytes(x, "big") == numbers.x
