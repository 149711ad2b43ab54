"""CLI-only fixtures: a ``meshca`` runner per test, and one CA with a known ledger shared by the
tests that only read it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from ca.core.records import IssuedRecord
from ca.storage.engine import make_engine
from ca.storage.ledger import Ledger
from tests.cli.helpers import Meshca, Result, pem_certs, serial_of, write_csr

TD = "spiffe://cluster.local"
WEB = f"{TD}/ns/default/sa/web"
API = f"{TD}/ns/default/sa/api"
PAY_WEB = f"{TD}/ns/payments/sa/web"
PAY_API = f"{TD}/ns/payments/sa/api"
LEGACY = f"{TD}/svc/legacy"
RETIRED_ISSUER = "0" * 32

SIGNING_KEY = re.compile(r"signing key ([0-9a-f]{32})$")


@pytest.fixture
def meshca(tmp_path: Path) -> Meshca:
    """``meshca(*args, env=..., input=..., check=...)`` in ``tmp_path`` with a clean env."""
    return Meshca(tmp_path)


def signing_key_of(init: Result) -> str:
    match = SIGNING_KEY.search(init.stdout.strip())
    assert match, init.describe()
    return match.group(1)


@dataclass
class Issued:
    spiffe_id: str
    result: Result
    chain: list[x509.Certificate]

    @property
    def serial(self) -> str:
        return serial_of(self.chain[0])


@dataclass
class LedgerCa:
    """A CA in ``path`` (default ``./meshca.db`` and ``./meshca.kek``) whose ledger holds, newest
    first: D, C, B, A (issued through ``ca sign``), then H2 and H1 (older rows written straight
    into the ledger), plus three refusals X1, X2, X3 (oldest first)."""

    path: Path
    meshca: Meshca
    signing_key_id: str
    root_pem: str
    issued: dict[str, Issued] = field(default_factory=dict)
    history: dict[str, IssuedRecord] = field(default_factory=dict)
    denied: dict[str, Result] = field(default_factory=dict)

    def serial(self, name: str) -> str:
        if name in self.issued:
            return self.issued[name].serial
        return self.history[name].serial


def _history(signing_key_id: str, now: datetime) -> dict[str, IssuedRecord]:
    old = datetime(2020, 1, 1, tzinfo=UTC)
    recent = now - timedelta(days=3)

    def row(
        serial: str, spiffe_id: str, ns: str, sa: str, issuer: str, at: datetime
    ) -> IssuedRecord:
        return IssuedRecord(
            serial=serial,
            spiffe_id=spiffe_id,
            namespace=ns,
            service_account=sa,
            pod_name=None,
            pod_uid=None,
            issuer_key_id=issuer,
            not_before=at,
            not_after=at + timedelta(days=1),
            cert_sha256="a" * 64,
            public_key_sha256="b" * 64,
            requested_ttl_seconds=None,
            requester="istio-agent",
            request_id=f"history-{serial[:4]}",
            issued_at=at,
        )

    return {
        "H1": row("11" * 16, WEB, "default", "web", RETIRED_ISSUER, old),
        "H2": row("22" * 16, PAY_API, "payments", "api", signing_key_id, recent),
    }


@pytest.fixture(scope="session")
def ledger_ca(tmp_path_factory: pytest.TempPathFactory) -> LedgerCa:
    path = tmp_path_factory.mktemp("ledger-ca")
    run = Meshca(path)
    signing_key_id = signing_key_of(run("ca", "init"))
    root_pem = run("root", "bundle").stdout
    ca = LedgerCa(path, run, signing_key_id, root_pem)

    def sign(name: str, spiffe_id: str, *extra: str, csr: Path | None = None) -> None:
        csr = csr or write_csr(path / f"{name}.csr")
        result = run("ca", "sign", "--csr", csr, "--spiffe-id", spiffe_id, *extra)
        ca.issued[name] = Issued(spiffe_id, result, pem_certs(result.stdout))

    # A writes its chain to a file; B reads its CSR (which names its own SPIFFE ID) from stdin.
    result = run(
        "ca", "sign", "--csr", write_csr(path / "A.csr"), "--spiffe-id", WEB,
        "--ttl", "1h", "--out", "A-chain.pem",
    )  # fmt: skip
    ca.issued["A"] = Issued(WEB, result, pem_certs((path / "A-chain.pem").read_text()))
    b_csr = write_csr(path / "B.csr", uris=[API]).read_text()
    result = run("ca", "sign", "--csr", "-", "--spiffe-id", API, "--ttl", "48h", input=b_csr)
    ca.issued["B"] = Issued(API, result, pem_certs(result.stdout))
    sign("C", PAY_WEB)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sign("D", LEGACY, "--ttl", "2h", csr=write_csr(path / "D.csr", rsa_key))

    other = f"{TD}/ns/default/sa/db"
    ca.denied["X1"] = run(
        "ca", "sign", "--csr", write_csr(path / "X1.csr", uris=[other]), "--spiffe-id", WEB,
        check=False,
    )  # fmt: skip
    ca.denied["X2"] = run(
        "ca", "sign", "--csr", write_csr(path / "X2.csr"), "--spiffe-id", PAY_WEB,
        "--ttl", "100d", check=False,
    )  # fmt: skip
    ca.denied["X3"] = run(
        "ca", "sign", "--csr", write_csr(path / "X3.csr"), "--spiffe-id", PAY_API,
        "--ttl", "3h", env={"MESHCA_MAX_TTL": "2h"}, check=False,
    )  # fmt: skip

    ca.history = _history(signing_key_id, datetime.now(UTC))
    engine = make_engine(f"sqlite:///{path / 'meshca.db'}")
    try:
        Ledger(engine).record(list(ca.history.values()))
    finally:
        engine.dispose()
    return ca
