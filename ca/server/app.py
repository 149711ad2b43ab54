"""One serving process: the gRPC ports, the authority watch, the issuance queue and the
server's own certificate, wired from :class:`Settings`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from ca.api.methods import (
    BUNDLE_SERVICE,
    CERTIFICATE_SERVICE,
    TrustBundleMessage,
    WatchBundleRequest,
    certificate_service_handler,
)
from ca.auth.verified import VerifierFactory
from ca.core.deny_list import DenyList
from ca.core.rate_limit import RateLimiter
from ca.issuance import Clock, utc_now
from ca.runtime import CaRuntime
from ca.server.authority_watch import AuthorityWatch
from ca.server.bundle_service import BundleService
from ca.server.callers import Admission, CallerAuthenticator
from ca.server.certificate_service import CertificateService
from ca.server.issuance_queue import IssuanceQueue
from ca.server.ports import bind_failure
from ca.server.rotation_loop import RotationLoop
from ca.server.server_tls import ServerCertificate
from ca.settings import Settings
from ca.storage.change_feed import ChangeListener, supports_notifications

log = logging.getLogger(__name__)


OFF = "off"
_SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.max_receive_message_length", 256 * 1024),
    # Calls wait here until the server picks them up; every agent reconnecting at once after a
    # restart (thousands of WatchBundle streams) must queue, not be CANCELLED.
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 20_000),
]


class CaServer:
    """Serves CreateCertificate and WatchBundle until stopped."""

    def __init__(
        self,
        settings: Settings,
        verifiers: VerifierFactory,
        *,
        clock: Clock = utc_now,
        share_ports: bool = False,
    ) -> None:
        """``share_ports``: bind with SO_REUSEPORT, for the workers of one supervisor (which
        claimed the addresses, ``ca.server.ports``); else the kernel refuses any sharing."""
        self.settings = settings
        self._share_ports = share_ports
        self.runtime = CaRuntime(settings)
        self._verifiers = verifiers
        self._clock = clock
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.watch: AuthorityWatch | None = None
        self.listener: ChangeListener | None = None
        self.port: int | None = None
        self.mtls_port: int | None = None
        self._health = HealthServicer()
        self._serving = False

    async def start(self) -> None:
        """Load the CA, bind the ports and start serving; raises when the CA cannot serve."""
        settings = self.settings
        runtime = self.runtime
        watch = AuthorityWatch(
            runtime.authorities,
            runtime.ledger,
            runtime.kek(),
            runtime.ttl_policy(),
            backdate=settings.backdate,
            clock=self._clock,
        )
        self.watch = watch
        snapshot = await watch.load()
        queue = IssuanceQueue(lambda: watch.current.service)
        trust_domain = snapshot.bundle.trust_domain
        authenticator = CallerAuthenticator(
            await self._verifiers(trust_domain),
            lambda: watch.current.issuers,
            trust_domain,
            self._clock,
        )
        admission = _admission(settings)
        server = grpc.aio.server(
            options=[("grpc.so_reuseport", int(self._share_ports)), *_SERVER_OPTIONS]
        )
        server.add_generic_rpc_handlers(
            (
                certificate_service_handler(
                    CertificateService(
                        authenticator, admission, queue, self._clock
                    ).create_certificate
                ),
                _bundle_handler(BundleService(authenticator, watch, settings.reissue_window)),
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self._tasks.append(self._spawn(queue.run(), "issuance queue"))
        await self._bind(server, watch)
        await server.start()
        self._server = server
        self._tasks.append(self._spawn(self._watch_loop(watch), "authority watch"))
        if settings.db_notifications and supports_notifications(settings.db_url):
            self.listener = ChangeListener(settings.db_url, lambda: watch.check("notify"))
            self._tasks.append(self._spawn(self.listener.run(), "change notifications"))
        if settings.intermediate_rotation:
            rotation = RotationLoop(
                runtime, settings.rotation_check_interval, lambda: watch.check("rotation")
            )
            self._tasks.append(self._spawn(rotation.run(), "intermediate rotation"))
        await self._set_health(serving=True)
        log.info(
            "serving",
            extra={
                "trust_domain": snapshot.bundle.trust_domain.name,
                "port": self.port,
                "mtls_port": self.mtls_port,
                "tls": not settings.plaintext,
                "signing_key_id": snapshot.bundle.signing_key_id,
            },
        )

    def readiness(self) -> tuple[bool, str]:
        """Ready when the database answered the last check and a signing key is loaded."""
        if self._server is None or self.watch is None:
            return False, "starting"
        if not self.watch.healthy:
            return False, "database not answering"
        return True, f"ready: signing with {self.watch.current.bundle.signing_key_id}"

    async def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, let calls in flight finish for ``grace`` seconds, then stop."""
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def _bind(self, server: grpc.aio.Server, watch: AuthorityWatch) -> None:
        settings = self.settings
        if settings.plaintext:
            log.warning(
                "serving WITHOUT TLS (--plaintext): tokens and certificates cross the network "
                "in the clear; use this on loopback for development and tests only"
            )
            self.port = _add_port("--listen", settings.listen, server.add_insecure_port)
            return
        certificate = ServerCertificate(
            watch, settings.server_dns_names, settings.server_cert_ttl, self._clock
        )
        await certificate.issue()
        self._tasks.append(self._spawn(certificate.run(), "server certificate renewal"))
        token_credentials = certificate.credentials(require_client_certificate=False)
        self.port = _add_port(
            "--listen", settings.listen, lambda a: server.add_secure_port(a, token_credentials)
        )
        if settings.mtls_listen != OFF:
            mtls_credentials = certificate.credentials(require_client_certificate=True)
            self.mtls_port = _add_port(
                "--mtls-listen",
                settings.mtls_listen,
                lambda a: server.add_secure_port(a, mtls_credentials),
            )

    async def _watch_loop(self, watch: AuthorityWatch) -> None:
        interval = self.settings.bundle_refresh_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            await watch.check()
            if watch.healthy != self._serving:
                await self._set_health(serving=watch.healthy)

    async def _set_health(self, *, serving: bool) -> None:
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", CERTIFICATE_SERVICE, BUNDLE_SERVICE):
            await self._health.set(service, status)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(_report_crash)
        return task


def _add_port(flag: str, address: str, add: Callable[[str], int]) -> int:
    """gRPC's bind failure (a bare RuntimeError) as a ConfigurationError naming the address."""
    try:
        return add(address)
    except RuntimeError as exc:
        raise bind_failure(flag, address, str(exc)) from None


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s stopped", task.get_name(), exc_info=task.exception())


def _admission(settings: Settings) -> Admission:
    """The deny list and the token buckets, from ``settings``."""
    return Admission(
        DenyList(settings.deny_identities),
        RateLimiter(
            per_caller_rate=settings.rate_limit_per_caller,
            per_caller_burst=settings.rate_limit_per_caller_burst,
            global_rate=settings.rate_limit_global,
            global_burst=settings.rate_limit_global_burst,
        ),
    )


def _bundle_handler(service: BundleService) -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler(
        BUNDLE_SERVICE,
        {
            "WatchBundle": grpc.unary_stream_rpc_method_handler(
                service.watch_bundle,
                request_deserializer=WatchBundleRequest.FromString,
                response_serializer=TrustBundleMessage.SerializeToString,
            )
        },
    )
