"""The agent's client of the CA: ``CreateCertificate`` (by token, or by mTLS with the current
SVID) and the ``WatchBundle`` stream, over TLS verified against the agent's trust bundle, failing
over between the CA addresses it was given.

gRPC status codes become meshca's error types here and nowhere else in the agent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import grpc

from ca.api import methods
from ca.core.errors import (
    InternalError,
    InvalidRequest,
    MeshcaError,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from sds.core.credentials import Svid

log = logging.getLogger(__name__)

_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]

#: Errors worth trying at another CA address.
_FAILOVER = (Unavailable, RateLimited, InternalError)


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """How the agent proves who it is: a token (main port) or its SVID (mTLS port)."""

    token: str | None = None
    svid: Svid | None = None


def error_from_rpc(error: grpc.RpcError, address: str) -> MeshcaError:
    """The meshca error for a failed call to the CA at ``address``."""
    if isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        code, details = error.code(), error.details()
    else:
        code, details = grpc.StatusCode.UNKNOWN, None
    details = details or code.name
    message = f"CA {address}: {details}"
    match code:
        case grpc.StatusCode.UNAUTHENTICATED:
            return Unauthenticated("ca_refused_token", message)
        case grpc.StatusCode.PERMISSION_DENIED:
            return PermissionDenied("ca_permission_denied", message)
        case grpc.StatusCode.INVALID_ARGUMENT | grpc.StatusCode.FAILED_PRECONDITION:
            return InvalidRequest("ca_invalid_request", message)
        case grpc.StatusCode.RESOURCE_EXHAUSTED:
            return RateLimited("ca_rate_limited", message)
        case grpc.StatusCode.INTERNAL | grpc.StatusCode.UNKNOWN:
            return InternalError("ca_internal", message)
        case _:
            return Unavailable("ca_unavailable", message)


class CaClient:
    """Calls the CA at ``addresses`` (token) or ``mtls_addresses`` (client certificate).

    ``plaintext`` is for a CA serving ``--plaintext`` (loopback development, tests): no TLS, so
    the CA is not authenticated; it rules out mTLS addresses.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        mtls_addresses: Sequence[str],
        trusted_roots: Callable[[], bytes],
        *,
        server_name: str | None = None,
        timeout: timedelta = timedelta(seconds=10),
        plaintext: bool = False,
    ) -> None:
        if not addresses:
            raise ValueError("at least one CA address is required")
        if plaintext and mtls_addresses:
            raise ValueError("renewal by mTLS needs TLS")
        self._addresses = list(addresses)
        self._mtls_addresses = list(mtls_addresses)
        self._trusted_roots = trusted_roots
        self._server_name = server_name
        self._timeout = timeout.total_seconds()
        self._plaintext = plaintext
        self._preferred = {"token": 0, "mtls": 0}

    @property
    def can_renew_by_mtls(self) -> bool:
        return bool(self._mtls_addresses)

    async def create_certificate(
        self, csr_pem: bytes, ttl: timedelta, identity: ClientIdentity
    ) -> list[str]:
        """The PEM chain (leaf first) the CA issues for ``csr_pem``."""
        request = methods.CertificateRequest(
            csr=csr_pem.decode(), validity_duration=int(ttl.total_seconds())
        )
        kind = "mtls" if identity.svid is not None else "token"
        last: MeshcaError | None = None
        addresses = self._rotation(kind)
        for index, address in enumerate(addresses, start=1):
            async with self._channel(address, identity) as channel:
                try:
                    response = await methods.create_certificate_aio(channel)(
                        request, metadata=_metadata(identity), timeout=self._timeout
                    )
                except grpc.aio.AioRpcError as error:
                    last = error_from_rpc(error, address)
                    if isinstance(last, _FAILOVER):
                        if index == len(addresses):
                            break  # no next address: the caller reports the error
                        log.warning(
                            "CA call failed; trying the next address",
                            extra={"address": address, "reason": last.reason},
                        )
                        continue
                    raise last from None
            self._prefer(kind, address)
            return list(response.cert_chain)
        raise last or Unavailable("ca_unavailable", f"no CA address for {kind} calls")

    async def watch_bundle(
        self, identity: ClientIdentity
    ) -> AsyncIterator[tuple[str, methods.TrustBundleMessage]]:
        """Bundles from the first CA address that answers, tagged with that address; ends (or
        raises) when that stream breaks, so the caller reconnects through the next address."""
        kind = "mtls" if identity.svid is not None else "token"
        last: MeshcaError | None = None
        for address in self._rotation(kind):
            async with self._channel(address, identity) as channel:
                call = methods.watch_bundle_aio(channel)(
                    methods.WatchBundleRequest(), metadata=_metadata(identity)
                )
                received = False
                try:
                    async for message in call:
                        received = True
                        self._prefer(kind, address)
                        yield address, message
                except grpc.aio.AioRpcError as error:
                    last = error_from_rpc(error, address)
                    if received or not isinstance(last, _FAILOVER):
                        raise last from None
                    continue
                return
        raise last or Unavailable("ca_unavailable", f"no CA address for {kind} calls")

    def _rotation(self, kind: str) -> list[str]:
        addresses = self._mtls_addresses if kind == "mtls" else self._addresses
        start = self._preferred[kind] % len(addresses) if addresses else 0
        return addresses[start:] + addresses[:start]

    def _prefer(self, kind: str, address: str) -> None:
        addresses = self._mtls_addresses if kind == "mtls" else self._addresses
        self._preferred[kind] = addresses.index(address)

    def _channel(self, address: str, identity: ClientIdentity) -> grpc.aio.Channel:
        """A fresh TLS channel, verified against the roots trusted now. Fresh per call: a CA
        that went away and came back is reached at once, not after a reconnect backoff."""
        if self._plaintext:
            return grpc.aio.insecure_channel(address, options=list(_CHANNEL_OPTIONS))
        svid = identity.svid
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._trusted_roots(),
            private_key=svid.key_pkcs8_pem() if svid is not None else None,
            certificate_chain=svid.chain_pem() if svid is not None else None,
        )
        options = list(_CHANNEL_OPTIONS)
        if self._server_name:
            options.append(("grpc.ssl_target_name_override", self._server_name))
        return grpc.aio.secure_channel(address, credentials, options=options)


def _metadata(identity: ClientIdentity) -> tuple[tuple[str, str], ...]:
    if identity.token is None:
        return ()
    return (("authorization", f"Bearer {identity.token}"),)
