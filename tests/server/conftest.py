"""Fixtures of the server tests: a real CA served over loopback gRPC (``serve``), a view of its
ledger through an engine of the test's own, waiting on conditions with a deadline, and reading
the ``<reason>: <message> (request id <hex>)`` status details the server answers with."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from ca.core.keys import KeyType, generate_private_key
from ca.core.records import DeniedRecord, IssuedRecord
from ca.server.server_tls import SERVER_REQUESTER
from ca.storage.engine import make_engine
from ca.storage.ledger import Ledger, LedgerQuery
from tests.factories import make_csr
from tests.postgres import fresh_postgres_database
from tests.server.harness import RunningCa, TokenMinter, running_ca, serving_settings

T = TypeVar("T")

TRUST_DOMAIN = "spiffe://cluster.local"

_DETAILS = re.compile(
    r"^(?P<reason>[a-z0-9_]+): (?P<message>.+) \(request id (?P<id>[0-9a-f]{32})\)$"
)


def spiffe_id(namespace: str, service_account: str) -> str:
    return f"{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout: float = 10.0,
    what: str = "the condition",
    interval: float = 0.02,
) -> T:
    """Poll ``condition`` every ``interval`` seconds until it returns something truthy
    (returned) or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Refusal:
    """A failed call: its status code and the parts of its details."""

    code: grpc.StatusCode
    details: str
    reason: str
    message: str
    request_id: str


def refusal(error: grpc.RpcError) -> Refusal:
    """The parts of a refused call's details; fails when they are not in the server's format."""
    details = error.details() or ""  # type: ignore[attr-defined]
    match = _DETAILS.match(details)
    assert match, f"details not in `<reason>: <message> (request id <hex>)` form: {details!r}"
    return Refusal(
        error.code(),  # type: ignore[attr-defined]
        details,
        match["reason"],
        match["message"],
        match["id"],
    )


def refused(call: Callable[[], Any]) -> Refusal:
    """Run ``call``, which must fail with a gRPC status in the server's format."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return refusal(info.value)


def pem_key(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificates(chain: list[str]) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(pem.encode()) for pem in chain]


def serial_of(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "032x")


def uri_sans(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


@dataclass
class Served:
    """A running CA, the minter of tokens it trusts, and its ledger read through our own engine."""

    ca: RunningCa
    minter: TokenMinter
    ledger: Ledger

    def issue(
        self,
        namespace: str = "default",
        service_account: str = "web",
        *,
        key: CertificateIssuerPrivateKeyTypes | None = None,
        validity_seconds: int = 0,
        **mint: Any,
    ) -> list[str]:
        """A certificate for a fresh CSR (no SAN) with a freshly minted token."""
        key = key or generate_private_key(KeyType.EC_P256)
        token = self.minter.mint(namespace, service_account, **mint)
        return self.ca.create_certificate(make_csr(key), token, validity_seconds=validity_seconds)

    def denied_row(self, request_id: str, timeout: float = 10.0) -> DeniedRecord:
        """The ledger's refusal with ``request_id``: refusals decided before signing are written
        with the next batch, possibly just after the caller got its answer."""

        def find() -> DeniedRecord | None:
            rows = self.ledger.denied(LedgerQuery(limit=100_000))
            return next((r for r in rows if r.request_id == request_id), None)

        return wait_until(find, timeout=timeout, what=f"the denied row of request {request_id}")

    def issued_rows(self) -> list[IssuedRecord]:
        return self.ledger.certs(LedgerQuery(limit=100_000))

    def workload_rows(self) -> list[IssuedRecord]:
        """Every issued row but the server's own TLS certificates."""
        return [r for r in self.issued_rows() if r.requester != SERVER_REQUESTER]


@pytest.fixture
def minter() -> TokenMinter:
    return TokenMinter()


@pytest.fixture
def serve(tmp_path: Path, minter: TokenMinter) -> Iterator[Callable[..., Served]]:
    """``serve(db_url, **settings)`` starts a CA trusting ``minter`` (unless settings name other
    keys); every CA started is stopped when the test ends. Request the database fixture before
    this one, so that the server stops before its database is dropped."""
    with ExitStack() as stack:

        def start(db_url: str, **overrides: Any) -> Served:
            directory = tmp_path / f"ca-{uuid.uuid4().hex[:8]}"
            directory.mkdir()
            trusted = minter if _uses_minter(overrides) else None
            settings = serving_settings(directory, db_url, trusted, **overrides)
            ca = stack.enter_context(running_ca(settings))
            engine = make_engine(db_url)
            stack.callback(engine.dispose)
            return Served(ca, minter, Ledger(engine))

        yield start


def _uses_minter(overrides: dict[str, Any]) -> bool:
    return not (
        overrides.get("auth") == "tokenreview"
        or any(overrides.get(k) for k in ("jwks", "jwt_public_keys", "oidc_discovery"))
    )


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def module_db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A database of each dialect shared by the tests of one module."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'meshca.db'}"
    else:
        with fresh_postgres_database("meshca_srv") as url:
            yield url
