"""The server's own TLS certificate is renewed at half its life and served at the next
handshake, without a restart; clients keep verifying it against the trust bundle."""

from __future__ import annotations

import socket
import ssl
from datetime import timedelta
from pathlib import Path

from cryptography import x509

from ca.storage.ledger import LedgerQuery
from tests.factories import make_csr
from tests.server.conftest import wait_until
from tests.server.harness import TokenMinter, running_ca, serving_settings


def served_certificate(port: int, root_pem: bytes) -> x509.Certificate:
    """The leaf a fresh TLS handshake with the server presents (verified against the root)."""
    context = ssl.create_default_context(cadata=root_pem.decode())
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_server_certificate_is_renewed_at_half_life_without_a_restart(
    tmp_path: Path, sqlite_url: str
) -> None:
    minter = TokenMinter()
    settings = serving_settings(tmp_path, sqlite_url, minter, server_cert_ttl=timedelta(seconds=4))
    with running_ca(settings) as ca:
        first = served_certificate(ca.port, ca.root_pem())
        lifetime = first.not_valid_after_utc - first.not_valid_before_utc
        assert lifetime <= timedelta(seconds=4 + 60)  # TTL plus at most the backdate

        renewed = wait_until(
            lambda: (
                (cert := served_certificate(ca.port, ca.root_pem())).serial_number
                != first.serial_number
                and cert
            ),
            timeout=10,
            what="a renewed server certificate",
        )
        assert renewed.not_valid_after_utc > first.not_valid_after_utc
        # Workloads are served over the renewed certificate.
        assert len(ca.create_certificate(make_csr(), minter.mint())) == 3
        # Each renewal is recorded, and renewal happens at half life, not in a loop.
        rows = ca.server.runtime.ledger.certs(
            LedgerQuery(spiffe_id="spiffe://cluster.local/meshca/server", limit=100)
        )
        assert 2 <= len(rows) <= 4, f"{len(rows)} server certificates in a few seconds"
        assert {row.requester for row in rows} == {"meshca-server"}
