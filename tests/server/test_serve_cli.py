"""``meshca ca serve`` as a user runs it: a real subprocess (here a supervisor and two workers
sharing the port), reached over TLS that is verified against ``meshca root bundle``, watched
through /readyz, /metrics and the gRPC health service, and stopped with SIGTERM."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from ca.api import methods
from ca.core.keys import key_id
from tests.cli.helpers import Meshca
from tests.factories import make_csr
from tests.meshca_process import MeshcaProcess
from tests.processes import free_port
from tests.server.conftest import certificates, spiffe_id, uri_sans, wait_until

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class ServeProcess(MeshcaProcess):
    """A running ``meshca ca serve`` on an SQLite database in ``workdir``."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        metrics_port = free_port()
        args = (
            "--db", f"sqlite:///{workdir / 'meshca.db'}",
            "--kek-file", str(workdir / "meshca.kek"),
            "ca", "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--metrics-listen", f"127.0.0.1:{metrics_port}",
            *args,
        )  # fmt: skip
        super().__init__(workdir, args, metrics_port=metrics_port, stderr_name=f"serve-{self.port}")

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited before it was ready:\n{self.describe()}")
            try:
                return self.http("/readyz")[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout=READY_TIMEOUT, what="/readyz to answer 200")


@contextmanager
def serving(workdir: Path, *args: str) -> Iterator[ServeProcess]:
    server = ServeProcess(workdir, *args)
    try:
        yield server
    finally:
        server.ensure_stopped()


def _metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels} in /metrics:\n{text}")


def _health(channel: grpc.Channel, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status)


@pytest.fixture(scope="module")
def dev_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``meshca dev signing-key``'s directory (its public key path is what it prints)."""
    directory = tmp_path_factory.mktemp("dev-keys")
    printed = Meshca(directory)("dev", "signing-key", "--dir", directory / "keys").stdout.strip()
    assert Path(printed) == directory / "keys" / "sa-signer.pub.pem"
    return directory / "keys"


def _dev_token(meshca: Meshca, keys: Path, *args: str) -> str:
    return meshca("dev", "token", "--key", keys / "sa-signer.key.pem", *args).stdout.strip()


def test_serve_with_two_workers_end_to_end(tmp_path: Path, dev_keys: Path) -> None:
    meshca = Meshca(tmp_path)

    with serving(
        tmp_path,
        "--mtls-listen", f"127.0.0.1:{free_port()}",
        "--workers", "2",
        "--jwt-issuer", "meshca-dev",
        "--jwt-public-key", str(dev_keys / "sa-signer.pub.pem"),
        "--log-format", "json",
    ) as server:  # fmt: skip
        token = _dev_token(
            meshca, dev_keys,
            "--namespace", "shop", "--service-account", "cart", "--pod-name", "cart-1",
        )  # fmt: skip
        server.wait_ready()
        status, body = server.http("/readyz")
        assert (status, body.strip()) == (200, "2/2 workers ready")
        assert server.http("/healthz")[0] == 200
        root_pem = meshca("root", "bundle").stdout
        assert root_pem.startswith("-----BEGIN CERTIFICATE-----")

        # TLS verified against the bundle the admin CLI prints; the token from `dev token`
        credentials = grpc.ssl_channel_credentials(root_pem.encode())
        with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
            assert _health(channel, "") == health_pb2.HealthCheckResponse.SERVING
            assert (
                _health(channel, methods.CERTIFICATE_SERVICE)
                == health_pb2.HealthCheckResponse.SERVING
            )
            response = methods.create_certificate(channel)(
                methods.CertificateRequest(csr=make_csr().decode()),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=30,
            )
        leaf, intermediate, root = certificates(list(response.cert_chain))
        assert uri_sans(leaf) == [spiffe_id("shop", "cart")]
        assert root.public_bytes(serialization.Encoding.PEM).decode() == root_pem

        metrics = server.http("/metrics")[1]
        assert _metric(metrics, "meshca_csr_requests_total", result="issued") >= 1
        intermediate_expiry = _metric(
            metrics,
            "meshca_ca_certificate_expiry_timestamp_seconds",
            role="intermediate",
            key_id=key_id(intermediate.public_key()),  # type: ignore[arg-type]
        )
        assert intermediate_expiry == intermediate.not_valid_after_utc.timestamp()
        root_expiry = _metric(
            metrics, "meshca_ca_certificate_expiry_timestamp_seconds", role="root"
        )
        assert root_expiry == root.not_valid_after_utc.timestamp()
        server_expiry = _metric(metrics, "meshca_server_certificate_expiry_timestamp_seconds")
        expected = (datetime.now(UTC) + timedelta(hours=24)).timestamp()
        assert abs(server_expiry - expected) < 600, "the server certificate lives 24h"

        started = time.monotonic()
        assert server.terminate() == 0, server.describe()
        assert time.monotonic() - started < STOP_TIMEOUT

    # --log-format json: every line of stderr (supervisor and workers) is one JSON object, and
    # the token is in none of them
    lines = server.stderr.splitlines()
    assert lines, "the server logged nothing"
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a stderr line is not JSON: {line!r}\n{server.describe()}")
        assert token not in line
        assert token.split(".")[2] not in line
    issued = [e for e in entries if e.get("message") == "issued"]
    assert len(issued) == 1
    assert issued[0]["spiffe_id"] == spiffe_id("shop", "cart")


def test_plaintext_warns_loudly(tmp_path: Path, dev_keys: Path) -> None:
    meshca = Meshca(tmp_path)
    with serving(
        tmp_path,
        "--plaintext",
        "--mtls-listen", "off",
        "--workers", "1",
        "--jwt-issuer", "meshca-dev",
        "--jwt-public-key", str(dev_keys / "sa-signer.pub.pem"),
    ) as server:  # fmt: skip
        token = _dev_token(meshca, dev_keys)
        server.wait_ready()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            response = methods.create_certificate(channel)(
                methods.CertificateRequest(csr=make_csr().decode()),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=30,
            )
        assert uri_sans(certificates(list(response.cert_chain))[0]) == [
            spiffe_id("default", "default")
        ]
        assert server.terminate() == 0, server.describe()
    warnings = [line for line in server.stderr.splitlines() if "WITHOUT TLS" in line]
    assert len(warnings) == 1, server.describe()
    assert "WARNING" in warnings[0]
    assert "--plaintext" in warnings[0]


@pytest.mark.parametrize("workers", ["1", "2"], ids=["one-worker", "two-workers"])
def test_missing_jwt_keys_exit_3_naming_the_flags(tmp_path: Path, workers: str) -> None:
    with serving(
        tmp_path,
        "--mtls-listen", "off",
        "--workers", workers,
        "--jwt-issuer", "meshca-dev",
    ) as server:  # fmt: skip

        def exited_or_looping() -> bool:
            # a supervisor restarting its failing workers never exits by itself
            return server.process.poll() is not None or "restarting" in server.stderr

        wait_until(exited_or_looping, timeout=READY_TIMEOUT, what="the server to give up")
        assert server.process.poll() == 3, server.describe()
    errors = [line for line in server.stderr.splitlines() if line.startswith("meshca: error:")]
    assert len(errors) == 1, server.describe()
    assert "--jwks" in errors[0]
    assert "--jwt-public-key" in errors[0]
    assert "Traceback" not in server.stderr


def test_first_start_says_what_it_created_and_a_restart_says_nothing(
    tmp_path: Path, dev_keys: Path
) -> None:
    """`make run` on a fresh checkout: the admin learns the CA was created, where, and that the
    new KEK file must be backed up; a restart on the same files creates nothing."""
    flags = (
        "--workers", "1", "--mtls-listen", "off",
        "--jwt-issuer", "meshca-dev", "--jwt-public-key", str(dev_keys / "sa-signer.pub.pem"),
    )  # fmt: skip
    logs = []
    for _ in range(2):
        with serving(tmp_path, *flags) as server:
            server.wait_ready()
            assert server.terminate() == 0, server.describe()
        logs.append(server.stderr)

    first, second = logs
    database = f"sqlite:///{tmp_path / 'meshca.db'}"
    assert f"created the CA for trust domain cluster.local in {database}, signing key" in first
    (kek_line,) = [line for line in first.splitlines() if "created key-encryption key" in line]
    assert " WARNING " in kek_line
    assert f"{(tmp_path / 'meshca.kek').resolve()} (mode 0600); back it up" in kek_line
    assert "created" not in second, second
