"""A real meshca CA server for tests: ``CaServer`` in its own event-loop thread on loopback
ports, with a real token verifier (PEM keys), reached by real gRPC clients over TLS."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.api import methods
from ca.auth.factory import verifier_factory
from ca.core.authority import build_root
from ca.core.identity import parse_trust_domain
from ca.core.keys import KeyType, generate_private_key
from ca.core.lifecycle import AuthorityRole
from ca.runtime import CaRuntime
from ca.server.app import CaServer
from ca.settings import Settings, load_settings
from ca.storage import migrate
from ca.storage.authority_store import NewAuthority

T = TypeVar("T")

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "istio-ca"


@dataclass
class TokenMinter:
    """Signs projected service-account tokens the way the API server does (ES256, kid)."""

    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    issuer: str = ISSUER
    audience: str = AUDIENCE
    kid: str = "test-key-1"

    def public_pem(self, directory: Path) -> Path:
        path = directory / f"sa-signer-{uuid.uuid4().hex[:6]}.pub.pem"
        path.write_bytes(
            self.key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return path

    def mint(
        self,
        namespace: str = "default",
        service_account: str = "web",
        *,
        pod_name: str | None = None,
        pod_uid: str | None = None,
        lifetime: timedelta = timedelta(hours=1),
        **overrides: Any,
    ) -> str:
        now = datetime.now(UTC)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": [self.audience],
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int((now + lifetime).timestamp()),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
                "pod": {
                    "name": pod_name or f"{service_account}-pod",
                    "uid": pod_uid or str(uuid.uuid4()),
                },
            },
        }
        claims.update(overrides)
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": self.kid})


def serving_settings(
    tmp_path: Path, db_url: str, minter: TokenMinter | None = None, **overrides: Any
) -> Settings:
    """Settings for a loopback CA on ephemeral ports that trusts ``minter``'s tokens."""
    values: dict[str, Any] = {
        "db_url": db_url,
        "kek_file": tmp_path / "meshca.kek",
        "listen": "127.0.0.1:0",
        "mtls_listen": "127.0.0.1:0",
        "metrics_listen": "off",
        "workers": 1,
        "jwt_issuer": ISSUER,
        "jwt_audiences": [AUDIENCE],
        "bundle_refresh_interval": timedelta(milliseconds=100),
    }
    if minter is not None:
        values["jwt_public_keys"] = [str(minter.public_pem(tmp_path))]
    values.update(overrides)
    return load_settings(**values)


def initialise_ca(settings: Settings) -> CaRuntime:
    """Migrate the database and create the CA (as `meshca ca init` does)."""
    runtime = CaRuntime(settings)
    migrate.upgrade(runtime.engine)
    runtime.initialise(from_dir=None, exist_ok=True, actor="test")
    return runtime


class RunningCa:
    """A started :class:`CaServer` and the thread whose event loop runs it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server = CaServer(settings, verifier_factory(settings))
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.call(self.server.start())

    def stop(self) -> None:
        """Stop serving (again: nothing)."""
        if not self._thread.is_alive():
            return
        try:
            self.call(self.server.stop(grace=1.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def call(self, work: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``work`` in the server's event loop and return its result."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def mtls_port(self) -> int:
        assert self.server.mtls_port is not None
        return self.server.mtls_port

    def root_pem(self) -> bytes:
        assert self.server.watch is not None
        return self.server.watch.current.bundle.pem().encode()

    def channel(
        self,
        *,
        client_key_pem: bytes | None = None,
        client_chain_pem: bytes | None = None,
        mtls: bool = False,
    ) -> grpc.Channel:
        """A TLS channel verifying the server against the CA's bundle (as agents do)."""
        port = self.mtls_port if mtls else self.port
        if self.settings.plaintext:
            return grpc.insecure_channel(f"127.0.0.1:{port}")
        credentials = grpc.ssl_channel_credentials(
            self.root_pem(), client_key_pem, client_chain_pem
        )
        return grpc.secure_channel(f"localhost:{port}", credentials)

    def create_certificate(
        self,
        csr: bytes,
        token: str | None,
        *,
        validity_seconds: int = 0,
        channel: grpc.Channel | None = None,
    ) -> list[str]:
        """Call CreateCertificate; returns the PEM chain (raises ``grpc.RpcError``)."""
        metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
        own = channel is None
        channel = channel or self.channel()
        try:
            response = methods.create_certificate(channel)(
                methods.CertificateRequest(csr=csr.decode(), validity_duration=validity_seconds),
                metadata=metadata,
                timeout=30,
            )
        finally:
            if own:
                channel.close()
        return list(response.cert_chain)


@contextmanager
def running_ca(settings: Settings) -> Iterator[RunningCa]:
    """Initialise the CA in ``settings.db_url`` and serve it until the block ends."""
    initialise_ca(settings).engine.dispose()
    ca = RunningCa(settings)
    ca.start()
    try:
        yield ca
    finally:
        ca.stop()


def prepare_new_root(settings: Settings) -> x509.Certificate:
    """What `root prepare` does (from the CLI or another replica): a new trusted, not yet signing
    root, and the bundle sequence bumped, in the database only. Serving CAs see it at their next
    bundle check and push it to their watchers."""
    runtime = CaRuntime(settings)
    try:
        now = datetime.now(UTC)
        root = build_root(
            parse_trust_domain(settings.trust_domain),
            generate_private_key(KeyType.EC_P256),
            now=now,
            ttl=timedelta(days=30),
        )
        runtime.authorities.prepare(
            runtime.kek(),
            [NewAuthority(AuthorityRole.ROOT, root.certificate, (), root.private_key)],
            actor="test",
            now=now,
        )
    finally:
        runtime.engine.dispose()
    return root.certificate
