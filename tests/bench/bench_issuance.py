"""Issuance throughput, in process: CSR policy + sign + validate + ledger write.

Not a timed test: run it (``make bench``) and read the figures. It prints certificates per second
on SQLite (and on PostgreSQL: MESHCA_TEST_POSTGRES_URL, else 127.0.0.1:5432, when it answers)
next to ``openssl speed ecdsap256`` sign/s measured in the same run on the same core, and the
ratio between them, since absolute figures on shared machines drift.

Every certificate counted was returned only after the transaction holding its ledger row
committed; at the end the ledger's row count is checked against the certificates received.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ca.core.authority import build_intermediate, build_root
from ca.core.identity import WorkloadIdentity, parse_trust_domain
from ca.core.issuer import IssuanceRequest, IssuedSvid
from ca.core.keys import KeyType, generate_private_key
from ca.core.svid_builder import SvidBuilder
from ca.issuance import IssuanceService, Result
from ca.runtime import CaRuntime
from ca.settings import Settings
from ca.storage import migrate
from tests.factories import make_csr
from tests.postgres import postgres_base_url, postgres_unreachable

TRUST_DOMAIN = parse_trust_domain("cluster.local")
_DAY = timedelta(days=1)


def openssl_sign_per_second(seconds: int) -> float:
    """``openssl speed ecdsap256`` sign/s (inherits this process's CPU affinity)."""
    out = subprocess.run(
        ["openssl", "speed", "-seconds", str(seconds), "ecdsap256"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"cannot parse openssl speed output:\n{out}")
    return float(match.group(1))


def crypto_ceiling(requests: list[IssuanceRequest]) -> float:
    """Certificates/s if issuance did nothing but its three mandatory public-key operations
    through cryptography's X.509 layer: verify the CSR, sign the leaf, verify the leaf. No
    policy, no validation of fields, no ledger: an upper bound for this core."""
    now = datetime.now(UTC).replace(microsecond=0)
    root = build_root(TRUST_DOMAIN, generate_private_key(KeyType.EC_P256), now=now, ttl=_DAY)
    signer = build_intermediate(
        TRUST_DOMAIN, generate_private_key(KeyType.EC_P256), root, now=now, ttl=_DAY
    )
    builder = SvidBuilder(signer)
    issuer_key = signer.certificate.public_key()
    assert isinstance(issuer_key, ec.EllipticCurvePublicKey)
    start = time.perf_counter()
    for request in requests:
        csr = x509.load_pem_x509_csr(request.csr)
        assert csr.is_signature_valid
        leaf = builder.build(
            csr.public_key(),
            request.caller.spiffe_id,
            serial=1,
            not_before=now,
            not_after=now + _DAY,
        )
        algorithm = leaf.signature_hash_algorithm
        assert algorithm is not None
        issuer_key.verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(algorithm))
    return len(requests) / (time.perf_counter() - start)


def make_requests(count: int) -> list[IssuanceRequest]:
    """Distinct workloads, each with its own P-256 key and CSR (made before timing starts)."""
    requests = []
    for i in range(count):
        identity = WorkloadIdentity.for_service_account(
            TRUST_DOMAIN,
            f"ns{i % 20}",
            f"sa{i % 500}",
            pod_name=f"pod-{i}",
            pod_uid=str(uuid.uuid4()),
        )
        csr = make_csr(uris=[str(identity.spiffe_id)])
        requests.append(IssuanceRequest(csr, identity, None, "bench", uuid.uuid4().hex))
    return requests


@contextmanager
def postgres_database(base_url: str) -> Iterator[str]:
    name = f"meshca_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def new_service(db_url: str, workdir: Path) -> tuple[CaRuntime, IssuanceService]:
    runtime = CaRuntime(Settings(db_url=db_url, kek_file=workdir / f"kek-{uuid.uuid4().hex}"))
    migrate.upgrade(runtime.engine)
    runtime.initialise(from_dir=None, exist_ok=False, actor="bench")
    return runtime, runtime.issuance_service()


def run_sequential(service: IssuanceService, requests: list[IssuanceRequest], batch: int) -> int:
    received = 0
    for start in range(0, len(requests), batch):
        received += _count(service.issue_batch(requests[start : start + batch]))
    return received


def run_pipelined(service: IssuanceService, requests: list[IssuanceRequest], batch: int) -> int:
    """Group commit: batch k is committed by a writer thread while batch k+1 is signed."""
    received = 0
    pending: Future[list[Result]] | None = None
    with ThreadPoolExecutor(max_workers=1) as writer:
        for start in range(0, len(requests), batch):
            signed = service.sign(requests[start : start + batch])
            if pending is not None:
                received += _count(pending.result())
            pending = writer.submit(service.commit, signed)
        if pending is not None:
            received += _count(pending.result())
    return received


def _count(results: list[Result]) -> int:
    bad = [r for r in results if not isinstance(r, IssuedSvid)]
    if bad:
        raise RuntimeError(f"unexpected refusal: {bad[0]}")
    return len(results)


Runner = Callable[[IssuanceService, list[IssuanceRequest], int], int]


def measure(
    label: str,
    db_url: str,
    workdir: Path,
    requests: list[IssuanceRequest],
    batch: int,
    runner: Runner,
) -> float:
    runtime, service = new_service(db_url, workdir)
    run_sequential(service, requests[:200], batch)  # warm-up: caches, connections, JIT-free paths
    before = runtime.ledger.count_issued()
    start = time.perf_counter()
    received = runner(service, requests, batch)
    elapsed = time.perf_counter() - start
    recorded = runtime.ledger.count_issued() - before
    if recorded != received:
        raise RuntimeError(f"{label}: {received} certificates received but {recorded} recorded")
    runtime.engine.dispose()
    rate = received / elapsed
    print(f"  {label:<38} {rate:8.0f} certs/s  ({received} certs, {elapsed:.2f}s)")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=6000, help="certificates per run")
    parser.add_argument("--batch", type=int, default=128, help="requests per ledger transaction")
    parser.add_argument("--core", type=int, default=0, help="CPU core to pin to (-1: no pinning)")
    parser.add_argument("--openssl-seconds", type=int, default=3)
    parser.add_argument("--postgres-url", default=postgres_base_url())
    args = parser.parse_args()

    if args.core >= 0:
        os.sched_setaffinity(0, {args.core})
    print(f"meshca issuance benchmark: EC P-256 CA and workload keys, pinned to core {args.core}")
    print(f"preparing {args.count} CSRs (not timed) ...")
    requests = make_requests(args.count)
    baseline_before = openssl_sign_per_second(args.openssl_seconds)
    ceiling = crypto_ceiling(requests[:3000])

    workdir = Path(tempfile.mkdtemp(prefix="meshca-bench-"))
    rates: dict[str, float] = {}
    try:
        sqlite_url = f"sqlite:///{workdir / 'bench.db'}"
        print("SQLite (WAL, synchronous=FULL):")
        rates["sqlite group commit, pipelined"] = measure(
            f"batch {args.batch}, pipelined group commit",
            sqlite_url,
            workdir,
            requests,
            args.batch,
            run_pipelined,
        )
        rates["sqlite group commit"] = measure(
            f"batch {args.batch}, sequential",
            f"sqlite:///{workdir / 'bench2.db'}",
            workdir,
            requests,
            args.batch,
            run_sequential,
        )
        rates["sqlite one per transaction"] = measure(
            "batch 1 (a commit per certificate)",
            f"sqlite:///{workdir / 'bench3.db'}",
            workdir,
            requests[:1500],
            1,
            run_sequential,
        )
        unreachable = postgres_unreachable(args.postgres_url)
        if unreachable is None:
            print("PostgreSQL:")
            with postgres_database(args.postgres_url) as pg_url:
                rates["postgres group commit, pipelined"] = measure(
                    f"batch {args.batch}, pipelined group commit",
                    pg_url,
                    workdir,
                    requests,
                    args.batch,
                    run_pipelined,
                )
            with postgres_database(args.postgres_url) as pg_url:
                rates["postgres one per transaction"] = measure(
                    "batch 1 (a commit per certificate)",
                    pg_url,
                    workdir,
                    requests[:1500],
                    1,
                    run_sequential,
                )
        else:
            print(
                f"PostgreSQL: skipped, {unreachable} (run `make postgres`, or set "
                "MESHCA_TEST_POSTGRES_URL)"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    baseline_after = openssl_sign_per_second(args.openssl_seconds)
    baseline = (baseline_before + baseline_after) / 2
    print(
        f"baseline: openssl speed ecdsap256 sign/s {baseline_before:.0f} before, "
        f"{baseline_after:.0f} after"
    )
    for label, rate in rates.items():
        print(f"  ratio {label:<36} {rate / baseline:6.4f} of openssl sign/s  ({rate:.0f} certs/s)")
    print(
        f"  ceiling: CSR verify + sign + leaf verify only {ceiling:8.0f} certs/s "
        f"({ceiling / baseline:6.4f} of openssl sign/s)"
    )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mib:.0f} MiB; target: >= 3000 certs/s on one core with SQLite")


if __name__ == "__main__":
    main()
