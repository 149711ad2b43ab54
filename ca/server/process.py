"""Running ``meshca ca serve``: one serving process, or a supervisor with N worker processes
sharing the gRPC ports (SO_REUSEPORT) so every core serves. Either claims its addresses first
(``ca.server.ports``), so no other process shares them.

The supervisor owns the metrics port: it serves the workers' metrics summed (prometheus-client's
multiprocess mode), ``/readyz`` when every worker is ready, and restarts a worker that dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from ca.auth.verified import VerifierFactory
from ca.core.errors import ConfigurationError
from ca.core.identity import parse_trust_domain
from ca.logs import configure_logging
from ca.server.app import OFF, CaServer
from ca.server.ops_http import METRICS_FLAG, OpsServer
from ca.server.ports import AddressClaim, join_address, split_address
from ca.server.worker_entry import reference, run_worker
from ca.settings import Settings

log = logging.getLogger(__name__)

_GRACE_SECONDS = 5.0
_RESTART_BACKOFF_SECONDS = 1.0


def serve(
    settings: Settings,
    verifiers: Callable[[Settings], VerifierFactory],
    *,
    prepare: Callable[[], None] = lambda: None,
) -> None:
    """Serve until SIGTERM or SIGINT; with several workers, supervise them. Either way the
    addresses are claimed first (only this server's own workers may share its ports), and only
    then is ``prepare`` run (migrations, the CA on first start): a server refused its ports
    changes nothing."""
    workers = settings.workers or os.cpu_count() or 1
    if workers == 1:
        with AddressClaim(_claimed_addresses(settings)):
            prepare()
            asyncio.run(
                _serve_one(settings, verifiers(settings), ops=True, share_ports=False, ready=None)
            )
    else:
        settings = _fixed_ports(settings)
        with AddressClaim(_claimed_addresses(settings)):
            prepare()
            asyncio.run(_preflight(settings, verifiers(settings)))
            Supervisor(settings, workers, verifiers).run()


def _claimed_addresses(settings: Settings) -> dict[str, str]:
    """What this server will bind, by flag: not ``off``, nor an ephemeral port (``:0``, free
    by definition), nor the mTLS port of a ``--plaintext`` server (it binds none)."""
    addresses = {"--listen": settings.listen, METRICS_FLAG: settings.metrics_listen}
    if not settings.plaintext:
        addresses["--mtls-listen"] = settings.mtls_listen
    return {
        flag: address
        for flag, address in addresses.items()
        if address != OFF and split_address(address, flag)[1] != 0
    }


async def _preflight(settings: Settings, verifiers: VerifierFactory) -> None:
    """Build the token verifier once before any worker starts, so a configuration error (no JWT
    keys, a bad kubeconfig) ends ``serve`` with its message and exit code instead of killing
    workers the supervisor would restart forever."""
    verifier = await verifiers(parse_trust_domain(settings.trust_domain))
    close = getattr(verifier, "aclose", None)
    if close is not None:
        await close()


async def _serve_one(
    settings: Settings,
    verifiers: VerifierFactory,
    *,
    ops: bool,
    share_ports: bool,
    ready: Synchronized[int] | None,
) -> None:
    server = CaServer(settings, verifiers, share_ports=share_ports)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    ops_server = None
    if ops and settings.metrics_listen != OFF:
        host, port = split_address(settings.metrics_listen, METRICS_FLAG)
        ops_server = OpsServer(host, port, REGISTRY, server.readiness)
        ops_server.start()
        log.info("operational endpoints", extra={"metrics_port": ops_server.port})
    reporter = asyncio.create_task(_report_to_supervisor(server, ready, stop))
    try:
        await stop.wait()
        log.info("stopping: refusing new calls, finishing calls in flight")
    finally:
        reporter.cancel()
        if ops_server is not None:
            ops_server.stop()
        await server.stop(_GRACE_SECONDS)


async def _report_to_supervisor(
    server: CaServer, flag: Synchronized[int] | None, stop: asyncio.Event
) -> None:
    """A worker reports its readiness, and stops when its supervisor is gone (SIGKILL, OOM):
    an orphan would hold the port for no server, and a restarted one would find it taken."""
    if flag is None:
        return
    supervisor = multiprocessing.parent_process()
    while True:
        flag.value = int(server.readiness()[0])
        if supervisor is not None and os.getppid() != supervisor.pid:
            log.error("the supervisor (pid %s) is gone; stopping", supervisor.pid)
            stop.set()
            return
        await asyncio.sleep(0.5)


def worker_main(
    settings_data: dict[str, Any],
    verifiers: Callable[[Settings], VerifierFactory],
    ready_flag: Synchronized[int],
    log_level: str,
) -> None:
    """One worker: log like the supervisor (warnings held until now come out here), serve."""
    settings = Settings(**settings_data)
    configure_logging(log_level, settings.log_format)
    asyncio.run(
        _serve_one(settings, verifiers(settings), ops=False, share_ports=True, ready=ready_flag)
    )


class Supervisor:
    """Starts ``count`` workers, restarts those that die, stops them all on a signal."""

    def __init__(
        self, settings: Settings, count: int, verifiers: Callable[[Settings], VerifierFactory]
    ) -> None:
        self.settings = settings
        self.count = count
        self._verifiers = verifiers
        self._context = multiprocessing.get_context("spawn")
        self._flags = [self._context.Value("b", 0) for _ in range(count)]
        self._ever_ready = [False] * count
        self._processes: list[multiprocessing.process.BaseProcess | None] = [None] * count
        self._stopping = False
        self._metrics_dir = tempfile.mkdtemp(prefix="meshca-metrics-")

    def readiness(self) -> tuple[bool, str]:
        alive = [p is not None and p.is_alive() for p in self._processes]
        ready = [bool(flag.value) for flag in self._flags]
        self._ever_ready = [e or r for e, r in zip(self._ever_ready, ready, strict=True)]
        count = sum(a and r for a, r in zip(alive, ready, strict=True))
        detail = f"{count}/{self.count} workers ready"
        return count == self.count, detail

    def run(self) -> None:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        ops_server = self._start_ops()
        log.info(
            "supervising workers",
            extra={"workers": self.count, "listen": self.settings.listen},
        )
        try:
            for index in range(self.count):
                self._start(index)
            while not self._stopping:
                self.readiness()
                self._restart_dead()
                time.sleep(0.2)
        finally:
            self._stop_all()
            if ops_server is not None:
                ops_server.stop()
            for path in Path(self._metrics_dir).iterdir():
                path.unlink()
            Path(self._metrics_dir).rmdir()

    def _start_ops(self) -> OpsServer | None:
        if self.settings.metrics_listen == OFF:
            return None
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._metrics_dir)  # type: ignore[no-untyped-call]
        host, port = split_address(self.settings.metrics_listen, METRICS_FLAG)
        ops_server = OpsServer(host, port, registry, self.readiness)
        ops_server.start()
        return ops_server

    def _start(self, index: int) -> None:
        self._flags[index].value = 0
        process = self._context.Process(
            target=run_worker,
            args=(
                self.settings.model_dump(mode="json"),
                reference(self._verifiers),
                self._flags[index],
                logging.getLevelName(logging.getLogger().level),
            ),
            name=f"meshca-worker-{index}",
        )
        process.start()
        self._processes[index] = process

    def _restart_dead(self) -> None:
        for index, process in enumerate(self._processes):
            if process is not None and not process.is_alive() and not self._stopping:
                if not self._ever_ready[index]:
                    raise ConfigurationError(
                        "worker_failed",
                        f"worker {index} exited with code {process.exitcode} before it was "
                        "ready; its log above says why",
                    )
                log.error(
                    "worker %d (pid %s) exited with %s; restarting",
                    index,
                    process.pid,
                    process.exitcode,
                )
                if process.pid is not None:
                    mark_process_dead(process.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
                time.sleep(_RESTART_BACKOFF_SECONDS)
                self._start(index)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _stop_all(self) -> None:
        for process in self._processes:
            if process is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid or 0, signal.SIGTERM)
        for process in self._processes:
            if process is not None:
                process.join(_GRACE_SECONDS + 5)
                if process.is_alive():
                    process.kill()


def _fixed_ports(settings: Settings) -> Settings:
    """Workers share ports, so an ephemeral port (``:0``) is chosen once, here."""
    updates = {}
    for field in ("listen", "mtls_listen"):
        address = getattr(settings, field)
        if address == OFF:
            continue
        host, port = split_address(address, "--" + field.replace("_", "-"))
        if port == 0:
            updates[field] = join_address(host, _free_port(host))
    return settings.model_copy(update=updates)


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
