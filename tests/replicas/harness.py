"""Several ``meshca ca serve`` replicas on one database, as an operator runs them: real
subprocesses, each on its own loopback ports with TLS, sharing the database and the KEK file;
the admin CLI run as a subprocess next to them; real gRPC clients (CreateCertificate, raw
WatchBundle streams) and each replica's /metrics."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from ca.api import methods
from ca.runtime import CaRuntime
from ca.settings import load_settings
from tests.cli.helpers import MESHCA, Meshca, Result, clean_env
from tests.factories import make_csr
from tests.meshca_process import MeshcaProcess
from tests.processes import free_port
from tests.server.conftest import wait_until
from tests.server.harness import ISSUER, TokenMinter

#: A replica may start slowly on a loaded two-core machine (interpreter start-up, imports,
#: migrations under the advisory lock, a first key generation).
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CALL_TIMEOUT = 15.0

_SEQUENCE = re.compile(r"^bundle sequence (\d+)$", re.MULTILINE)
_CHANGE = re.compile(
    r"^(?P<action>[a-z-]+): (?P<role>root|intermediate) (?P<id>[0-9a-f]{32}) "
    r"(?P<before>[a-z]+) -> (?P<after>[a-z]+)(?P<signs> \(signs from now on\))?$",
    re.MULTILINE,
)


@dataclass(frozen=True)
class Change:
    """One line of a lifecycle command's report (``prepare: root ID new -> prepared``)."""

    action: str
    role: str
    id: str
    before: str
    after: str
    signs: bool


def reported_changes(stdout: str) -> list[Change]:
    """The changes a lifecycle command reported."""
    return [
        Change(m["action"], m["role"], m["id"], m["before"], m["after"], bool(m["signs"]))
        for m in _CHANGE.finditer(stdout)
    ]


def reported_sequence(stdout: str) -> int | None:
    """The ``bundle sequence N`` a lifecycle command printed (none when it changed nothing)."""
    match = _SEQUENCE.search(stdout)
    return int(match[1]) if match else None


def metric(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with ``labels`` in a /metrics page (0 when absent: a labelled
    counter that never counted is not exported)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


class Replica(MeshcaProcess):
    """One ``meshca ca serve --workers 1`` subprocess."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        db_url: str,
        kek_file: Path,
        jwt_public_key: Path,
        env: Mapping[str, str],
    ) -> None:
        self.name = name
        self.port = free_port()
        self.mtls_port = free_port()
        metrics_port = free_port()
        args = (
            "--db", db_url,
            "--kek-file", str(kek_file),
            "ca", "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--mtls-listen", f"127.0.0.1:{self.mtls_port}",
            "--metrics-listen", f"127.0.0.1:{metrics_port}",
            "--workers", "1",
            "--jwt-issuer", ISSUER,
            "--jwt-public-key", str(jwt_public_key),
        )  # fmt: skip
        super().__init__(
            workdir,
            args,
            metrics_port=metrics_port,
            stderr_name=f"replica-{name}-{self.port}",
            env=env,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def mtls_address(self) -> str:
        return f"127.0.0.1:{self.mtls_port}"

    def describe(self) -> str:
        return f"replica {self.name}: {super().describe()}"

    def ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"replica {self.name} exited before it was ready:\n{self.describe()}")
        try:
            return self.http("/readyz")[0] == 200
        except OSError:
            return False

    def wait_ready(self) -> None:
        wait_until(self.ready, timeout=READY_TIMEOUT, what=f"replica {self.name}'s /readyz")

    def metrics(self) -> str:
        status, body = self.http("/metrics")
        assert status == 200, f"/metrics of replica {self.name} answered {status}"
        return body

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.metrics(), name, **labels)

    def channel(self, root_pem: str) -> grpc.Channel:
        """A TLS channel verifying the replica against ``root_pem`` (as an agent does)."""
        return grpc.secure_channel(self.address, grpc.ssl_channel_credentials(root_pem.encode()))

    def kill(self) -> None:
        """SIGKILL: no drain, no clean shutdown."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT)


class Deployment:
    """One CA database, its KEK file and token signer; replicas serving it; the admin CLI."""

    def __init__(self, workdir: Path, db_url: str) -> None:
        self.workdir = workdir
        self.db_url = db_url
        self.kek_file = workdir / "meshca.kek"
        self.minter = TokenMinter()
        self.jwt_public_key = self.minter.public_pem(workdir)
        self.replicas: list[Replica] = []
        self._meshca = Meshca(workdir)

    def admin(self, *args: str | Path, check: bool = True) -> Result:
        """The admin CLI on this database (``meshca --db URL --kek-file F ...``)."""
        return self._meshca("--db", self.db_url, "--kek-file", self.kek_file, *args, check=check)

    def admin_process(self, *args: str) -> subprocess.Popen[str]:
        """The admin CLI started and left running (to race several)."""
        return subprocess.Popen(
            [str(MESHCA), "--db", self.db_url, "--kek-file", str(self.kek_file), *args],
            cwd=self.workdir,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def start(self, name: str, env: Mapping[str, str] | None = None) -> Replica:
        """Start a replica (not waiting for it to be ready)."""
        replica = Replica(
            name, self.workdir, self.db_url, self.kek_file, self.jwt_public_key, env or {}
        )
        self.replicas.append(replica)
        return replica

    def start_ready(self, *names: str, env: Mapping[str, str] | None = None) -> list[Replica]:
        """Start replicas side by side and wait until every one is ready."""
        started = [self.start(name, env) for name in names]
        for replica in started:
            replica.wait_ready()
        return started

    def root_pem(self) -> str:
        """Every trusted root (what ``meshca root bundle`` prints), read from the database."""
        with self.runtime() as runtime:
            return runtime.authorities.bundle().pem()

    @contextmanager
    def runtime(self, **settings: Any) -> Iterator[CaRuntime]:
        """The CA's stores on the shared database, for checks (and steps) from the test."""
        runtime = CaRuntime(load_settings(db_url=self.db_url, kek_file=self.kek_file, **settings))
        try:
            yield runtime
        finally:
            runtime.engine.dispose()

    def token(self, namespace: str = "default", service_account: str = "web") -> str:
        """A fresh projected service-account token of a pod of its own."""
        return self.minter.mint(
            namespace,
            service_account,
            pod_name=f"{service_account}-{uuid.uuid4().hex[:8]}",
            pod_uid=str(uuid.uuid4()),
        )

    def create_certificate(
        self, channel: grpc.Channel, namespace: str = "default", service_account: str = "web"
    ) -> list[x509.Certificate]:
        """CreateCertificate with a fresh key and token; the chain (leaf first)."""
        response = methods.create_certificate(channel)(
            methods.CertificateRequest(csr=make_csr().decode()),
            metadata=(("authorization", f"Bearer {self.token(namespace, service_account)}"),),
            timeout=CALL_TIMEOUT,
        )
        return [x509.load_pem_x509_certificate(pem.encode()) for pem in response.cert_chain]

    def stop_all(self) -> None:
        for replica in self.replicas:
            replica.ensure_stopped()


@dataclass(frozen=True)
class Received:
    """A bundle message, and when the client got it (monotonic and wall-clock seconds)."""

    at: float
    wall: float
    message: methods.TrustBundleMessage


class BundleStream:
    """A raw ``WatchBundle`` stream to one replica, read in a thread of its own; every message
    is kept with the time it arrived."""

    def __init__(self, replica: Replica, root_pem: str, token: str) -> None:
        self.replica = replica
        self._channel = replica.channel(root_pem)
        self._call = methods.watch_bundle(self._channel)(
            methods.WatchBundleRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        self._received: list[Received] = []
        self._error: grpc.RpcError | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self._call:
                got = Received(time.monotonic(), time.time(), message)
                with self._changed:
                    self._received.append(got)
                    self._changed.notify_all()
        except grpc.RpcError as error:
            with self._changed:
                self._error = error
                self._changed.notify_all()

    def wait_until(
        self, predicate: Callable[[methods.TrustBundleMessage], bool], *, timeout: float, what: str
    ) -> Received:
        """The first message (received so far or next) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for got in self._received:
                    if predicate(got.message):
                        return got
                if self._error is not None:
                    pytest.fail(
                        f"the bundle stream to replica {self.replica.name} broke while waiting "
                        f"for {what}: {self._error}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(
                        f"timed out after {timeout}s waiting for {what} on replica "
                        f"{self.replica.name}'s bundle stream"
                    )
                self._changed.wait(remaining)

    def first(self, *, timeout: float = 30.0) -> Received:
        return self.wait_until(lambda _m: True, timeout=timeout, what="the first bundle")

    def close(self) -> None:
        """End the stream (closing its channel cancels it)."""
        self._channel.close()
        self._thread.join(10)


@dataclass(frozen=True)
class Attempt:
    """One CreateCertificate sent to one replica; ``code`` is ``None`` when it succeeded."""

    replica: str
    started: float
    ended: float
    code: grpc.StatusCode | None


@dataclass(frozen=True)
class LoadCall:
    """One certificate a client wanted: its attempts (the second one on the other replica, when
    the first failed) and the serial it finally received, if any."""

    index: int
    attempts: tuple[Attempt, ...]
    serial: str | None

    @property
    def started(self) -> float:
        return self.attempts[0].started

    @property
    def served_by(self) -> str | None:
        last = self.attempts[-1]
        return last.replica if last.code is None else None


class LoadRun:
    """CreateCertificate calls at ``rate`` per second, each with a fresh key and a fresh token
    (its own pod), alternating between the replicas and failing over to the other one when a
    call fails, as an agent given both addresses does."""

    def __init__(
        self, deployment: Deployment, replicas: list[Replica], root_pem: str, rate: float
    ) -> None:
        self._deployment = deployment
        self._replicas = replicas
        self._channels = {r.name: r.channel(root_pem) for r in replicas}
        self._rate = rate
        self._calls: list[LoadCall] = []
        self._in_flight = {r.name: 0 for r in replicas}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="load")
        self._futures: list[Future[None]] = []
        self._driver = threading.Thread(target=self._drive, daemon=True)
        self._driver.start()

    def _drive(self) -> None:
        start = time.monotonic()
        index = 0
        while not self._stop.is_set():
            due = start + index / self._rate
            if self._stop.wait(max(due - time.monotonic(), 0.0)):
                return
            self._futures.append(self._pool.submit(self._call, index))
            index += 1

    def _call(self, index: int) -> None:
        order = self._replicas if index % 2 == 0 else self._replicas[::-1]
        csr = make_csr().decode()
        token = self._deployment.token("load", "worker")
        attempts: list[Attempt] = []
        serial: str | None = None
        for replica in order:
            with self._lock:
                self._in_flight[replica.name] += 1
            started = time.monotonic()
            try:
                response = methods.create_certificate(self._channels[replica.name])(
                    methods.CertificateRequest(csr=csr),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=CALL_TIMEOUT,
                )
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
                attempts.append(Attempt(replica.name, started, time.monotonic(), code))
                continue
            finally:
                with self._lock:
                    self._in_flight[replica.name] -= 1
            attempts.append(Attempt(replica.name, started, time.monotonic(), None))
            leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
            serial = format(leaf.serial_number, "032x")
            break
        with self._lock:
            self._calls.append(LoadCall(index, tuple(attempts), serial))

    def in_flight(self, replica: str) -> int:
        """Calls sent to ``replica`` and not answered yet."""
        with self._lock:
            return self._in_flight[replica]

    @property
    def calls(self) -> list[LoadCall]:
        """The calls finished so far, in order."""
        with self._lock:
            return sorted(self._calls, key=lambda c: c.index)

    def stop(self) -> list[LoadCall]:
        """Stop sending, let the calls in flight finish; every call."""
        self._stop.set()
        self._driver.join(30)
        self._pool.shutdown(wait=True)
        for channel in self._channels.values():
            channel.close()
        for future in self._futures:
            future.result()  # a client that crashed (not a failed call) fails the test
        return self.calls
