"""Audit query latency on a large ledger (default ten million issued rows).

Not a timed test: run it and read the figures. It fills a fresh database (SQLite by default;
``--db`` for PostgreSQL) with synthetic ledger rows issued in time order over a year (20
namespaces, 2,000 service accounts, 3 issuing keys, 24h certificates), then times each audit
query shape ``meshca audit`` runs, plus prune and the per-issuer active count, as the median of
several runs. As a same-process baseline it also times a full scan (``count(*)`` of a filter on
an unindexed column), which is what every query would cost without its index.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ca.core.records import DeniedRecord, IssuedRecord
from ca.storage import migrate
from ca.storage.engine import make_engine
from ca.storage.ledger import Ledger, LedgerQuery
from ca.storage.models import IssuedCert

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
YEAR = timedelta(days=365)
ISSUERS = ["a" * 32, "b" * 32, "c" * 32]


def synthetic_rows(
    start: int, count: int, total: int
) -> tuple[list[IssuedRecord], list[DeniedRecord]]:
    """Rows ``start`` to ``start + count`` of ``total``, issued in time order over the year
    before NOW, as a CA writes them."""
    rng = random.Random(start)
    issued, denied = [], []
    for index in range(start, start + count):
        ns = f"ns{rng.randrange(20)}"
        sa = f"sa{rng.randrange(100)}"
        at = NOW - YEAR + YEAR * (index / total)
        issued.append(
            IssuedRecord(
                serial=f"{rng.getrandbits(128):032x}",
                spiffe_id=f"spiffe://cluster.local/ns/{ns}/sa/{sa}",
                namespace=ns,
                service_account=sa,
                pod_name=f"{sa}-{rng.getrandbits(32):08x}",
                pod_uid=str(uuid.UUID(int=rng.getrandbits(128))),
                issuer_key_id=ISSUERS[int((NOW - at) / YEAR * len(ISSUERS)) % len(ISSUERS)],
                not_before=at - timedelta(minutes=1),
                not_after=at + timedelta(hours=24),
                cert_sha256=f"{rng.getrandbits(256):064x}",
                public_key_sha256=f"{rng.getrandbits(256):064x}",
                requested_ttl_seconds=None,
                requester="10.0.0.1:5000",
                request_id=f"{rng.getrandbits(128):032x}",
                issued_at=at,
            )
        )
        if rng.random() < 0.01:
            denied.append(
                DeniedRecord(
                    request_id=f"{rng.getrandbits(128):032x}",
                    reason="csr_identity_mismatch",
                    message="CSR asks for another identity",
                    error_type="PermissionDenied",
                    requester="10.0.0.1:5000",
                    spiffe_id=f"spiffe://cluster.local/ns/{ns}/sa/{sa}",
                    namespace=ns,
                    service_account=sa,
                    pod_name=None,
                    pod_uid=None,
                    requested_ttl_seconds=None,
                    denied_at=at,
                )
            )
    return issued, denied


def fill(ledger: Ledger, rows: int, batch: int) -> float:
    start = time.perf_counter()
    for done in range(0, rows, batch):
        issued, denied = synthetic_rows(done, min(batch, rows - done), rows)
        ledger.record(issued, denied)
        if done and done % (batch * 20) == 0:
            rate = done / (time.perf_counter() - start)
            print(f"  {done:>10,} rows ({rate:,.0f} rows/s)", flush=True)
    return time.perf_counter() - start


def timed(action: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    durations, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = action()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--db", help="database URL (default: a new SQLite file)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    url = args.db or f"sqlite:///{Path(tempfile.mkdtemp(prefix='meshca-audit-')) / 'ledger.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    ledger = Ledger(engine)
    print(f"filling {args.rows:,} issued rows (+~1% denied) into {engine.dialect.name} ...")
    seconds = fill(ledger, args.rows, args.batch)
    print(f"filled in {seconds:.0f}s ({args.rows / seconds:,.0f} rows/s)")
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")

    known_serial = ledger.certs(LedgerQuery(until=NOW - YEAR / 2, limit=1))[0].serial
    queries: dict[str, Callable[[], Any]] = {
        "certs (newest 100)": lambda: ledger.certs(LedgerQuery()),
        "certs --spiffe-id": lambda: ledger.certs(
            LedgerQuery(spiffe_id="spiffe://cluster.local/ns/ns3/sa/sa42")
        ),
        "certs --namespace": lambda: ledger.certs(LedgerQuery(namespace="ns7")),
        "certs --namespace --service-account": lambda: ledger.certs(
            LedgerQuery(namespace="ns7", service_account="sa9")
        ),
        "certs --serial": lambda: ledger.cert(known_serial),
        "certs --issuer": lambda: ledger.certs(LedgerQuery(issuer_key_id=ISSUERS[1])),
        "certs --active": lambda: ledger.certs(LedgerQuery(active_at=NOW)),
        "certs --expiring-within 1h": lambda: ledger.certs(
            LedgerQuery(active_at=NOW, expiring_before=NOW + timedelta(hours=1))
        ),
        "certs --since 30d --until 29d": lambda: ledger.certs(
            LedgerQuery(since=NOW - timedelta(days=30), until=NOW - timedelta(days=29))
        ),
        "denied (newest 100)": lambda: ledger.denied(LedgerQuery()),
        "denied --spiffe-id": lambda: ledger.denied(
            LedgerQuery(spiffe_id="spiffe://cluster.local/ns/ns3/sa/sa42")
        ),
        "active count per issuer": lambda: ledger.active_counts_by_issuer(NOW),
    }

    def full_scan() -> int:
        with engine.connect() as conn:
            stmt = select(func.count()).select_from(IssuedCert).where(IssuedCert.requester == "x")
            return int(conn.execute(stmt).scalar_one())

    baseline, _ = timed(full_scan, 1)
    print(
        f"baseline: full scan of {args.rows:,} rows (unindexed filter): {baseline * 1000:,.0f} ms"
    )
    for name, query in queries.items():
        median, result = timed(query, args.repeat)
        size = len(result) if isinstance(result, list | dict) else int(result is not None)
        ratio = median / baseline
        print(f"  {name:<38} {median * 1000:8.2f} ms  ({size} rows, {ratio:.5f} of a full scan)")
    cutoff = NOW - YEAR + timedelta(days=7)
    median, deleted = timed(lambda: ledger.prune(cutoff), 1)
    print(
        f"  {'prune --expired-before (first week)':<38} {median * 1000:8.2f} ms  ({deleted} rows)"
    )
    engine.dispose()


if __name__ == "__main__":
    main()
