"""The mesh end to end: a real CA over TLS on loopback, one real agent per workload serving its
X.509-SVID over SDS v3 on a unix socket, and real Envoys fed by those agents, talking mTLS.

What a mesh operator relies on: the pair talks mTLS with the right identities, a wrong identity is
refused, certificates rotate (and new roots arrive) with no failed request and no Envoy restart,
an unreachable CA costs nothing until the certificates expire, an Envoy that rejects a secret
does not make its agent loop, and both xDS flavours (state of the world, delta) work.

Timing: the CA backdates NotBefore by at most 1 s here (its default, 60 s, is longer than the
few-second TTLs these tests use, and the agent measures the lifetime from NotBefore: the renewal
point would be in the past), so an SVID of TTL ``t`` lives at most ``t + 1`` s and is renewed
about half-way.
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
from tests.server.conftest import wait_until as poll_until
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
    return poll_until(condition, timeout=timeout, what=what)


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
        """The sum of the agent's samples ``name`` whose labels include ``labels``."""
        return sum(
            sample.value
            for family in self.agent.agent.metrics.registry.collect()
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )


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


def wait_leaf_serials(envoy: EnvoyProcess, seen: set[str], minimum: int) -> None:
    """Poll the leaf serials ``envoy`` presents into ``seen`` until there are ``minimum``."""

    def enough() -> bool:
        seen.update(envoy.leaf_serials())
        return len(seen) >= minimum

    envoy.wait_for(enough, f"{minimum} distinct leaf serials in /certs")


def wait_peer_saw(envoy: EnvoyProcess, traffic: Traffic, side: str, serial: str) -> None:
    """Wait until a request from ``side`` reached its peer presenting leaf ``serial``."""
    envoy.wait_for(
        lambda: serial in traffic.peer_serials[side], f"a request presenting serial {serial}"
    )


@dataclass
class Traffic:
    """Requests in a loop (a new connection each) through both Envoys of a pair, in a thread,
    with ``pause`` seconds between rounds (none by default)."""

    pair: EnvoyPair
    pause: float = 0.0
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
        while not self._stop.wait(self.pause):
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

        root_serials = {
            serial_of(root) for root in x509.load_pem_x509_certificates(mesh.ca.root_pem())
        }
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


def check_rotation(pair: EnvoyPair, a: Workload, b: Workload, rotations: int) -> Traffic:
    """Under continuous traffic, wait until each Envoy has presented ``rotations`` new leaves
    (without a restart) and the peer has seen the newest one; every request must succeed and
    every serial Envoy presents must be one its agent served. Returns the traffic record."""
    envoys = {"a": (pair.a, a), "b": (pair.b, b)}
    first = {side: envoy.leaf_serials() for side, (envoy, _) in envoys.items()}
    pids = {side: envoy.pid for side, (envoy, _) in envoys.items()}
    seen: dict[str, set[str]] = {side: set(serials) for side, serials in first.items()}
    with Traffic(pair) as traffic:
        for side, (envoy, _) in envoys.items():
            wait_leaf_serials(envoy, seen[side], len(first[side]) + rotations)
        for side, (envoy, agent) in envoys.items():
            wait_peer_saw(envoy, traffic, side, agent.serial)
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.ok > 0
    for side, (envoy, agent) in envoys.items():
        assert envoy.pid == pids[side], "Envoy restarted"
        assert seen[side] <= set(agent.served), (seen[side], agent.served)
        assert traffic.peer_serials[side] <= set(agent.served)
    return traffic


def test_rotation_with_zero_failed_requests(mesh: Mesh, tmp_path: Path) -> None:
    """With 5 s SVIDs, each agent rotates at least twice under continuous traffic (a new
    connection and full handshake per request): no request fails, no Envoy restarts, and what
    Envoy presents (and the peer sees) is always a certificate its agent served."""
    ttl = timedelta(seconds=5)
    with (
        workload(mesh, "ns-a", "sa-a", ttl=ttl) as a,
        workload(mesh, "ns-b", "sa-b", ttl=ttl) as b,
        mesh_pair(tmp_path, a, b) as pair,
    ):
        check_rotation(pair, a, b, rotations=2)
        assert_mutual(pair, a, b)


def test_new_root_reaches_envoy_within_a_second(mesh: Mesh, tmp_path: Path) -> None:
    """A root prepared in the CA's database (another replica, or the admin CLI) is in both
    Envoys' trust, in every TLS context, within a second: CA bundle check (100 ms here) ->
    WatchBundle push -> agent -> SDS push. No restart, same leaves, traffic still flows."""
    with (
        workload(mesh, "ns-a", "sa-a") as a,
        workload(mesh, "ns-b", "sa-b") as b,
        mesh_pair(tmp_path, a, b) as pair,
    ):
        pids = (pair.a.pid, pair.b.pid)
        leaves = (pair.a.leaf_serials(), pair.b.leaf_serials())
        root = prepare_new_root(mesh.ca.settings)
        prepared = time.monotonic()
        new = serial_of(root)

        def trusted_everywhere() -> bool:
            return all(
                new in {ca.serial for ca in context.ca_certs}
                for envoy in (pair.a, pair.b)
                for context in envoy.certs().contexts
            )

        pair.a.wait_for(trusted_everywhere, f"new root {new} in both Envoys' trust", 5.0)
        elapsed = time.monotonic() - prepared
        assert elapsed < 1.0, f"the new root took {elapsed:.2f}s to reach both Envoys"

        assert (pair.a.pid, pair.b.pid) == pids
        assert (pair.a.leaf_serials(), pair.b.leaf_serials()) == leaves
        assert_mutual(pair, a, b)


def test_ca_outage_costs_nothing_until_it_returns(minter: TokenMinter, tmp_path: Path) -> None:
    """The CA stops while two agents hold 10 s SVIDs: traffic keeps flowing on the cached
    certificates, the agents keep serving them while their renewals fail; a CA started again on
    the same database and ports is used at once and Envoy presents the renewed leaves, without a
    single failed request."""
    port, mtls_port = free_port(), free_port()
    settings = serving_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'meshca.db'}",
        minter,
        listen=f"127.0.0.1:{port}",
        mtls_listen=f"127.0.0.1:{mtls_port}",
        **CA_OVERRIDES,
    )
    initialise_ca(settings).engine.dispose()
    ttl = timedelta(seconds=10)
    with ExitStack() as stack:
        running: list[RunningCa] = []

        def start_ca() -> RunningCa:
            ca = RunningCa(settings)
            ca.start()
            running.append(ca)
            return ca

        def stop_ca() -> None:
            running.pop().stop()

        stack.callback(lambda: running and stop_ca())
        ca = start_ca()
        sockets = stack.enter_context(socket_dir())
        mesh = Mesh(ca, minter, sockets)
        a = stack.enter_context(workload(mesh, "ns-a", "sa-a", ttl=ttl))
        b = stack.enter_context(workload(mesh, "ns-b", "sa-b", ttl=ttl))
        pair = stack.enter_context(mesh_pair(tmp_path, a, b))
        before = {"a": a.serial, "b": b.serial}
        assert pair.a.leaf_serials() == {before["a"]}
        assert pair.b.leaf_serials() == {before["b"]}

        with Traffic(pair) as traffic:
            stop_ca()
            assert_mutual(pair, a, b)

            def renewal_failed() -> bool:
                return all(w.metric(CA_FAILURES, call="create_certificate") >= 1 for w in (a, b))

            wait_until(renewal_failed, "both agents to fail a renewal while the CA is down")
            # Still serving the SVIDs they had, and Envoy still presents them.
            assert {"a": a.serial, "b": b.serial} == before
            assert a.agent.agent.readiness()[0]
            assert b.agent.agent.readiness()[0]
            assert pair.a.leaf_serials() == {before["a"]}
            assert pair.b.leaf_serials() == {before["b"]}
            assert_mutual(pair, a, b)
            outage_ok = traffic.ok

            start_ca()
            for side, envoy, agent in (("a", pair.a, a), ("b", pair.b, b)):
                seen = {before[side]}
                wait_leaf_serials(envoy, seen, 2)  # a renewed leaf once the CA is back
                assert seen <= set(agent.served)
                wait_peer_saw(envoy, traffic, side, agent.serial)
        assert traffic.failures == [], traffic.failures[:5]
        assert outage_ok > 0


def test_nack_does_not_make_the_agent_loop(mesh: Mesh, tmp_path: Path) -> None:
    """An Envoy asks for ``ROOTCA`` where it needs a certificate and rejects it (NACK). The
    agent counts the NACK and does not resend what was rejected: while its SVID rotates (every
    ~2 s here) and a healthy Envoy on the same agent gets each new leaf, the rejecting Envoy's
    streams get nothing more, so the agent's responses grow by one per rotation, not per NACK."""
    with workload(mesh, "ns-a", "sa-a", ttl=timedelta(seconds=5)) as a:
        bad = EnvoyProcess(config("envoy-nack", a.source(), cert_secret_name="ROOTCA"), tmp_path)
        healthy = EnvoyProcess(config("envoy-ok", a.source()), tmp_path)
        with bad.start(wait_live=False), healthy.start(wait_live=False):
            healthy.wait_listeners_ready(DEADLINE)
            bad.wait_stat("sds.ROOTCA.update_rejected", lambda value: value >= 1)
            wait_until(lambda: a.metric(NACKS, api="sotw") >= 1, "the agent to count the NACK")
            # One SotW stream per secret subscription: the rejecting Envoy has two (ROOTCA as a
            # certificate, ROOTCA as trust), the healthy one two (default, ROOTCA).
            wait_until(lambda: a.metric("meshca_agent_sds_streams", api="sotw") == 4, "4 streams")
            first = healthy.leaf_serials()
            start = len(a.served)

            # The observation window: until two rotations have reached the healthy Envoy.
            wait_leaf_serials(healthy, set(first), len(first) + 2)
            responses = a.metric(RESPONSES, api="sotw")
            rotations = len(a.served) - start  # read after: an upper bound for ``responses``
            assert rotations >= 2
            # 4 first answers (one per stream), then one per rotation, on the ``default`` stream.
            assert 4 + 2 <= responses <= 4 + rotations, (responses, rotations)
            assert a.metric(NACKS, api="sotw") == 1
            stats = bad.stats("^sds\\.ROOTCA\\.update_rejected$")
            assert stats["sds.ROOTCA.update_rejected"] == 1
            assert bad.certs().leaf_serials() == set()  # it never got a usable certificate
            assert healthy.running
            assert bad.running


def test_delta_xds_gets_secrets_and_rotations(mesh: Mesh, tmp_path: Path) -> None:
    """Envoys on incremental xDS (``DeltaSecrets``) get their certificates and trust, talk mTLS
    with the right identities, and pick up rotations with no failed request."""
    ttl = timedelta(seconds=4)
    with (
        workload(mesh, "ns-a", "sa-a", ttl=ttl) as a,
        workload(mesh, "ns-b", "sa-b", ttl=ttl) as b,
        mesh_pair(tmp_path, a, b, api=SdsApi.DELTA_GRPC) as pair,
    ):
        assert_mutual(pair, a, b)
        check_rotation(pair, a, b, rotations=1)
        for agent in (a, b):
            assert agent.metric(RESPONSES, api="delta") >= 3  # default, ROOTCA, a rotation
            assert agent.metric(RESPONSES, api="sotw") == 0
            assert agent.metric(NACKS) == 0


def test_node_on_first_message_only(mesh: Mesh, tmp_path: Path) -> None:
    """An Envoy that names its node only in the first request of a stream
    (``set_node_on_first_message_only``) gets its secrets and every rotation like the others."""
    ttl = timedelta(seconds=4)
    with (
        workload(mesh, "ns-a", "sa-a", ttl=ttl) as a,
        workload(mesh, "ns-b", "sa-b", ttl=ttl) as b,
        mesh_pair(tmp_path, a, b, a_source={"set_node_on_first_message_only": True}) as pair,
    ):
        assert_mutual(pair, a, b)
        check_rotation(pair, a, b, rotations=1)
        assert a.metric(NACKS) == 0
