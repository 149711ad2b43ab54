"""``meshca audit``: querying the ledger of the shared CA (``ledger_ca``), whose certificates are,
newest first, D, C, B, A (issued now through ``ca sign``), H2 (issued three days ago by the
current intermediate, expired) and H1 (issued in 2020 by a retired key, expired)."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import pytest

from tests.cli.conftest import (
    API,
    LEGACY,
    PAY_API,
    PAY_WEB,
    WEB,
    LedgerCa,
)
from tests.cli.helpers import (
    ADMIN_REQUESTER,
    CERT_KEYS,
    CERT_TIMESTAMPS,
    DENIED_KEYS,
    Result,
    der_sha256,
    in_parallel,
    spki_sha256,
)

ALL = ["D", "C", "B", "A", "H2", "H1"]
ISO_2021 = "2021-01-01T00:00:00Z"
UNKNOWN_SERIAL = "ff" * 16

CERT_FILTERS: list[tuple[tuple[str, ...], list[str]]] = [
    (("--spiffe-id", WEB), ["A", "H1"]),
    (("--namespace", "default"), ["B", "A", "H1"]),
    # payments also holds H2 (payments/api): this checks --service-account as well.
    (("--namespace", "payments", "--service-account", "web"), ["C"]),
    (("--serial", "{A_OPENSSL}"), ["A"]),
    (("--issuer", "{SIGNING}"), ["D", "C", "B", "A", "H2"]),
    (("--active",), ["D", "C", "B", "A"]),
    (("--expiring-within", "3h"), ["D", "A"]),
    # An ISO 8601 instant and a duration ago; either bound alone would let H1 or D..A through.
    (("--since", ISO_2021, "--until", "1h"), ["H2"]),
    (("--limit", "2"), ["D", "C"]),
]
DENIED_FILTERS: list[tuple[tuple[str, ...], list[str]]] = [
    (("--spiffe-id", WEB), ["X1"]),
    (("--namespace", "payments"), ["X3", "X2"]),
    (("--until", "1h"), []),
]
DENIED_SPIFFE_IDS = {"X1": WEB, "X2": PAY_WEB, "X3": PAY_API}


def ids(case: object) -> str | None:
    return " ".join(case) if isinstance(case, tuple) else None


@pytest.fixture(scope="module")
def audit(ledger_ca: LedgerCa) -> dict[tuple[str, ...], Result]:
    """Every query these tests make, run once and side by side (they only read)."""
    values = {
        "{A}": ledger_ca.serial("A"),
        "{A_UPPER}": "0X" + ledger_ca.serial("A").upper(),
        # As `openssl x509 -text` prints it.
        "{A_OPENSSL}": ":".join(textwrap.wrap(ledger_ca.serial("A").upper(), 2)),
        "{SIGNING}": ledger_ca.signing_key_id,
    }
    queries = [("certs", "--format", "json", *args) for args, _ in CERT_FILTERS]
    queries += [("denied", "--format", "json", *args) for args, _ in DENIED_FILTERS]
    queries += [
        ("certs", "--format", "json"),
        ("certs",),
        ("certs", "--format", "csv"),
        ("certs", "--format", "csv", "--spiffe-id", f"{WEB}-nobody"),
        ("show", "{A}", "--format", "json"),
        ("show", "{A_UPPER}"),
        ("show", UNKNOWN_SERIAL),
        ("denied",),
    ]
    results = in_parallel(
        *(
            partial(ledger_ca.meshca, "audit", *(values.get(a, a) for a in q), check=False)
            for q in queries
        )
    )
    return dict(zip(queries, results, strict=True))


def output(audit: dict[tuple[str, ...], Result], *query: str) -> str:
    result = audit[query]
    assert result.returncode == 0, result.describe()
    return result.stdout


def names(ca: LedgerCa, rows: list[dict[str, Any]]) -> list[str]:
    by_serial = {ca.serial(name): name for name in ALL}
    return [by_serial[row["serial"]] for row in rows]


def parse_iso(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(("args", "expected"), CERT_FILTERS, ids=ids)
def test_audit_certs_filters(
    ledger_ca: LedgerCa,
    audit: dict[tuple[str, ...], Result],
    args: tuple[str, ...],
    expected: list[str],
) -> None:
    rows = json.loads(output(audit, "certs", "--format", "json", *args))
    assert names(ledger_ca, rows) == expected


def test_audit_certs_json_has_the_documented_keys_and_true_values(
    ledger_ca: LedgerCa, audit: dict[tuple[str, ...], Result]
) -> None:
    listing = json.loads(output(audit, "certs", "--format", "json"))
    assert names(ledger_ca, listing) == ALL
    rows = {row["serial"]: row for row in listing}
    for row in listing:
        assert list(row) == sorted(CERT_KEYS)
        for key in CERT_TIMESTAMPS:
            parse_iso(row[key])
    expected = {
        "A": (WEB, "default", "web", 3600),
        "B": (API, "default", "api", 48 * 3600),
        "C": (PAY_WEB, "payments", "web", None),
        "D": (LEGACY, None, None, 2 * 3600),
    }
    for name, (spiffe_id, namespace, service_account, ttl) in expected.items():
        leaf = ledger_ca.issued[name].chain[0]
        row = rows[ledger_ca.serial(name)]
        assert row == {
            "serial": ledger_ca.serial(name),
            "spiffe_id": spiffe_id,
            "namespace": namespace,
            "service_account": service_account,
            "pod_name": None,
            "pod_uid": None,
            "issuer_key_id": ledger_ca.signing_key_id,
            "not_before": f"{leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}",
            "not_after": f"{leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
            "cert_sha256": der_sha256(leaf),
            "public_key_sha256": spki_sha256(leaf),
            "requested_ttl_seconds": ttl,
            "requester": ADMIN_REQUESTER,
            "request_id": row["request_id"],
            "issued_at": row["issued_at"],
        }
        lifetime = timedelta(seconds=ttl or 86400)
        drift = parse_iso(row["not_after"]) - parse_iso(row["issued_at"]) - lifetime
        assert abs(drift) <= timedelta(seconds=1)
    request_ids = [row["request_id"] for row in listing]
    assert all(request_ids)
    assert len(set(request_ids)) == len(request_ids)


def test_audit_certs_table_has_a_header_and_one_line_per_cert(
    audit: dict[tuple[str, ...], Result],
) -> None:
    header, *rows = (line.split() for line in output(audit, "certs").splitlines())
    assert header == ["SERIAL", "SPIFFE_ID", "ISSUER_KEY_ID", "ISSUED_AT", "NOT_AFTER", "REQUESTER"]
    listing = json.loads(output(audit, "certs", "--format", "json"))
    columns = ["serial", "spiffe_id", "issuer_key_id", "issued_at", "not_after", "requester"]
    assert rows == [[r[c] for c in columns] for r in listing]


def test_audit_certs_csv_parses_with_the_csv_module(audit: dict[tuple[str, ...], Result]) -> None:
    reader = csv.DictReader(io.StringIO(output(audit, "certs", "--format", "csv")))
    assert reader.fieldnames == CERT_KEYS
    listing = json.loads(output(audit, "certs", "--format", "json"))
    assert len(listing) == len(ALL)
    assert list(reader) == [
        {k: "" if v is None else str(v) for k, v in row.items()} for row in listing
    ]


def test_audit_certs_csv_header_is_the_same_when_nothing_matches(
    audit: dict[tuple[str, ...], Result],
) -> None:
    text = output(audit, "certs", "--format", "csv", "--spiffe-id", f"{WEB}-nobody")
    assert text.splitlines() == [",".join(CERT_KEYS)]


def test_audit_show_prints_one_certificate(
    ledger_ca: LedgerCa, audit: dict[tuple[str, ...], Result]
) -> None:
    serial = ledger_ca.serial("A")
    listing = json.loads(output(audit, "certs", "--format", "json"))
    (row,) = [r for r in listing if r["serial"] == serial]
    assert json.loads(output(audit, "show", "{A}", "--format", "json")) == row

    table = dict(line.split(None, 1) for line in output(audit, "show", "{A_UPPER}").splitlines())
    assert list(table) == CERT_KEYS
    assert table == {k: "-" if v is None else str(v) for k, v in row.items()}


def test_audit_show_unknown_serial_fails(audit: dict[tuple[str, ...], Result]) -> None:
    result = audit[("show", UNKNOWN_SERIAL)]
    assert result.returncode != 0
    assert result.stdout == ""
    assert f"no certificate with serial {UNKNOWN_SERIAL}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "expected"), DENIED_FILTERS, ids=ids)
def test_audit_denied_filters(
    audit: dict[tuple[str, ...], Result], args: tuple[str, ...], expected: list[str]
) -> None:
    rows = json.loads(output(audit, "denied", "--format", "json", *args))
    for row in rows:
        assert set(row) == DENIED_KEYS
        parse_iso(row["denied_at"])
    assert [r["spiffe_id"] for r in rows] == [DENIED_SPIFFE_IDS[n] for n in expected]


def test_audit_denied_table(audit: dict[tuple[str, ...], Result]) -> None:
    header, *rows = output(audit, "denied").splitlines()
    assert header.split() == ["DENIED_AT", "REASON", "SPIFFE_ID", "REQUESTER", "MESSAGE"]
    assert [row.split()[1:4] for row in rows] == [
        ["ttl_too_long", PAY_API, ADMIN_REQUESTER],
        ["ttl_too_long", PAY_WEB, ADMIN_REQUESTER],
        ["csr_identity_mismatch", WEB, ADMIN_REQUESTER],
    ]
    assert rows[2].endswith(f"but the caller is {WEB}")
