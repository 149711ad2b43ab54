"""``meshca ca status`` on the shared CA of ``ledger_ca``; ``ca status`` and ``root status``
count an authority's active certificates alike."""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from ca.core.records import IssuedRecord
from ca.storage.engine import make_engine
from ca.storage.ledger import Ledger
from tests.cli.conftest import WEB, LedgerCa, signing_key_of
from tests.cli.helpers import Meshca, der_sha256, in_parallel, pem_certs, write_csr

# ledger_ca holds A, B, C, D (valid, signed by the intermediate), H2 (expired, intermediate)
# and H1 (expired, a retired key). A root's active certificates include its intermediate's.
ISSUED = 6
ACTIVE_BY_INTERMEDIATE = 4
ACTIVE_IN_ROOT_FAMILY = 4


def test_status_json_shows_trust_domain_authorities_and_counts(ledger_ca: LedgerCa) -> None:
    status = json.loads(ledger_ca.meshca("ca", "status", "--format", "json").stdout)
    (root_cert,) = pem_certs(ledger_ca.root_pem)
    intermediate_cert = ledger_ca.issued["A"].chain[1]

    assert status["trust_domain"] == "cluster.local"
    assert status["bundle_sequence"] == 1
    assert status["issued_certs"] == ISSUED
    assert re.fullmatch(r"[0-9a-f]{16}", status["kek_id"])
    assert status["initialised_at"].endswith("Z")
    root, intermediate = status["authorities"]
    assert (root["role"], intermediate["role"]) == ("root", "intermediate")
    assert intermediate["id"] == ledger_ca.signing_key_id
    assert root["fingerprint_sha256"] == der_sha256(root_cert)
    assert intermediate["fingerprint_sha256"] == der_sha256(intermediate_cert)
    assert root["subject"] == root_cert.subject.rfc4514_string()
    assert root["not_after"] == f"{root_cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    for authority in (root, intermediate):
        assert authority["state"] == "active"
        assert authority["has_key"] is True
        assert authority["key_type"] == "ec-p256"
    assert root["active_certs"] == ACTIVE_IN_ROOT_FAMILY
    assert intermediate["active_certs"] == ACTIVE_BY_INTERMEDIATE


def test_status_table_shows_the_same(ledger_ca: LedgerCa) -> None:
    lines = ledger_ca.meshca("ca", "status").stdout.splitlines()
    summary = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in lines[:5])
    assert summary["trust domain"] == "cluster.local"
    assert summary["bundle sequence"] == "1"
    assert summary["issued certs"] == str(ISSUED)
    assert lines[5] == ""
    header, *rows = (line.split() for line in lines[6:])
    assert header == ["ID", "ROLE", "STATE", "KEY_TYPE", "HAS_KEY", "NOT_AFTER", "ACTIVE_CERTS"]
    assert [row[1:5] for row in rows] == [
        ["root", "active", "ec-p256", "True"],
        ["intermediate", "active", "ec-p256", "True"],
    ]
    assert rows[1][0] == ledger_ca.signing_key_id
    assert [row[6] for row in rows] == [str(ACTIVE_IN_ROOT_FAMILY), str(ACTIVE_BY_INTERMEDIATE)]


def active_column(stdout: str) -> dict[str, int]:
    """The ACTIVE_CERTS column of a status table, by authority id (cells are left-aligned under
    their header, and an empty SIGNING cell leaves a gap, so cut at the header's offsets)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ID "))
    at = lines[start].index("ACTIVE_CERTS")
    rows = itertools.takewhile(bool, lines[start + 1 :])
    return {row.split()[0]: int(row[at:].split()[0]) for row in rows}


def ledger_row(serial: str, issuer: str, not_after: datetime) -> IssuedRecord:
    issued = not_after - timedelta(hours=1)
    return IssuedRecord(
        serial=serial, spiffe_id=WEB, namespace="default", service_account="web",
        pod_name=None, pod_uid=None, issuer_key_id=issuer, not_before=issued,
        not_after=not_after, cert_sha256="a" * 64, public_key_sha256="b" * 64,
        requested_ttl_seconds=None, requester="istio-agent", request_id=f"row-{serial[:4]}",
        issued_at=issued,
    )  # fmt: skip


def test_ca_status_and_root_status_count_active_certificates_alike(
    meshca: Meshca, tmp_path: Path
) -> None:
    sign = ("ca", "sign", "--spiffe-id", WEB, "--csr")
    old_intermediate = signing_key_of(meshca("ca", "init"))
    in_parallel(*(partial(meshca, *sign, write_csr(tmp_path / f"{n}.csr")) for n in "ab"))
    meshca("root", "prepare")
    meshca("root", "activate")
    meshca(*sign, write_csr(tmp_path / "c.csr"))
    parents = {
        a["id"]: a["parent_id"]
        for a in json.loads(meshca("root", "status", "--format", "json").stdout)["authorities"]
    }
    old_root = parents[old_intermediate]
    new_intermediate = next(i for i, p in parents.items() if p not in (None, old_root))
    new_root = parents[new_intermediate]
    # Expired certificates of both families, and one the old root signed itself.
    now = datetime.now(UTC)
    engine = make_engine(f"sqlite:///{tmp_path / 'meshca.db'}")
    try:
        Ledger(engine).record(
            [
                ledger_row("e1" * 16, old_intermediate, now - timedelta(minutes=1)),
                ledger_row("e2" * 16, new_intermediate, now - timedelta(days=2)),
                ledger_row("f1" * 16, old_root, now + timedelta(hours=1)),
            ]
        )
    finally:
        engine.dispose()

    ca_json, root_json, ca_table, root_table = in_parallel(
        partial(meshca, "ca", "status", "--format", "json"),
        partial(meshca, "root", "status", "--format", "json"),
        partial(meshca, "ca", "status"),
        partial(meshca, "root", "status"),
    )

    expected = {old_root: 3, old_intermediate: 2, new_root: 1, new_intermediate: 1}
    for printed in (ca_json, root_json):
        authorities = json.loads(printed.stdout)["authorities"]
        assert {a["id"]: a["active_certs"] for a in authorities} == expected, printed.describe()
    assert active_column(ca_table.stdout) == expected, ca_table.describe()
    assert active_column(root_table.stdout) == expected, root_table.describe()
