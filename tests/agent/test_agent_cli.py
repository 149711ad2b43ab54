"""``meshca agent`` as a user runs it: a real subprocess of the installed console script, fed by a
real CA over TLS on loopback, watched through /readyz, /healthz and /metrics, reached over its
unix sockets with real gRPC clients, and stopped with SIGTERM.

Configuration mistakes end it at once with exit 3 and one ``meshca: error:`` line (no
traceback); a CA that refuses the token does not: the agent keeps running, unready, and recovers
when the kubelet writes a good token."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from ca.core.authority import build_root
from ca.core.identity import parse_trust_domain
from ca.core.keys import KeyType, generate_private_key
from sds.api import xds
from tests.agent.harness import socket_dir
from tests.cli.helpers import MESHCA, Result, assert_error, clean_env
from tests.meshca_process import MeshcaProcess
from tests.processes import free_port
from tests.server.conftest import wait_until
from tests.server.harness import RunningCa, TokenMinter, running_ca, serving_settings

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
RUN_TIMEOUT = 60.0
SPIFFE_ID = "spiffe://cluster.local/ns/shop/sa/cart"


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory, minter: TokenMinter) -> Iterator[RunningCa]:
    """One in-process CA for the module; the agents under test are subprocesses."""
    directory = tmp_path_factory.mktemp("ca")
    settings = serving_settings(directory, f"sqlite:///{directory / 'meshca.db'}", minter)
    with running_ca(settings) as served:
        yield served


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short directory (unix socket paths are limited to 107 bytes) for sockets and files."""
    with socket_dir() as directory:
        yield directory


@pytest.fixture
def ca_root(workdir: Path, ca: RunningCa) -> Path:
    path = workdir / "ca-root.pem"
    path.write_bytes(ca.root_pem())
    return path


@pytest.fixture
def token_file(workdir: Path, minter: TokenMinter) -> Path:
    path = workdir / "token"
    path.write_text(minter.mint("shop", "cart"))
    return path


@pytest.fixture(scope="module")
def any_root_pem() -> bytes:
    """A valid root certificate, for the runs that must stop before reaching any CA."""
    root = build_root(
        parse_trust_domain("cluster.local"),
        generate_private_key(KeyType.EC_P256),
        now=datetime.now(UTC),
        ttl=timedelta(days=1),
    )
    return root.certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def offline(workdir: Path, any_root_pem: bytes) -> dict[str, Path]:
    """Good local input (root file, token file, socket path) and no CA needed."""
    root = workdir / "root.pem"
    root.write_bytes(any_root_pem)
    token = workdir / "token"
    token.write_text("header.payload.signature\n")
    return {"root": root, "token": token, "sds": workdir / "sds.sock"}


# --- helpers -------------------------------------------------------------------------------------


def closed_ca_address() -> str:
    """An address where no CA listens: these runs must fail before calling it."""
    return f"127.0.0.1:{free_port()}"


def run_cli(*args: str | Path, env: Mapping[str, str] | None = None) -> Result:
    """``meshca *args`` to completion (a clean environment plus ``env``)."""
    full_env = clean_env()
    full_env.update(env or {})
    argv = tuple(str(a) for a in args)
    proc = subprocess.run(
        [str(MESHCA), *argv],
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    return Result(argv, proc.returncode, proc.stdout, proc.stderr)


def offline_args(files: Mapping[str, Path], **replace: str | Path) -> list[str | Path]:
    values: dict[str, str | Path] = {
        "--ca-address": closed_ca_address(),
        "--ca-root": files["root"],
        "--token-file": files["token"],
        "--sds-socket": files["sds"],
        "--metrics-listen": "off",
    }
    values.update({f"--{k.replace('_', '-')}": v for k, v in replace.items()})
    return ["agent", *(item for pair in values.items() for item in pair)]


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels} in /metrics:\n{text}")


class AgentProcess(MeshcaProcess):
    """A running ``meshca agent``."""

    stop_timeout = STOP_TIMEOUT

    def __init__(
        self, workdir: Path, args: Sequence[str | Path], env: Mapping[str, str], metrics_port: int
    ) -> None:
        super().__init__(
            workdir, args, metrics_port=metrics_port, stderr_name=f"agent-{metrics_port}", env=env
        )

    def http(self, path: str) -> tuple[int, str] | None:  # type: ignore[override]
        """Status and body of GET ``path`` on the ops port; ``None`` while it does not answer."""
        if self.process.poll() is not None:
            pytest.fail(f"the agent exited:\n{self.describe()}")
        try:
            return super().http(path)
        except OSError:
            return None

    def wait_readyz(self, status: int, *, startswith: str = "") -> str:
        """The /readyz body once it answers ``status`` with a body starting ``startswith``."""

        def answered() -> str | None:
            reply = self.http("/readyz")
            if reply is not None and reply[0] == status and reply[1].startswith(startswith):
                return reply[1]
            return None

        return wait_until(answered, timeout=READY_TIMEOUT, what=f"/readyz to answer {status}")


@contextmanager
def agent_process(
    workdir: Path,
    args: Sequence[str | Path] = (),
    env: Mapping[str, str] | None = None,
    *,
    metrics_port: int | None = None,
) -> Iterator[AgentProcess]:
    port = metrics_port if metrics_port is not None else free_port()
    process = AgentProcess(workdir, args, env or {}, port)
    try:
        yield process
    finally:
        process.ensure_stopped()


def agent_args(
    ca: RunningCa, ca_root: Path, token_file: Path, sds_socket: Path, metrics_port: int
) -> list[str | Path]:
    return [
        "--ca-address", f"127.0.0.1:{ca.port}",
        "--ca-root", ca_root,
        "--token-file", token_file,
        "--sds-socket", sds_socket,
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
    ]  # fmt: skip


def fetch_default_secret(sds_socket: Path) -> Any:
    """The ``default`` secret (chain and key) by ``FetchSecrets`` over the SDS socket."""
    with grpc.insecure_channel(f"unix:{sds_socket}") as channel:
        fetch = channel.unary_unary(
            xds.FETCH_SECRETS,
            request_serializer=xds.DiscoveryRequest.SerializeToString,
            response_deserializer=xds.DiscoveryResponse.FromString,
        )
        response = fetch(xds.DiscoveryRequest(resource_names=["default"]), timeout=10)
    [resource] = response.resources
    secret = xds.Secret()
    assert resource.Unpack(secret)
    assert secret.name == "default"
    return secret


def pem_body_lines(pem: bytes) -> list[str]:
    """The base64 lines of a PEM text (not its BEGIN/END armour)."""
    return [
        line for line in pem.decode().splitlines() if line.strip() and not line.startswith("-----")
    ]


# --- configuration mistakes: exit 3, one clear line ----------------------------------------------


def test_missing_token_file(offline: dict[str, Path], workdir: Path) -> None:
    missing = workdir / "no-such-token"
    result = run_cli(*offline_args(offline, token_file=missing))

    assert_error(result, 3, f"token file {missing} does not exist")
    assert not offline["sds"].exists()


def test_unreadable_token_file(offline: dict[str, Path], workdir: Path) -> None:
    if os.geteuid() == 0:
        # root reads a chmod-000 file regardless, so what root cannot read as a token is a
        # directory. The --token-file flag refuses a directory itself (click usage error, exit 2),
        # so the path comes through MESHCA_TOKEN_FILE to reach the agent's own check.
        unreadable = workdir / "token-dir"
        unreadable.mkdir()
        args = offline_args(offline)
        flag = args.index("--token-file")
        del args[flag : flag + 2]
        result = run_cli(*args, env={"MESHCA_TOKEN_FILE": str(unreadable)})
        assert_error(result, 3, f"token file {unreadable} is a directory")
    else:
        unreadable = offline["token"]
        unreadable.chmod(0)
        result = run_cli(*offline_args(offline))
        assert_error(result, 3, f"token file {unreadable} is not readable by this user")
    assert not offline["sds"].exists()


def test_missing_ca_root_file(offline: dict[str, Path], workdir: Path) -> None:
    missing = workdir / "no-such-root.pem"
    result = run_cli(*offline_args(offline, ca_root=missing))

    assert_error(result, 3, f"CA root file {missing} does not exist")


def test_ca_root_file_without_a_certificate(offline: dict[str, Path], workdir: Path) -> None:
    not_a_root = workdir / "key-not-root.pem"
    not_a_root.write_bytes(
        generate_private_key(KeyType.EC_P256).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    result = run_cli(*offline_args(offline, ca_root=not_a_root))

    assert_error(result, 3, f"CA root file {not_a_root} holds no PEM certificate")


def test_sds_socket_in_a_missing_directory(offline: dict[str, Path], workdir: Path) -> None:
    socket_path = workdir / "missing" / "sds.sock"
    result = run_cli(*offline_args(offline, sds_socket=socket_path))

    assert_error(
        result, 3, f"directory {workdir / 'missing'} for socket {socket_path} does not exist"
    )
    assert not (workdir / "missing").exists()


def test_sds_socket_served_by_a_live_process_is_left_alone(offline: dict[str, Path]) -> None:
    path = offline["sds"]
    with closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as live:
        live.bind(str(path))
        live.listen(8)
        inode = path.stat().st_ino

        result = run_cli(*offline_args(offline))

        assert_error(result, 3, f"socket {path} is in use by a running process")
        # the other process's socket is still there, the same file, and still accepts
        assert path.stat().st_ino == inode
        with closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as client:
            client.settimeout(5)
            client.connect(str(path))
            live.settimeout(5)
            accepted, _ = live.accept()
            accepted.close()


# --- running against a real CA -------------------------------------------------------------------


def test_stale_socket_file_is_replaced_and_served(
    ca: RunningCa, workdir: Path, ca_root: Path, token_file: Path
) -> None:
    sds_socket = workdir / "sds.sock"
    with closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as dead:
        dead.bind(str(sds_socket))  # closed without unlinking: what a killed process leaves
    with (
        closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as probe,
        pytest.raises(ConnectionRefusedError),
    ):
        probe.connect(str(sds_socket))  # the file is there, but nothing answers on it

    port = free_port()
    with agent_process(
        workdir,
        ["agent", *agent_args(ca, ca_root, token_file, sds_socket, port)],
        metrics_port=port,
    ) as agent:
        agent.wait_readyz(200)
        secret = fetch_default_secret(sds_socket)  # served on the same path now

        assert secret.tls_certificate.certificate_chain.inline_bytes.startswith(b"-----BEGIN")
        assert agent.terminate() == 0


def test_refused_token_keeps_the_agent_running_until_a_good_token_arrives(
    ca: RunningCa, workdir: Path, ca_root: Path, minter: TokenMinter
) -> None:
    token_file = workdir / "token"
    token_file.write_text(TokenMinter().mint("shop", "cart"))  # signed by a key the CA ignores
    sds_socket = workdir / "sds.sock"
    port = free_port()

    with agent_process(
        workdir,
        ["agent", *agent_args(ca, ca_root, token_file, sds_socket, port)],
        metrics_port=port,
    ) as agent:
        refused = agent.wait_readyz(503, startswith="no X.509-SVID: ")
        assert agent.http("/healthz") == (200, "ok\n")
        assert sds_socket.exists()

        # the kubelet rotates the projected token in place: no restart needed
        token_file.write_text(minter.mint("shop", "cart"))
        ready = agent.wait_readyz(200)
        assert ready.startswith(f"serving {SPIFFE_ID} serial ")
        assert agent.process.poll() is None
        assert agent.terminate() == 0

    # /readyz must tell an operator why: the CA's refusal (status UNAUTHENTICATED, reason
    # token_bad_signature), not a generic failure.
    assert refused.startswith(f"no X.509-SVID: CA 127.0.0.1:{ca.port}: "), refused
    assert "token_bad_signature" in refused, (
        f"/readyz does not name the CA's refusal: {refused!r} (see error_from_rpc in "
        "sds/ca_client.py: grpc.aio.AioRpcError is not a grpc.Call)"
    )


def test_normal_run_metrics_sigterm_and_no_secret_in_debug_logs(
    ca: RunningCa, workdir: Path, ca_root: Path, token_file: Path
) -> None:
    sds_socket = workdir / "sds.sock"
    workload_socket = workdir / "wl.sock"
    port = free_port()
    args = [
        "--log-level", "debug",
        "agent",
        *agent_args(ca, ca_root, token_file, sds_socket, port),
        "--workload-api-socket", workload_socket,
        "--log-format", "json",
    ]  # fmt: skip

    with agent_process(workdir, args, metrics_port=port) as agent:
        ready = agent.wait_readyz(200)
        assert ready.startswith(f"serving {SPIFFE_ID} serial ")

        reply = agent.http("/metrics")
        assert reply is not None
        assert reply[0] == 200
        assert metric(reply[1], "meshca_agent_svid_seconds_to_expiry") > 0
        assert metric(reply[1], "meshca_agent_svid_rotations_total", via="token") >= 1

        secret = fetch_default_secret(sds_socket)
        key_pem = secret.tls_certificate.private_key.inline_bytes
        assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
        assert workload_socket.exists()

        assert agent.terminate() == 0
        stderr = agent.stderr

    assert not sds_socket.exists()
    assert not workload_socket.exists()

    lines = stderr.splitlines()
    records = [json.loads(line) for line in lines]  # --log-format json: every line is JSON
    assert any(r["message"] == "agent started" for r in records), stderr
    assert any(r["level"] == "debug" for r in records), "--log-level debug had no effect"
    assert any(r["message"] == "X.509-SVID obtained" for r in records), stderr

    token = token_file.read_text().strip()
    assert token not in stderr
    for part in token.split("."):  # nor any part of it (the signature in particular)
        assert part not in stderr
    for line in pem_body_lines(key_pem):
        assert line not in stderr, "a line of the workload's private key reached the log"


def test_settings_from_the_environment_alone(
    ca: RunningCa, workdir: Path, ca_root: Path, token_file: Path
) -> None:
    sds_socket = workdir / "sds.sock"
    port = free_port()
    env = {
        "MESHCA_CA_ADDRESS": f"127.0.0.1:{ca.port}",
        "MESHCA_CA_ROOT": str(ca_root),
        "MESHCA_TOKEN_FILE": str(token_file),
        "MESHCA_SDS_SOCKET": str(sds_socket),
        # not one of the four required settings: a free port rather than the fixed default
        # 127.0.0.1:15020, which another agent on the test machine may hold
        "MESHCA_METRICS_LISTEN": f"127.0.0.1:{port}",
    }

    with agent_process(workdir, ["agent"], env, metrics_port=port) as agent:
        agent.wait_readyz(200)
        secret = fetch_default_secret(sds_socket)
        assert agent.terminate() == 0

    chain = secret.tls_certificate.certificate_chain.inline_bytes
    assert chain.startswith(b"-----BEGIN CERTIFICATE-----")
    assert not sds_socket.exists()
