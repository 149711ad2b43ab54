"""CreateCertificate's happy path over real TLS gRPC, on SQLite and PostgreSQL: the chain an
Istio agent gets, the SVID in it, the root it chains to, and the ledger row behind it."""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from spiffe import X509Svid

from ca.api import methods
from ca.core.keys import KeyType, generate_private_key, key_id, public_key_sha256
from ca.core.records import IssuedRecord
from ca.server.server_tls import SERVER_REQUESTER
from tests.factories import make_csr
from tests.server.conftest import (
    Served,
    certificates,
    pem_key,
    serial_of,
    spiffe_id,
    uri_sans,
)

BACKDATE = timedelta(seconds=60)  # the default NotBefore backdating
PEER = re.compile(r"^ipv4:127\.0\.0\.1:\d+$")


def _verify_link(child: x509.Certificate, parent: x509.Certificate) -> None:
    key = parent.public_key()
    assert child.issuer == parent.subject
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(
            child.signature, child.tbs_certificate_bytes, ec.ECDSA(child.signature_hash_algorithm)
        )
    else:
        assert isinstance(key, rsa.RSAPublicKey)
        key.verify(
            child.signature,
            child.tbs_certificate_bytes,
            padding.PKCS1v15(),
            child.signature_hash_algorithm,
        )


def _assert_validity(
    leaf: x509.Certificate, issuer: x509.Certificate, row: IssuedRecord, ttl: timedelta
) -> None:
    issued_at = row.issued_at.replace(microsecond=0)
    assert leaf.not_valid_after_utc == issued_at + ttl
    assert leaf.not_valid_before_utc == max(issued_at - BACKDATE, issuer.not_valid_before_utc)
    assert row.not_before == leaf.not_valid_before_utc
    assert row.not_after == leaf.not_valid_after_utc


def _row(served: Served, serial: str) -> IssuedRecord:
    rows = [r for r in served.issued_rows() if r.serial == serial]
    assert len(rows) == 1, f"ledger rows for serial {serial}: {rows}"
    return rows[0]


def test_issues_an_x509_svid_chain_recorded_in_the_ledger(
    db_url: str, serve: Callable[..., Served]
) -> None:
    served = serve(db_url)
    key = generate_private_key(KeyType.EC_P256)
    token = served.minter.mint("payments", "api", pod_name="api-7f9c", pod_uid="uid-1234")

    chain = served.ca.create_certificate(make_csr(key), token, validity_seconds=3600)

    # leaf first, then the intermediate, root last; each signed by the next
    assert len(chain) == 3
    assert all(pem.startswith("-----BEGIN CERTIFICATE-----") for pem in chain)
    leaf, intermediate, root = certificates(chain)
    _verify_link(leaf, intermediate)
    _verify_link(intermediate, root)
    _verify_link(root, root)

    # the leaf is an X.509-SVID for the token's service account, over the CSR's key
    svid = X509Svid.parse("".join(chain).encode(), pem_key(key))
    assert str(svid.spiffe_id) == spiffe_id("payments", "api")
    assert uri_sans(leaf) == [spiffe_id("payments", "api")]
    assert public_key_sha256(leaf.public_key()) == public_key_sha256(key.public_key())

    # the root is the (only) root of the trust bundle the CA publishes
    bundle = served.ca.server.watch.current.bundle  # type: ignore[union-attr]
    assert [root] == list(bundle.roots)
    assert served.ca.root_pem() == chain[2].encode()
    assert bundle.signing_key_id == key_id(intermediate.public_key())  # type: ignore[arg-type]

    row = _row(served, serial_of(leaf))
    # validity_duration is honoured: NotAfter = issuance + ttl, NotBefore = issuance - backdate
    # (never before the intermediate itself, which this fresh CA created a moment ago)
    _assert_validity(leaf, intermediate, row, timedelta(hours=1))

    assert row.spiffe_id == spiffe_id("payments", "api")
    assert (row.namespace, row.service_account) == ("payments", "api")
    assert (row.pod_name, row.pod_uid) == ("api-7f9c", "uid-1234")
    assert PEER.match(row.requester), row.requester
    assert row.issuer_key_id == bundle.signing_key_id
    assert row.requested_ttl_seconds == 3600
    assert row.public_key_sha256 == public_key_sha256(key.public_key())
    assert re.fullmatch(r"[0-9a-f]{32}", row.request_id)

    # only this certificate (and the server's own TLS certificate) was issued
    assert [r.serial for r in served.workload_rows()] == [row.serial]
    assert served.ledger.count_issued() == 2


@pytest.mark.parametrize("with_san", [False, True], ids=["no-san", "own-uri-san"])
def test_csr_with_no_san_or_exactly_the_callers_uri(
    sqlite_url: str, serve: Callable[..., Served], with_san: bool
) -> None:
    served = serve(sqlite_url)
    uris = [spiffe_id("default", "web")] if with_san else []
    csr = make_csr(uris=uris)

    chain = served.ca.create_certificate(csr, served.minter.mint("default", "web"))

    leaf = certificates(chain)[0]
    assert uri_sans(leaf) == [spiffe_id("default", "web")]
    assert _row(served, serial_of(leaf)).spiffe_id == spiffe_id("default", "web")


def test_default_ttl_when_validity_duration_is_zero(
    sqlite_url: str, serve: Callable[..., Served]
) -> None:
    served = serve(sqlite_url, default_ttl=timedelta(hours=2))

    leaf, intermediate, _ = certificates(served.issue())

    row = _row(served, serial_of(leaf))
    _assert_validity(leaf, intermediate, row, timedelta(hours=2))
    assert row.requested_ttl_seconds is None


def test_rsa_and_p384_keys_are_certified(sqlite_url: str, serve: Callable[..., Served]) -> None:
    served = serve(sqlite_url)
    for key_type in (KeyType.RSA_2048, KeyType.EC_P384):
        key = generate_private_key(key_type)
        chain = served.issue(key=key)
        svid = X509Svid.parse("".join(chain).encode(), pem_key(key))
        assert str(svid.spiffe_id) == spiffe_id("default", "web")


def test_server_certificate_names_and_record(sqlite_url: str, serve: Callable[..., Served]) -> None:
    """The TLS certificate clients verify is issued by the CA itself, for localhost, 127.0.0.1
    and the server's SPIFFE ID, and is in the ledger like every other certificate."""
    served = serve(sqlite_url)
    context = ssl.create_default_context(cadata=served.ca.root_pem().decode())
    context.set_alpn_protocols(["h2"])
    with (
        ssl.create_connection(("127.0.0.1", served.ca.port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/meshca/server"
    ]
    (row,) = served.issued_rows()
    assert row.serial == serial_of(cert)
    assert row.requester == SERVER_REQUESTER

    # a client may also dial the IP address (the IP SAN verifies)
    credentials = grpc.ssl_channel_credentials(served.ca.root_pem())
    with grpc.secure_channel(f"127.0.0.1:{served.ca.port}", credentials) as channel:
        response = methods.create_certificate(channel)(
            methods.CertificateRequest(csr=make_csr().decode()),
            metadata=[("authorization", f"Bearer {served.minter.mint()}")],
            timeout=30,
        )
    assert len(response.cert_chain) == 3
