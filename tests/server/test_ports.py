"""Only the workers of one ``meshca ca serve`` share a port. A second server (on another
database) or any other program on one of its addresses makes ``meshca ca serve`` exit 3 with
one line naming the address and the process holding it, and a server already there keeps
serving. Real processes throughout: ``meshca`` subprocesses and plain listening sockets."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ca.server.port_owner import command_line, tcp_listener
from ca.server.ports import AddressClaim
from tests.cli.helpers import Meshca, Result, assert_error, in_parallel
from tests.meshca_process import MeshcaProcess
from tests.processes import free_port, stop_process
from tests.server.conftest import wait_until
from tests.server.harness import ISSUER, TokenMinter

READY_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def public_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return TokenMinter().public_pem(tmp_path_factory.mktemp("keys"))


def _serve_args(workdir: Path, public_key: Path, *args: str, quiet: bool = False) -> list[str]:
    """``meshca ca serve`` on its own SQLite database in ``workdir``; ``quiet``: logging only
    errors (a server logs its start-up at info), so its stderr is its error line alone."""
    workdir.mkdir(exist_ok=True)
    return [
        *(["--log-level", "error"] if quiet else []),
        "--db", f"sqlite:///{workdir / 'meshca.db'}",
        "--kek-file", str(workdir / "meshca.kek"),
        "ca", "serve",
        "--jwt-issuer", ISSUER,
        "--jwt-public-key", str(public_key),
        *args,
    ]  # fmt: skip


def _loopback(port: int) -> str:
    return f"127.0.0.1:{port}"


def _start(workdir: Path, public_key: Path, port: int, workers: int) -> MeshcaProcess:
    metrics_port = free_port()
    args = _serve_args(
        workdir, public_key,
        "--plaintext",
        "--listen", _loopback(port),
        "--metrics-listen", _loopback(metrics_port),
        "--workers", str(workers),
    )  # fmt: skip
    return MeshcaProcess(workdir, args, metrics_port=metrics_port, stderr_name="serve")


def _ready(server: MeshcaProcess) -> str | None:
    """/readyz's body once it answers 200; fails the test if the server exited."""
    if server.process.poll() is not None:
        pytest.fail(f"the server exited:\n{server.describe()}")
    try:
        status, body = server.http("/readyz")
    except OSError:
        return None
    return body.strip() if status == 200 else None


def _health(port: int) -> int:
    with grpc.insecure_channel(_loopback(port)) as channel:
        request = health_pb2.HealthCheckRequest(service="")
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status)


def _assert_still_serving(server: MeshcaProcess, port: int, workers: int) -> None:
    ready = _ready(server)
    assert ready is not None, server.describe()
    if workers > 1:
        assert ready == f"{workers}/{workers} workers ready"
    assert _health(port) == health_pb2.HealthCheckResponse.SERVING


@contextmanager
def _running(server: MeshcaProcess) -> Iterator[MeshcaProcess]:
    try:
        yield server
    finally:
        server.ensure_stopped()


@pytest.mark.parametrize("first_workers", [1, 2])
def test_a_second_server_on_the_port_exits_3_naming_the_first(
    tmp_path: Path, public_key: Path, first_workers: int
) -> None:
    port = free_port()
    with _running(_start(tmp_path / "first", public_key, port, first_workers)) as first:
        wait_until(lambda: _ready(first), timeout=READY_TIMEOUT, what="the first server ready")

        def second(workers: int) -> Result:
            args = _serve_args(
                tmp_path / f"second-{workers}", public_key,
                "--plaintext",
                "--listen", _loopback(port),
                "--metrics-listen", _loopback(free_port()),
                "--workers", str(workers),
                quiet=True,
            )  # fmt: skip
            return Meshca(tmp_path)(*args, check=False)

        for result in in_parallel(lambda: second(1), lambda: second(2)):
            reason = assert_error(
                result, 3, f"--listen {_loopback(port)}", f"pid {first.process.pid} ("
            )
            assert "another meshca ca serve" in reason
        for workers in (1, 2):  # refused before it touched anything: no database, no KEK
            left = {p.name for p in (tmp_path / f"second-{workers}").iterdir()}
            assert not left & {"meshca.db", "meshca.kek"}, left

        _assert_still_serving(first, port, first_workers)
        assert first.terminate() == 0, first.describe()


def test_two_servers_started_together_on_one_port_one_serves(
    tmp_path: Path, public_key: Path
) -> None:
    """Workers bind seconds after their supervisor starts; the claim is taken before, so two
    supervisors starting at the same moment cannot both pass the check."""
    port = free_port()
    with ExitStack() as stack:
        servers = [
            stack.enter_context(_running(_start(tmp_path / name, public_key, port, 2)))
            for name in ("a", "b")
        ]

        def one_exited() -> MeshcaProcess | None:
            return next((s for s in servers if s.process.poll() is not None), None)

        loser = wait_until(one_exited, timeout=READY_TIMEOUT, what="one server to exit")
        winner = servers[1 - servers.index(loser)]
        assert loser.process.returncode == 3, loser.describe()
        assert f"--listen {_loopback(port)} is already in use by" in loser.stderr
        wait_until(lambda: _ready(winner), timeout=READY_TIMEOUT, what="the other one ready")
        _assert_still_serving(winner, port, 2)
        assert winner.terminate() == 0, winner.describe()


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_the_workers_of_a_killed_supervisor_stop_and_free_the_port(
    tmp_path: Path, public_key: Path
) -> None:
    """Orphaned workers would hold the port for no server, and the supervisor started again
    (by systemd, say) would be refused."""
    port = free_port()
    with _running(_start(tmp_path, public_key, port, 2)) as server:
        wait_until(lambda: _ready(server), timeout=READY_TIMEOUT, what="the server ready")
        children = _children(server.process.pid)  # the workers and multiprocessing's tracker
        assert len(children) >= 2
    try:
        wait_until(
            lambda: tcp_listener("127.0.0.1", port) is None,
            timeout=30,
            what="the orphaned workers to close the port",
        )
    except BaseException:
        for pid in children:  # left running: end them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise
    with AddressClaim({"--listen": _loopback(port)}):
        pass


@contextmanager
def _listening(*, reuse_port: bool) -> Iterator[int]:
    """A plain socket listening on a loopback port (with SO_REUSEPORT, as gRPC servers set it,
    when ``reuse_port``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        if reuse_port:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_held_by_another_program_exits_3_naming_it(
    tmp_path: Path, public_key: Path, workers: int
) -> None:
    holder = f"pid {os.getpid()} ({command_line(os.getpid())})"
    with ExitStack() as stack:
        held = {
            "--listen": stack.enter_context(_listening(reuse_port=True)),
            "--mtls-listen": stack.enter_context(_listening(reuse_port=False)),
            "--metrics-listen": stack.enter_context(_listening(reuse_port=False)),
        }

        def serve_on(flag: str) -> Result:
            addresses = {
                "--listen": _loopback(free_port()),
                "--mtls-listen": _loopback(free_port()),
                "--metrics-listen": _loopback(free_port()),
                flag: _loopback(held[flag]),
            }
            args = _serve_args(
                tmp_path / flag.strip("-"), public_key,
                "--workers", str(workers),
                *(item for pair in addresses.items() for item in pair),
                quiet=True,
            )  # fmt: skip
            return Meshca(tmp_path)(*args, check=False)

        results = in_parallel(*(lambda flag=flag: serve_on(flag) for flag in held))
    for flag, result in zip(held, results, strict=True):
        reason = assert_error(result, 3, f"{flag} {_loopback(held[flag])}")
        assert reason.endswith(f"is already in use by {holder}"), result.describe()


def test_the_holder_s_command_line_prints_as_one_inert_line(tmp_path: Path) -> None:
    """Control characters in another process's arguments are escaped; a URL password in
    them is masked."""
    script = (
        "import socket, sys\n"
        "s = socket.socket()\n"
        "s.bind(('127.0.0.1', 0))\n"
        "s.listen()\n"
        "print(s.getsockname()[1], flush=True)\n"
        "sys.stdin.read()\n"
    )
    argv = [sys.executable, "-c", script, "line\nbreak \x1b[31mred", "postgresql://u:hunter2@db/x"]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        holder = tcp_listener("127.0.0.1", port)
    finally:
        stop_process(process)
    assert holder is not None
    assert holder.pid == process.pid
    assert holder.command is not None
    assert holder.command.isprintable()
    assert "'line\\nbreak \\x1b[31mred'" in holder.command
    assert "postgresql://u:***@db/x" in holder.command
    assert "hunter2" not in holder.command
    assert tcp_listener("127.0.0.1", port) is None
