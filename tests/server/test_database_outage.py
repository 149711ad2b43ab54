"""The database stops mid-run (PostgreSQL behind a TCP proxy that the test cuts): the CA fails
closed — UNAVAILABLE, nothing issued, not ready, gRPC health NOT_SERVING — and recovers by itself
when the database is back. Every certificate any client received is in the ledger."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from ca.api import methods
from tests.factories import make_csr
from tests.fakes.tcp_proxy import TcpProxy
from tests.server.conftest import Served, certificates, refusal, serial_of, wait_until

pytestmark = pytest.mark.postgres


def _health(served: Served) -> int:
    with served.ca.channel() as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=methods.CERTIFICATE_SERVICE), timeout=10
        )
    return int(response.status)


def test_database_outage_fails_closed_and_recovers(
    postgres_url: str, serve: Callable[..., Served]
) -> None:
    url = make_url(postgres_url)
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        through_proxy = url.set(host="127.0.0.1", port=proxy.port)
        served = serve(through_proxy.render_as_string(hide_password=False))
        ca = served.ca
        received: list[str] = []  # serials of every certificate a client got

        def issue() -> None:
            token = served.minter.mint(pod_name="web-1", pod_uid="uid-1")
            chain = ca.create_certificate(make_csr(), token, validity_seconds=3600)
            received.append(serial_of(certificates(chain)[0]))

        issue()
        assert ca.server.readiness()[0]
        assert _health(served) == health_pb2.HealthCheckResponse.SERVING

        proxy.cut()
        outage_started = time.monotonic()
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as info:
                issue()
            failure = refusal(info.value)
            assert failure.code == grpc.StatusCode.UNAVAILABLE, failure.details
            assert failure.reason == "database_unavailable"
        assert time.monotonic() - outage_started < 10, "refusing took too long"

        # the authority watch (polling every 100ms) notices: not ready, health NOT_SERVING
        wait_until(lambda: not ca.server.readiness()[0], what="readiness to go false")
        assert "database" in ca.server.readiness()[1]
        wait_until(
            lambda: _health(served) == health_pb2.HealthCheckResponse.NOT_SERVING,
            what="gRPC health NOT_SERVING",
        )

        proxy.restore()

        def recovered() -> bool:
            try:
                issue()
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    pytest.fail(f"refused with {error.code()}: {error.details()}")
                return False
            return True

        wait_until(recovered, timeout=20, what="issuance to recover")
        wait_until(lambda: ca.server.readiness()[0], what="readiness to come back")
        wait_until(
            lambda: _health(served) == health_pb2.HealthCheckResponse.SERVING,
            what="gRPC health SERVING",
        )
        issue()

        # Nothing was issued during the outage: the ledger holds exactly the certificates the
        # clients received, and every one of those.
        recorded = {row.serial for row in served.workload_rows()}
        assert len(received) == len(set(received)) >= 3
        assert recorded == set(received)


def test_readiness_follows_an_explicit_check(
    postgres_url: str, serve: Callable[..., Served]
) -> None:
    """``watch.check()`` (what the poll loop runs) is what readiness reports."""
    url = make_url(postgres_url)
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        served = serve(
            url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
            bundle_refresh_interval="1h",  # no polling: only the explicit checks below
        )
        ca = served.ca
        watch = ca.server.watch
        assert watch is not None

        proxy.cut()
        ca.call(watch.check())
        assert ca.server.readiness() == (False, "database not answering")

        proxy.restore()
        wait_until(
            lambda: ca.call(watch.check()) or ca.server.readiness()[0],
            what="readiness after the database is back",
        )


def test_no_certificate_escapes_the_ledger_when_the_database_dies_under_load(
    postgres_url: str, serve: Callable[..., Served]
) -> None:
    """Clients keep calling while the database is cut and restored: whatever a client received
    is in the ledger (a certificate committed whose answer was lost may be recorded but not
    received; the converse would be a certificate nobody can audit)."""
    url = make_url(postgres_url)
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        served = serve(
            url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        )
        ca = served.ca
        received: list[str] = []
        codes: list[grpc.StatusCode] = []
        stop = threading.Event()
        lock = threading.Lock()

        def client(index: int) -> None:
            token = served.minter.mint(pod_name=f"pod-{index}", pod_uid=f"uid-{index}")
            with ca.channel() as channel:
                for _ in range(400):  # bounded, whatever happens
                    if stop.is_set():
                        return
                    try:
                        chain = ca.create_certificate(make_csr(), token, channel=channel)
                    except grpc.RpcError as error:
                        with lock:
                            codes.append(error.code())
                        continue
                    with lock:
                        received.append(serial_of(certificates(chain)[0]))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(received) >= 10, what="issuance under load")
            proxy.cut()
            wait_until(lambda: grpc.StatusCode.UNAVAILABLE in codes, what="refusals in the outage")
            proxy.restore()
            count = len(received)
            wait_until(lambda: len(received) >= count + 10, timeout=20, what="recovery under load")
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)

        assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}, codes
        recorded = {row.serial for row in served.workload_rows()}
        assert set(received) <= recorded, set(received) - recorded
