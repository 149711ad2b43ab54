"""The whole CLI flow against the real PostgreSQL server (``--db postgresql+psycopg://...``)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from ca.storage.engine import make_engine
from tests.cli.conftest import signing_key_of
from tests.cli.helpers import Meshca, openssl_verify, pem_certs, serial_of, uri_sans, write_csr

CART = "spiffe://prod.example/ns/shop/sa/cart"


@pytest.mark.postgres
def test_init_sign_audit_on_postgresql(meshca: Meshca, tmp_path: Path, postgres_url: str) -> None:
    db = ("--db", postgres_url)
    meshca(*db, "db", "upgrade")
    init = meshca(*db, "ca", "init", "--trust-domain", "prod.example")
    assert init.stdout.startswith("CA initialised: trust domain prod.example, ")
    assert stat.S_IMODE((tmp_path / "meshca.kek").stat().st_mode) == 0o600
    signing_key = signing_key_of(init)

    csr = write_csr(tmp_path / "cart.csr")
    sign = meshca(*db, "ca", "sign", "--csr", csr, "--spiffe-id", CART, "--ttl", "2h")
    chain = pem_certs(sign.stdout)
    assert uri_sans(chain[0]) == [CART]
    root_pem = meshca(*db, "root", "bundle").stdout
    openssl_verify(tmp_path, chain, root_pem)

    audit = meshca(*db, "audit", "certs", "--format", "json", "--namespace", "shop")
    (row,) = json.loads(audit.stdout)
    assert row["serial"] == serial_of(chain[0])
    assert row["spiffe_id"] == CART
    assert row["service_account"] == "cart"
    assert row["issuer_key_id"] == signing_key
    assert row["requested_ttl_seconds"] == 7200
    assert row["not_after"] == f"{chain[0].not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"

    status = json.loads(meshca(*db, "ca", "status", "--format", "json").stdout)
    assert status["trust_domain"] == "prod.example"
    assert status["issued_certs"] == 1
    assert [a["role"] for a in status["authorities"]] == ["root", "intermediate"]

    # Everything went to PostgreSQL, nothing to a SQLite file in the working directory.
    assert not (tmp_path / "meshca.db").exists()
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as conn:
            serials = conn.execute(text("SELECT serial FROM issued_certs")).scalars().all()
    finally:
        engine.dispose()
    assert serials == [serial_of(chain[0])]
