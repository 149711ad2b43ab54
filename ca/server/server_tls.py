"""The server's own TLS certificate, issued by the CA it serves and renewed at half its life,
and the gRPC credentials that pick up a new certificate (and, on the mTLS port, new roots) at
the next handshake without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.core.identity import WorkloadIdentity, parse_spiffe_id
from ca.core.keys import KeyType, generate_private_key
from ca.core.records import SERVER_REQUESTER
from ca.issuance import Clock
from ca.server import metrics
from ca.server.authority_watch import AuthorityWatch, CaSnapshot

log = logging.getLogger(__name__)

__all__ = ["SERVER_PATH", "SERVER_REQUESTER", "ServerCertificate", "serving_names"]

SERVER_PATH = "/meshca/server"


def serving_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses (each given as text) as SAN entries."""
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


@dataclass(frozen=True, slots=True)
class _Material:
    version: int
    key_pem: bytes
    chain_pem: bytes
    roots_pem: bytes
    serial: str
    issued_at: datetime
    not_after: datetime


class ServerCertificate:
    """Keeps the server certificate fresh and hands it to gRPC's credential fetchers."""

    def __init__(
        self,
        watch: AuthorityWatch,
        names: Sequence[str],
        ttl: timedelta,
        clock: Clock,
    ) -> None:
        self._watch = watch
        self._names = serving_names(names)
        self._ttl = ttl
        self._clock = clock
        self._material: _Material | None = None
        self._renew = asyncio.Event()
        watch.on_change(self._on_ca_change)

    @property
    def material(self) -> _Material:
        if self._material is None:
            raise RuntimeError("ServerCertificate.issue() has not run")
        return self._material

    async def issue(self) -> None:
        """Issue (and record) a new server certificate from the current signing authority."""
        snapshot = self._watch.current
        key = generate_private_key(KeyType.EC_P256)
        identity = WorkloadIdentity.from_spiffe_id(
            parse_spiffe_id(f"{snapshot.bundle.trust_domain.as_spiffe_id()}{SERVER_PATH}")
        )
        svid = await asyncio.to_thread(
            snapshot.service.issue_serving,
            key.public_key(),
            identity,
            self._names,
            self._ttl,
            requester=SERVER_REQUESTER,
            request_id=uuid.uuid4().hex,
        )
        previous = self._material.version if self._material else 0
        self._material = _Material(
            version=previous + 1,
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            chain_pem="".join(svid.chain_pem()).encode(),
            roots_pem=snapshot.bundle.pem().encode(),
            serial=svid.record.serial,
            issued_at=svid.record.issued_at,
            not_after=svid.record.not_after,
        )
        metrics.SERVER_CERT_EXPIRY.set(svid.record.not_after.timestamp())
        log.info(
            "server certificate issued",
            extra={"serial": svid.record.serial, "spiffe_id": svid.record.spiffe_id},
        )

    async def run(self) -> None:
        """Renew at half the certificate's life, or at once when the CA changes."""
        while True:
            material = self.material
            # Half-way from issuance (NotBefore is backdated for clock skew, so not from there).
            renew_at = material.issued_at + (material.not_after - material.issued_at) / 2
            delay = max(0.0, (renew_at - self._clock()).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renew.wait(), timeout=delay)
            self._renew.clear()
            try:
                await self.issue()
            except Exception:
                log.exception("renewing the server certificate failed; retrying in 10s")
                await asyncio.sleep(10)

    def credentials(self, *, require_client_certificate: bool) -> grpc.ServerCredentials:
        """Credentials that serve the newest certificate at every new handshake; with
        ``require_client_certificate``, clients must present a certificate chaining to the
        current trust bundle."""
        served = [0]

        def configuration() -> grpc.ServerCertificateConfiguration:
            material = self.material
            served[0] = material.version
            return grpc.ssl_server_certificate_configuration(
                [(material.key_pem, material.chain_pem)],
                root_certificates=material.roots_pem if require_client_certificate else None,
            )

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            return configuration() if self.material.version != served[0] else None

        # gRPC keeps the current configuration when the fetcher returns None (the stubs say
        # otherwise).
        return grpc.dynamic_ssl_server_credentials(
            configuration(),
            fetch,  # type: ignore[arg-type]
            require_client_authentication=require_client_certificate,
        )

    def _on_ca_change(self, snapshot: CaSnapshot) -> None:
        if self._material is not None:
            self._renew.set()
