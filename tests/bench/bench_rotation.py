"""CA rotation and replicas: how fast a change reaches every replica's agents, how the reissue
window spreads the re-issue load, and what the ledger's "authority still in service" check costs.
Not a timed test: run it and read the figures (``python tests/bench/bench_rotation.py
[--quick]``; needs ``MESHCA_TEST_POSTGRES_URL``, default the local server).

Sections (everything real, in this process: ``CaServer`` replicas in their own event-loop
threads on loopback TLS ports, real WatchBundle streams, real agents, real PostgreSQL/SQLite):

1. a lifecycle step committed in the database (``root prepare``'s store call) until every
   WatchBundle stream on each of two replicas sharing one PostgreSQL database has the new
   bundle. With ``NOTIFY`` (and the poll set to 60 s so it cannot help) against the baseline in
   the same process: the poll alone at its default 1 s (``db_notifications`` off).
2. ``root activate`` with N agents connected: when each agent holds a certificate from the new
   authority, for a reissue window of 0 (the baseline: every agent at once) and of W seconds;
   the peak issuance in any 250 ms and the time to the last agent.
3. ``Ledger.record`` of one certificate (the CA's group commit at its smallest): with the check
   that the issuing authority is still ACTIVE against the baseline without it, on SQLite and
   PostgreSQL.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench_issuance import postgres_database

from ca.api import methods
from ca.core.keys import key_id
from ca.core.records import IssuedRecord
from ca.runtime import CaRuntime
from ca.storage import ledger as ledger_module
from ca.storage.engine import make_engine
from ca.storage.ledger import Ledger
from tests.agent.harness import RunningAgent, agent_settings, write_token
from tests.postgres import postgres_base_url
from tests.server.harness import (
    RunningCa,
    TokenMinter,
    initialise_ca,
    running_ca,
    serving_settings,
)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary_ms(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 0.5) * 1000:7.1f} ms  p99 {percentile(values, 0.99) * 1000:7.1f}"
        f" ms  max {max(values) * 1000:7.1f} ms  (n={len(values)})"
    )


class BundleReader:
    """One WatchBundle stream read in a thread; records when each sequence arrived."""

    def __init__(self, ca: RunningCa, token: str) -> None:
        self.arrivals: dict[int, float] = {}
        self._channel = ca.channel()
        self._call = methods.watch_bundle(self._channel)(
            methods.WatchBundleRequest(), metadata=(("authorization", f"Bearer {token}"),)
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self._call:
                self.arrivals.setdefault(message.sequence, time.perf_counter())
        except grpc.RpcError:
            return

    def close(self) -> None:
        self._call.cancel()
        self._channel.close()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.001)


def bench_replica_push(rounds: int, streams: int, *, notify: bool) -> list[float]:
    """Commit -> last stream on either replica updated, per round."""
    refresh = timedelta(seconds=60) if notify else timedelta(seconds=1)
    latencies: list[float] = []
    minter = TokenMinter()
    with (
        postgres_database(postgres_base_url()) as url,
        tempfile.TemporaryDirectory() as tmp,
        ExitStack() as stack,
    ):
        directory = Path(tmp)
        settings = serving_settings(
            directory,
            url,
            minter,
            bundle_refresh_interval=refresh,
            db_notifications=notify,
            intermediate_rotation=False,
        )
        initialise_ca(settings).engine.dispose()
        replicas = [stack.enter_context(running_ca(settings)) for _ in range(2)]
        readers = [
            BundleReader(replica, minter.mint("bench", f"watcher-{i}"))
            for replica in replicas
            for i in range(streams)
        ]
        stack.callback(lambda: [r.close() for r in readers])
        wait_for(lambda: all(r.arrivals for r in readers), 30, "every stream's first bundle")
        for _ in range(rounds):
            prepare_root(settings)
            committed = time.perf_counter()
            sequence = CaRuntime(settings).authorities.bundle_sequence()
            assert sequence is not None
            wait_for(lambda s=sequence: all(s in r.arrivals for r in readers), 10, "the new bundle")
            latencies.append(max(r.arrivals[sequence] for r in readers) - committed)
            # A random pause, so that commits do not fall in step with the poll's phase.
            time.sleep(random.uniform(0.05, 1.05))
    return latencies


def prepare_root(settings: Any) -> None:
    """``meshca root prepare``: a new root and intermediate, trusted, not signing."""
    runtime = CaRuntime(settings)
    try:
        runtime.prepare_root(from_dir=None, actor="bench")
    finally:
        runtime.engine.dispose()


def activate_latest(settings: Any) -> None:
    """``meshca root activate``."""
    runtime = CaRuntime(settings)
    try:
        runtime.authorities.activate(None, actor="bench", now=datetime.now(UTC))
    finally:
        runtime.engine.dispose()


def bench_reissue(agents: int, window: float) -> tuple[list[float], int]:
    """Activation -> each agent holding a certificate from the new signer; and the most
    re-issues in any 250 ms."""
    minter = TokenMinter()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        directory = Path(tmp)
        settings = serving_settings(
            directory,
            f"sqlite:///{directory / 'ca.db'}",
            minter,
            reissue_window=timedelta(seconds=window),
            intermediate_rotation=False,
            bundle_refresh_interval=timedelta(milliseconds=20),
            rate_limit_per_caller=1000.0,
        )
        ca = stack.enter_context(running_ca(settings))
        running: list[RunningAgent] = []
        for i in range(agents):
            token = write_token(minter, directory, "bench", f"sa-{i}")
            agent = RunningAgent(agent_settings(ca, directory, token, name=f"a{i}"))
            agent.start()
            stack.callback(agent.stop)
            running.append(agent)
        for agent in running:
            agent.wait_ready(60)
        prepare_root(settings)
        wait_for(
            lambda: all(a.credentials.bundles.sequence >= 2 for a in running), 30, "the new root"
        )
        activate_latest(settings)
        activated = time.perf_counter()
        signer = CaRuntime(settings).authorities.bundle().signing_key_id
        done: dict[int, float] = {}

        def issuer(agent: RunningAgent) -> str | None:
            svid = agent.credentials.svid
            if svid is None or len(svid.chain) < 2:
                return None
            return key_id(svid.chain[1].public_key())  # type: ignore[arg-type]

        deadline = time.monotonic() + window + 30
        while len(done) < agents and time.monotonic() < deadline:
            for index, agent in enumerate(running):
                if index not in done and issuer(agent) == signer:
                    done[index] = time.perf_counter() - activated
            time.sleep(0.002)
        if len(done) < agents:
            raise TimeoutError(f"only {len(done)} of {agents} agents re-issued")
        times = sorted(done.values())
        peak = max(sum(1 for t in times if start <= t < start + 0.25) for start in times)
        return times, peak


def bench_ledger_record(url: str, count: int) -> tuple[float, float]:
    """Seconds per ``Ledger.record`` of one certificate with and without the in-service check."""
    settings = serving_settings(Path(tempfile.mkdtemp()), url, None, jwt_public_keys=["x"])
    runtime = initialise_ca(settings)
    signer = runtime.authorities.bundle().signing_key_id
    assert signer is not None
    ledger = Ledger(make_engine(url))
    now = datetime.now(UTC)

    def record() -> IssuedRecord:
        return IssuedRecord(
            serial=uuid.uuid4().hex,
            spiffe_id="spiffe://cluster.local/ns/bench/sa/web",
            namespace="bench",
            service_account="web",
            pod_name="web-0",
            pod_uid=str(uuid.uuid4()),
            issuer_key_id=signer,
            not_before=now,
            not_after=now + timedelta(hours=1),
            cert_sha256="0" * 64,
            public_key_sha256="0" * 64,
            requested_ttl_seconds=None,
            requester="bench",
            request_id=uuid.uuid4().hex,
            issued_at=now,
        )

    def timed() -> float:
        started = time.perf_counter()
        for _ in range(count):
            ledger.record([record()])
        return (time.perf_counter() - started) / count

    original = ledger_module._require_in_service
    timed()  # warm up
    checked = timed()
    ledger_module._require_in_service = lambda conn, ids: None  # type: ignore[assignment]
    try:
        unchecked = timed()
    finally:
        ledger_module._require_in_service = original
    checked = min(checked, timed())
    ledger.engine.dispose()
    runtime.engine.dispose()
    return checked, unchecked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and agents")
    args = parser.parse_args()
    rounds, streams, agents, window = (5, 5, 10, 2.0) if args.quick else (20, 20, 40, 4.0)

    print(f"1. change committed -> every WatchBundle stream on 2 replicas ({streams} each)")
    notified = bench_replica_push(rounds, streams, notify=True)
    polled = bench_replica_push(rounds, streams, notify=False)
    print(f"   NOTIFY (poll 60 s)        {summary_ms(notified)}   target <= 1 s")
    print(f"   baseline: poll 1 s only   {summary_ms(polled)}")
    ratio = percentile(notified, 0.5) / percentile(polled, 0.5)
    print(f"   ratio NOTIFY/poll p50: {ratio:.3f}")

    print(f"2. root activate -> {agents} agents re-issued from the new authority")
    for w in (0.0, window):
        times, peak = bench_reissue(agents, w)
        print(
            f"   window {w:4.1f} s: first {times[0] * 1000:7.1f} ms  p50 "
            f"{percentile(times, 0.5) * 1000:7.1f} ms  last {times[-1] * 1000:7.1f} ms  "
            f"peak {peak} re-issues in 250 ms"
        )

    print("3. Ledger.record of one certificate: with the authority-in-service check vs without")
    count = 200 if args.quick else 1000
    with tempfile.TemporaryDirectory() as tmp:
        checked, unchecked = bench_ledger_record(f"sqlite:///{tmp}/ledger.db", count)
        print(
            f"   SQLite      {checked * 1e3:6.3f} ms vs {unchecked * 1e3:6.3f} ms  "
            f"ratio {checked / unchecked:.3f}"
        )
    with postgres_database(postgres_base_url()) as url:
        checked, unchecked = bench_ledger_record(url, count)
        print(
            f"   PostgreSQL  {checked * 1e3:6.3f} ms vs {unchecked * 1e3:6.3f} ms  "
            f"ratio {checked / unchecked:.3f}"
        )


if __name__ == "__main__":
    main()
