"""The audit queries are served by indexes, so they stay fast at ten million ledger rows.

On SQLite the planner's choice does not depend on table statistics, so EXPLAIN QUERY PLAN on
the real schema shows the index each query would use. On PostgreSQL, sequential scans are
disabled for the session: a plan that still contains a Seq Scan has no usable index.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, Select

from ca.core.records import IssuedRecord
from ca.storage.ledger import (
    Ledger,
    LedgerQuery,
    active_counts_statement,
    certs_statement,
    denied_statement,
    prune_statement,
)

NOW = datetime(2026, 11, 21, tzinfo=UTC)
ID = "spiffe://cluster.local/ns/default/sa/web"

CERT_QUERIES = {
    "newest": LedgerQuery(),
    "spiffe_id": LedgerQuery(spiffe_id=ID),
    "namespace": LedgerQuery(namespace="default"),
    "namespace+sa": LedgerQuery(namespace="default", service_account="web"),
    "serial": LedgerQuery(serial="ab" * 16),
    "issuer": LedgerQuery(issuer_key_id="00" * 16),
    "active": LedgerQuery(active_at=NOW),
    "expiring_within": LedgerQuery(active_at=NOW, expiring_before=NOW + timedelta(hours=1)),
    "since_until": LedgerQuery(since=NOW - timedelta(days=1), until=NOW),
}
DENIED_QUERIES = {
    "newest": LedgerQuery(),
    "spiffe_id": LedgerQuery(spiffe_id=ID),
    "namespace+sa": LedgerQuery(namespace="default", service_account="web"),
    "since": LedgerQuery(since=NOW - timedelta(days=1)),
}


def _plan(conn: Connection, stmt: Any) -> str:
    compiled = stmt.compile(dialect=conn.dialect)
    params: Any = compiled.params
    if compiled.positional:
        params = tuple(compiled.params[name] for name in compiled.positiontup or ())
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params).all()
        return "\n".join(str(row[-1]) for row in rows)
    conn.exec_driver_sql("SET enable_seqscan = off")
    rows = conn.exec_driver_sql(f"EXPLAIN {compiled}", params).all()
    return "\n".join(str(row[0]) for row in rows)


# Filtered newest-first queries must be served by their own (columns, time) index: the global
# time index would also deliver the order, but would walk past every newer row to find them.
EXPECTED_INDEX = {
    ("issued_certs", "spiffe_id"): "ix_issued_certs_spiffe_id_issued_at",
    ("issued_certs", "namespace"): "ix_issued_certs_ns_issued_at",
    ("issued_certs", "namespace+sa"): "ix_issued_certs_ns_sa_issued_at",
    ("issued_certs", "issuer"): "ix_issued_certs_issuer_issued_at",
    ("denied_requests", "spiffe_id"): "ix_denied_requests_spiffe_id_denied_at",
    ("denied_requests", "namespace+sa"): "ix_denied_requests_ns_sa_denied_at",
}


def _assert_indexed(
    engine: Engine, stmt: Select[Any] | Any, table: str, expected: str | None = None
) -> None:
    with engine.connect() as conn:
        plan = _plan(conn, stmt)
    if expected is not None:
        assert expected in plan, f"expected {expected}:\n{plan}"
    lines = plan.splitlines()
    if engine.dialect.name == "sqlite":
        bare_scans = [line for line in lines if line.strip() == f"SCAN {table}"]
        assert not bare_scans, f"full table scan of {table}:\n{plan}"
        assert "USING" in plan, plan
    else:
        assert "Seq Scan" not in plan, f"no usable index:\n{plan}"


@pytest.mark.parametrize("name", list(CERT_QUERIES))
def test_audit_certs_queries_use_an_index(migrated_engine: Engine, name: str) -> None:
    _assert_indexed(
        migrated_engine,
        certs_statement(CERT_QUERIES[name]),
        "issued_certs",
        EXPECTED_INDEX.get(("issued_certs", name)),
    )


@pytest.mark.parametrize("name", list(DENIED_QUERIES))
def test_audit_denied_queries_use_an_index(migrated_engine: Engine, name: str) -> None:
    _assert_indexed(
        migrated_engine,
        denied_statement(DENIED_QUERIES[name]),
        "denied_requests",
        EXPECTED_INDEX.get(("denied_requests", name)),
    )


def test_prune_and_active_counts_use_an_index(migrated_engine: Engine) -> None:
    _assert_indexed(migrated_engine, prune_statement(NOW, 1000), "issued_certs")
    _assert_indexed(migrated_engine, active_counts_statement(NOW), "issued_certs")


def _skewed_rows(count: int) -> list[IssuedRecord]:
    """The older half issued by an issuer since retired, in a namespace since deleted; the
    newer half by the current issuer in other namespaces, as a long-lived ledger looks."""
    rows = []
    for i in range(count):
        old = i < count // 2
        ns = "gone" if old else f"ns{i % 10}"
        rows.append(
            IssuedRecord(
                serial=f"{i:032x}",
                spiffe_id=f"spiffe://cluster.local/ns/{ns}/sa/sa{i % 7}",
                namespace=ns,
                service_account=f"sa{i % 7}",
                pod_name=None,
                pod_uid=None,
                issuer_key_id=("0" if old else "1") * 32,
                not_before=NOW - timedelta(days=400) + timedelta(minutes=i),
                not_after=NOW - timedelta(days=399) + timedelta(minutes=i),
                cert_sha256="0" * 64,
                public_key_sha256="0" * 64,
                requested_ttl_seconds=None,
                requester="bench",
                request_id=f"{i:032x}",
                issued_at=NOW - timedelta(days=400) + timedelta(minutes=i),
            )
        )
    return rows


def test_filtered_queries_use_their_own_index_when_the_rows_lie_in_the_past(
    migrated_engine: Engine,
) -> None:
    """With statistics of a skewed ledger, a planner left free to choose may walk the global
    time index backwards past every newer row to find a retired issuer's certificates."""
    Ledger(migrated_engine).record(_skewed_rows(20_000))
    with migrated_engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    old = {
        "issuer": LedgerQuery(issuer_key_id="0" * 32),
        "namespace": LedgerQuery(namespace="gone"),
        "namespace+sa": LedgerQuery(namespace="gone", service_account="sa3"),
        "spiffe_id": LedgerQuery(spiffe_id="spiffe://cluster.local/ns/gone/sa/sa3"),
    }
    for name, query in old.items():
        _assert_indexed(
            migrated_engine,
            certs_statement(query),
            "issued_certs",
            EXPECTED_INDEX[("issued_certs", name)],
        )
