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

from ca.storage.ledger import (
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


def _assert_indexed(engine: Engine, stmt: Select[Any] | Any, table: str) -> None:
    with engine.connect() as conn:
        plan = _plan(conn, stmt)
    lines = plan.splitlines()
    if engine.dialect.name == "sqlite":
        bare_scans = [line for line in lines if line.strip() == f"SCAN {table}"]
        assert not bare_scans, f"full table scan of {table}:\n{plan}"
        assert "USING" in plan, plan
    else:
        assert "Seq Scan" not in plan, f"no usable index:\n{plan}"


@pytest.mark.parametrize("name", list(CERT_QUERIES))
def test_audit_certs_queries_use_an_index(migrated_engine: Engine, name: str) -> None:
    _assert_indexed(migrated_engine, certs_statement(CERT_QUERIES[name]), "issued_certs")


@pytest.mark.parametrize("name", list(DENIED_QUERIES))
def test_audit_denied_queries_use_an_index(migrated_engine: Engine, name: str) -> None:
    _assert_indexed(migrated_engine, denied_statement(DENIED_QUERIES[name]), "denied_requests")


def test_prune_and_active_counts_use_an_index(migrated_engine: Engine) -> None:
    _assert_indexed(migrated_engine, prune_statement(NOW, 1000), "issued_certs")
    _assert_indexed(migrated_engine, active_counts_statement(NOW), "issued_certs")
