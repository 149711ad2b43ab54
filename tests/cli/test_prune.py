"""``meshca audit prune``: only rows of certificates that expired before the cutoff go."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ca.core.records import IssuedRecord
from ca.storage.engine import make_engine
from ca.storage.ledger import Ledger
from tests.cli.conftest import WEB, signing_key_of
from tests.cli.helpers import Meshca, pem_certs, serial_of, write_csr


def expired_row(serial: str, issuer: str, not_after: datetime) -> IssuedRecord:
    return IssuedRecord(
        serial=serial,
        spiffe_id=WEB,
        namespace="default",
        service_account="web",
        pod_name="web-0",
        pod_uid=None,
        issuer_key_id=issuer,
        not_before=not_after - timedelta(hours=1),
        not_after=not_after,
        cert_sha256="c" * 64,
        public_key_sha256="d" * 64,
        requested_ttl_seconds=3600,
        requester="istio-agent",
        request_id=f"expired-{serial[:4]}",
        issued_at=not_after - timedelta(hours=1),
    )


def pruned(meshca: Meshca, expired_before: str, expected_cutoff: datetime) -> int:
    out = meshca("audit", "prune", "--expired-before", expired_before).stdout
    prefix, _, cutoff = out.strip().rpartition(" that expired before ")
    assert abs(datetime.fromisoformat(cutoff) - expected_cutoff) < timedelta(minutes=1), out
    count = prefix.removeprefix("deleted ").removesuffix(" certificate row(s)")
    return int(count)


def test_prune_deletes_only_certificates_expired_before_the_cutoff(
    meshca: Meshca, tmp_path: Path
) -> None:
    signing_key = signing_key_of(meshca("ca", "init"))
    csr = write_csr(tmp_path / "web.csr")
    chain = pem_certs(meshca("ca", "sign", "--csr", csr, "--spiffe-id", WEB, "--ttl", "1h").stdout)
    live = serial_of(chain[0])
    now = datetime.now(UTC)
    engine = make_engine(f"sqlite:///{tmp_path / 'meshca.db'}")
    try:
        Ledger(engine).record(
            [
                expired_row("e1" * 16, signing_key, now - timedelta(days=2)),
                expired_row("e2" * 16, signing_key, now - timedelta(minutes=10)),
            ]
        )
    finally:
        engine.dispose()

    assert pruned(meshca, "30d", now - timedelta(days=30)) == 0
    assert pruned(meshca, "1d", now - timedelta(days=1)) == 1
    assert pruned(meshca, "0s", now) == 1

    rows = json.loads(meshca("audit", "certs", "--format", "json").stdout)
    assert [row["serial"] for row in rows] == [live]
