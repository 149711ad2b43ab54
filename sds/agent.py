"""One agent process: the SVID manager, the bundle watch, the SDS and Workload API servers on
their unix sockets, and the operations endpoints, wired from :class:`AgentSettings`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from ca.core.addresses import split_host_port
from ca.core.errors import ConfigurationError
from ca.core.identity import parse_trust_domain
from ca.server.ops_http import OpsServer
from sds.bundle_watch import BundleWatch
from sds.ca_client import CaClient
from sds.core.credentials import Bundles
from sds.core.renewal import RenewalPolicy
from sds.credential_store import CredentialStore
from sds.metrics import AgentMetrics
from sds.sds_service import SdsService
from sds.settings import AgentSettings
from sds.svid_manager import Clock, SvidManager, utc_now
from sds.token_file import read_token
from sds.unix_socket import prepare_socket_path, remove_socket
from sds.workload_api import WorkloadApiService

log = logging.getLogger(__name__)

OFF = "off"


def load_ca_roots(path: Path) -> tuple[x509.Certificate, ...]:
    """The roots in the ``--ca-root`` PEM file, with a clear message when there are none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigurationError("ca_root_missing", f"CA root file {path} does not exist") from None
    except OSError as exc:
        raise ConfigurationError(
            "ca_root_unreadable", f"CA root file {path} cannot be read: {exc.strerror}"
        ) from None
    try:
        roots = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigurationError(
            "ca_root_invalid", f"CA root file {path} holds no PEM certificate"
        ) from None
    return tuple(roots)


class Agent:
    """Serves one workload identity until stopped."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        rng: random.Random | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings
        self.metrics = AgentMetrics()
        self._rng = rng or random.Random()  # noqa: S311 - timing jitter, not secrets
        self._clock = clock
        self._servers: list[grpc.aio.Server] = []
        self._sockets: list[Path] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._ops: OpsServer | None = None
        self.store: CredentialStore | None = None
        self.manager: SvidManager | None = None
        self.metrics_port: int | None = None

    async def start(self) -> None:
        """Check the local input, bind the sockets and start obtaining the SVID."""
        settings = self.settings
        trust_domain = parse_trust_domain(settings.trust_domain)
        roots = load_ca_roots(settings.ca_root)
        read_token(settings.token_file)  # fail now, clearly, on a missing or unreadable file
        store = CredentialStore(trust_domain, Bundles({trust_domain: roots}))
        store.add_listener(self.metrics.observe)
        self.store = store
        client = CaClient(
            settings.ca_address,
            settings.ca_mtls_address,
            store.trusted_roots_pem,
            server_name=settings.ca_server_name,
            timeout=settings.ca_timeout,
        )
        self.manager = SvidManager(
            client,
            store,
            self.metrics,
            token_file=settings.token_file,
            key_type=settings.key_type,
            ttl=settings.ttl,
            policy=RenewalPolicy(settings.grace_ratio, settings.rotation_jitter),
            rng=self._rng,
            clock=self._clock,
        )
        watch = BundleWatch(
            client,
            store,
            settings.token_file,
            self.metrics,
            rng=self._rng,
            on_change=self.manager.bundle_changed,
        )
        await self._serve(settings.sds_socket, SdsService(store, self.metrics).handler())
        if settings.workload_api_socket is not None:
            await self._serve(
                settings.workload_api_socket, WorkloadApiService(store, self.metrics).handler()
            )
        self._start_ops()
        self._spawn(self.manager.run())
        self._spawn(watch.run())
        log.info(
            "agent started",
            extra={
                "sds_socket": str(settings.sds_socket),
                "workload_api_socket": str(settings.workload_api_socket or ""),
                "ca": ",".join(settings.ca_address),
            },
        )

    def readiness(self) -> tuple[bool, str]:
        """Ready while an unexpired SVID is held."""
        store = self.store
        svid = store.current.svid if store is not None else None
        if svid is not None and svid.not_after > self._clock():
            return True, f"serving {svid.spiffe_id} serial {svid.serial_hex} until {svid.not_after}"
        error = self.manager.last_error if self.manager is not None else None
        if error is not None:
            return False, f"no X.509-SVID: {error.message}"
        return False, "no X.509-SVID yet"

    async def wait_ready(self, timeout: float) -> None:
        """Return once an SVID is held; ``TimeoutError`` after ``timeout`` seconds."""
        assert self.store is not None
        store = self.store
        async with asyncio.timeout(timeout):
            while store.current.svid is None:
                await store.wait_newer(store.current.generation)

    async def stop(self, grace: float = 1.0) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await asyncio.gather(*(server.stop(grace) for server in self._servers))
        self._servers.clear()
        for path in self._sockets:
            remove_socket(path)
        self._sockets.clear()
        if self._ops is not None:
            self._ops.stop()
            self._ops = None

    async def _serve(self, path: Path, handler: grpc.GenericRpcHandler[Any, Any]) -> None:
        prepare_socket_path(path)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        try:
            server.add_insecure_port(f"unix:{path}")
        except RuntimeError as exc:
            raise ConfigurationError(
                "socket_bind_failed", f"cannot listen on {path}: {exc}"
            ) from None
        await server.start()
        self._servers.append(server)
        self._sockets.append(path)

    def _start_ops(self) -> None:
        listen = self.settings.metrics_listen
        if listen == OFF:
            return
        try:
            host, port = split_host_port(listen, what="--metrics-listen", listen=True)
            self._ops = OpsServer(host, port, self.metrics.registry, self.readiness)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                "metrics_listen_failed", f"cannot listen on {listen}: {exc}"
            ) from None
        self._ops.start()
        self.metrics_port = self._ops.port

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coroutine))


async def run_agent(settings: AgentSettings) -> None:
    """Run an agent until SIGTERM or SIGINT."""
    agent = Agent(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await agent.start()
        await stop.wait()
        log.info("agent stopping")
    finally:
        await agent.stop()
