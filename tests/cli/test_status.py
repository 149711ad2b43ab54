"""``meshca ca status`` on the shared CA of ``ledger_ca``."""

from __future__ import annotations

import json
import re

from tests.cli.conftest import LedgerCa
from tests.cli.helpers import der_sha256, pem_certs

# ledger_ca holds A, B, C, D (valid, signed by the intermediate), H2 (expired, intermediate)
# and H1 (expired, a retired key).
ISSUED = 6
ACTIVE_BY_INTERMEDIATE = 4


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
    assert root["active_certs"] == 0
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
    assert [row[6] for row in rows] == ["0", str(ACTIVE_BY_INTERMEDIATE)]
