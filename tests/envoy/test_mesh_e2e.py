"""The mesh end to end: a real CA over TLS on loopback, one real agent per workload serving its
X.509-SVID over SDS v3 on a unix socket, and real Envoys fed by those agents, talking mTLS.

What a mesh operator relies on: the pair talks mTLS with the right identities, a wrong identity is
refused, certificates rotate (and new roots arrive) with no failed request and no Envoy restart,
an unreachable CA costs nothing until the certificates expire, an Envoy that rejects a secret
does not make its agent loop, and both xDS flavours (state of the world, delta) work.

Timing: the CA backdates NotBefore by only 1 s here (its default, 60 s, is longer than the
few-second TTLs these tests use and would put the renewal point in the past), so an SVID of TTL
``t`` lives ``t + 1`` s and is renewed half-way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509

from sds.core.credentials import Credentials
from tests.agent.harness import RunningAgent, agent_settings, socket_dir, write_token
from tests.envoy.harness import (
    EnvoyConfig,
    EnvoyPair,
    EnvoyProcess,
    SdsApi,
    SdsSource,
    envoy_pair,
    free_port,
    normalise_serial,
)
from tests.server.harness import (
    RunningCa,
    TokenMinter,
    initialise_ca,
    prepare_new_root,
    serving_settings,
)

T = TypeVar("T")

TRUST_DOMAIN = "cluster.local"
DEADLINE = 15.0
LONG_TTL = timedelta(hours=1)
CA_OVERRIDES: dict[str, Any] = {
    "backdate": timedelta(seconds=1),
    "rate_limit_per_caller": 1000,
    "rate_limit_per_caller_burst": 1000,
}

RESPONSES = "meshca_agent_sds_responses_total"
NACKS = "meshca_agent_sds_nacks_total"
ROTATIONS = "meshca_agent_svid_rotations_total"
CA_FAILURES = "meshca_agent_ca_call_failures_total"


def spiffe_id(namespace: str, service_account: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def serial_of(cert: x509.Certificate) -> str:
    return normalise_serial(cert.serial_number)


def wait_until(condition: Callable[[], T | None], what: str, timeout: float = DEADLINE) -> T:
    """Poll ``condition`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- the parts


@dataclass
class Mesh:
    """One CA (shared by the module's tests unless a test needs its own) and what agents need."""

    ca: RunningCa
    minter: TokenMinter
    sockets: Path


class Workload:
    """A running agent for one service account, and every serial it has served."""

    def __init__(self, agent: RunningAgent, spiffe_id: str) -> None:
        self.agent = agent
        self.spiffe_id = spiffe_id
        self._served: list[str] = []
        self._lock = threading.Lock()

    def track(self) -> None:
        """Record the serial of every SVID the agent holds from now on (and the current one)."""

        def observe(credentials: Credentials) -> None:
            svid = credentials.svid
            if svid is None:
                return
            with self._lock:
                if svid.serial_hex not in self._served:
                    self._served.append(svid.serial_hex)

        async def attach() -> None:
            assert self.agent.agent.store is not None
            observe(self.agent.agent.store.current)
            self.agent.agent.store.add_listener(observe)

        self.agent.call(attach())

    @property
    def served(self) -> list[str]:
        """Serials served so far, oldest first."""
        with self._lock:
            return list(self._served)

    @property
    def serial(self) -> str:
        """The serial served now."""
        svid = self.agent.credentials.svid
        assert svid is not None, f"agent of {self.spiffe_id} holds no SVID"
        return svid.serial_hex

    def source(self, **options: Any) -> SdsSource:
        return SdsSource(self.agent.settings.sds_socket, **options)

    def metric(self, name: str, **labels: str) -> float:
        value = self.agent.agent.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


@contextmanager
def workload(
    mesh: Mesh, namespace: str, service_account: str, **overrides: Any
) -> Iterator[Workload]:
    """A started agent for ``namespace/service_account`` that holds its first SVID."""
    overrides.setdefault("ttl", LONG_TTL)
    name = f"{namespace}-{service_account}"
    token = write_token(mesh.minter, mesh.sockets, namespace, service_account)
    settings = agent_settings(mesh.ca, mesh.sockets, token, name=name, **overrides)
    agent = RunningAgent(settings)
    agent.start()
    try:
        agent.wait_ready()
        running = Workload(agent, spiffe_id(namespace, service_account))
        running.track()
        yield running
    finally:
        agent.stop()


def config(node_id: str, secrets: SdsSource, **options: Any) -> EnvoyConfig:
    return EnvoyConfig(node_id=node_id, secrets=secrets, **options)


@contextmanager
def mesh_pair(
    workdir: Path,
    a: Workload,
    b: Workload,
    *,
    api: SdsApi = SdsApi.GRPC,
    a_options: dict[str, Any] | None = None,
    b_options: dict[str, Any] | None = None,
    a_source: dict[str, Any] | None = None,
) -> Iterator[EnvoyPair]:
    """Envoy A fed by agent ``a`` and Envoy B by agent ``b``; each allows exactly the other's
    SPIFFE ID (inbound and outbound) unless the options say otherwise; ready to serve."""
    a_config = config(
        "envoy-a",
        a.source(api_type=api, **(a_source or {})),
        **{
            "inbound_allowed_ids": [b.spiffe_id],
            "outbound_allowed_ids": [b.spiffe_id],
            **(a_options or {}),
        },
    )
    b_config = config(
        "envoy-b",
        b.source(api_type=api),
        **{
            "inbound_allowed_ids": [a.spiffe_id],
            "outbound_allowed_ids": [a.spiffe_id],
            **(b_options or {}),
        },
    )
    with envoy_pair(a_config, b_config, workdir) as pair:
        pair.wait_listeners_ready(DEADLINE)
        yield pair


def ok_request(source: EnvoyProcess, served_by: str) -> dict[str, str]:
    """A request through ``source``'s outbound listener that must succeed; its headers."""
    response = source.request()
    assert response.status == 200, (
        f"request through {source.config.node_id} answered {response.status}: "
        f"{response.body[:300]!r}\n{source.log_tail(10)}"
    )
    assert response.headers["x-served-by"] == served_by
    return response.headers


def assert_mutual(pair: EnvoyPair, a: Workload, b: Workload) -> None:
    """Both directions work and each side sees the other's identity and current serial."""
    headers = ok_request(pair.a, "envoy-b")
    assert headers["x-peer-spiffe-id"] == a.spiffe_id
    assert headers["x-upstream-peer-spiffe-id"] == b.spiffe_id
    assert normalise_serial(headers["x-peer-serial"]) in a.served
    headers = ok_request(pair.b, "envoy-a")
    assert headers["x-peer-spiffe-id"] == b.spiffe_id
    assert headers["x-upstream-peer-spiffe-id"] == a.spiffe_id
    assert normalise_serial(headers["x-peer-serial"]) in b.served


def leaf_serials_seen(envoy: EnvoyProcess, seen: set[str], minimum: int) -> bool:
    """Add the leaf serials ``envoy`` presents now to ``seen``; true once there are enough."""
    seen |= envoy.leaf_serials()
    return len(seen) >= minimum


@dataclass
class Traffic:
    """Requests in a loop (a new connection each) through both Envoys of a pair, in a thread."""

    pair: EnvoyPair
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    peer_serials: dict[str, set[str]] = field(default_factory=lambda: {"a": set(), "b": set()})
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)

    def _run(self) -> None:
        # (source, which workload's serial the receiving inbound reports as its peer)
        routes = ((self.pair.a, "a", "envoy-b"), (self.pair.b, "b", "envoy-a"))
        while not self._stop.is_set():
            for source, side, served_by in routes:
                try:
                    response = source.request(timeout=5)
                except OSError as error:
                    self.failures.append(f"{source.config.node_id}: {error!r}")
                    continue
                if response.status != 200 or response.headers.get("x-served-by") != served_by:
                    self.failures.append(
                        f"{source.config.node_id}: {response.status} {response.body[:200]!r}"
                    )
                    continue
                self.peer_serials[side].add(normalise_serial(response.headers["x-peer-serial"]))
                self.ok += 1


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, minter: TokenMinter) -> Iterator[Mesh]:
    """A CA shared by the tests that neither stop it nor depend on its exact bundle."""
    directory = tmp_path_factory.mktemp("mesh-ca")
    settings = serving_settings(
        directory, f"sqlite:///{directory / 'meshca.db'}", minter, **CA_OVERRIDES
    )
    initialise_ca(settings).engine.dispose()
    ca = RunningCa(settings)
    ca.start()
    try:
        with socket_dir() as sockets:
            yield Mesh(ca, minter, sockets)
    finally:
        ca.stop()


# --------------------------------------------------------------------------- tests


def test_mtls_pair_with_agent_identities(mesh: Mesh, tmp_path: Path) -> None:
    """A request through A's outbound reaches B over mTLS, B sees A's SPIFFE ID and the serial
    A's agent serves (and the reverse); /certs shows each agent's leaf and the CA's root."""
    with (
        workload(mesh, "ns-a", "sa-a") as a,
        workload(mesh, "ns-b", "sa-b") as b,
        mesh_pair(tmp_path, a, b) as pair,
    ):
        headers = ok_request(pair.a, "envoy-b")
        assert headers["x-peer-spiffe-id"] == spiffe_id("ns-a", "sa-a")
        assert headers["x-upstream-peer-spiffe-id"] == spiffe_id("ns-b", "sa-b")
        assert normalise_serial(headers["x-peer-serial"]) == a.serial

        headers = ok_request(pair.b, "envoy-a")
        assert headers["x-peer-spiffe-id"] == spiffe_id("ns-b", "sa-b")
        assert headers["x-upstream-peer-spiffe-id"] == spiffe_id("ns-a", "sa-a")
        assert normalise_serial(headers["x-peer-serial"]) == b.serial

        root_serials = {serial_of(root) for root in x509.load_pem_x509_certificates(
            mesh.ca.root_pem()
        )}
        for envoy, agent in ((pair.a, a), (pair.b, b)):
            certs = envoy.certs()
            assert len(certs.contexts) == 2  # inbound listener, peer cluster
            assert certs.leaf_serials() == {agent.serial}
            assert certs.leaf_uri_sans() == {agent.spiffe_id}
            for context in certs.contexts:
                assert {ca.serial for ca in context.ca_certs} == root_serials


def test_wrong_spiffe_id_is_refused(mesh: Mesh, tmp_path: Path) -> None:
    """B's inbound allows only another SPIFFE ID: A's request fails, B counts a SAN mismatch,
    and B's own requests to A still work. Then the same with B validating through the agent's
    ``ALL`` secret (Envoy's SPIFFE validator): the allowed ID passes, a disallowed one does not."""
    other = spiffe_id("ns-c", "sa-c")
    with workload(mesh, "ns-a", "sa-a") as a, workload(mesh, "ns-b", "sa-b") as b:
        for validation in ("ROOTCA", "ALL"):
            workdir = tmp_path / validation
            with mesh_pair(
                workdir,
                a,
                b,
                b_options={"inbound_allowed_ids": [other], "validation_secret_name": validation},
            ) as pair:
                inbound = "listener.inbound.ssl.fail_verify_san"
                assert pair.b.stats().get(inbound, 0) == 0
                response = pair.a.request()
                assert response.status == 503, response
                assert "x-peer-spiffe-id" not in response.headers
                pair.b.wait_stat(inbound, lambda value: value >= 1)
                # B -> A is allowed (A allows B, B's outbound allows A).
                headers = ok_request(pair.b, "envoy-a")
                assert headers["x-peer-spiffe-id"] == b.spiffe_id
                assert headers["x-upstream-peer-spiffe-id"] == a.spiffe_id

            if validation == "ALL":
                # The SPIFFE validator on both sides, with the right allow-lists: it works.
                options = {"validation_secret_name": "ALL"}
                with mesh_pair(
                    tmp_path / "ALL-ok", a, b, a_options=options, b_options=options
                ) as pair:
                    secrets = {secret["name"]: secret for secret in pair.b.secrets()}
                    validator = secrets["ALL"]["validation_context"]["custom_validator_config"]
                    assert validator["name"] == "envoy.tls.cert_validator.spiffe"
                    assert_mutual(pair, a, b)
