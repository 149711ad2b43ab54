"""The agent's SPIFFE Workload API socket as an application uses it: py-spiffe's
``WorkloadApiClient`` and ``X509Source`` (and raw gRPC calls, for what the library hides) on the
real unix socket of a real agent, fed by a real CA over TLS on loopback."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from spiffe import TrustDomain, WorkloadApiClient, X509Source, X509Svid
from spiffe.workloadapi.errors import FetchX509SvidError

from sds.api import workload_pb2 as wl
from sds.core.credentials import Svid
from tests.agent.harness import RunningAgent, agent_settings, socket_dir, write_token
from tests.server.conftest import wait_until
from tests.server.harness import (
    RunningCa,
    TokenMinter,
    prepare_new_root,
    running_ca,
    serving_settings,
)

TIMEOUT = 10.0
TRUST_DOMAIN = TrustDomain("cluster.local")
HEADER = (("workload.spiffe.io", "true"),)
SERVICE = "/SpiffeWorkloadAPI/"
SPIFFE_ID = "spiffe://cluster.local/ns/ns/sa/web0"  # the first agent of a test


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter()


def _start_ca(directory: Path, minter: TokenMinter) -> Iterator[RunningCa]:
    settings = serving_settings(directory, f"sqlite:///{directory / 'meshca.db'}", minter)
    with running_ca(settings) as ca:
        yield ca


@pytest.fixture(scope="module")
def shared_ca(tmp_path_factory: pytest.TempPathFactory, minter: TokenMinter) -> Iterator[RunningCa]:
    """One CA for the tests that do not change its trust bundle."""
    yield from _start_ca(tmp_path_factory.mktemp("ca"), minter)


@pytest.fixture
def own_ca(tmp_path: Path, minter: TokenMinter) -> Iterator[RunningCa]:
    """A CA of the test's own, for tests that change its trust bundle."""
    yield from _start_ca(tmp_path, minter)


AgentFactory = Callable[..., RunningAgent]


@pytest.fixture
def launch_agent(minter: TokenMinter) -> Iterator[AgentFactory]:
    """``launch_agent(ca, **settings)``: a started agent (not waited on) for ``ns/web``, its
    sockets in a short directory; stopped when the test ends."""
    with socket_dir() as directory:
        agents: list[RunningAgent] = []

        def start(ca: RunningCa, **overrides: Any) -> RunningAgent:
            name = f"a{len(agents)}"
            token = write_token(minter, directory, "ns", f"web{len(agents)}")
            settings = agent_settings(ca, directory, token, name=name, **overrides)
            agent = RunningAgent(settings)
            agents.append(agent)
            agent.start()
            return agent

        try:
            yield start
        finally:
            for agent in agents:
                agent.stop()


@pytest.fixture
def agent(shared_ca: RunningCa, launch_agent: AgentFactory) -> RunningAgent:
    """A ready agent of the shared CA."""
    running = launch_agent(shared_ca)
    running.wait_ready()
    return running


# --- helpers -------------------------------------------------------------------------------------


def socket_uri(agent: RunningAgent) -> str:
    """The address py-spiffe takes (``SPIFFE_ENDPOINT_SOCKET`` form)."""
    return f"unix://{agent.settings.workload_api_socket}"


def held_svid(agent: RunningAgent) -> Svid:
    svid = agent.credentials.svid
    assert svid is not None, "the agent holds no SVID"
    return svid


def ca_roots(ca: RunningCa) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(ca.root_pem())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def spki(key: PrivateKeyTypes) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def der_spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def split_der(data: bytes) -> list[bytes]:
    """Concatenated DER certificates, split by their outer SEQUENCE headers (independent of the
    agent's and py-spiffe's own parsing)."""
    out: list[bytes] = []
    offset = 0
    while offset < len(data):
        assert data[offset] == 0x30, f"not a DER SEQUENCE at byte {offset}"
        first = data[offset + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            count = first & 0x7F
            header = 2 + count
            length = int.from_bytes(data[offset + 2 : offset + 2 + count], "big")
        out.append(data[offset : offset + header + length])
        offset += header + length
    assert offset == len(data), "trailing bytes after the last certificate"
    return out


def free_tcp_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def raw_channel(agent: RunningAgent) -> grpc.Channel:
    return grpc.insecure_channel(f"unix:{agent.settings.workload_api_socket}")


def first(call: Any) -> Any:
    """The first message of a response stream, which is then cancelled (a Workload API stream
    stays open for updates)."""
    try:
        return next(iter(call))
    finally:
        call.cancel()


def first_x509_svid_response(
    channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = HEADER
) -> wl.X509SVIDResponse:
    call = channel.unary_stream(
        SERVICE + "FetchX509SVID",
        request_serializer=wl.X509SVIDRequest.SerializeToString,
        response_deserializer=wl.X509SVIDResponse.FromString,
    )(wl.X509SVIDRequest(), metadata=metadata, timeout=TIMEOUT)
    response: wl.X509SVIDResponse = first(call)
    return response


def first_x509_bundles_response(
    channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = HEADER
) -> wl.X509BundlesResponse:
    call = channel.unary_stream(
        SERVICE + "FetchX509Bundles",
        request_serializer=wl.X509BundlesRequest.SerializeToString,
        response_deserializer=wl.X509BundlesResponse.FromString,
    )(wl.X509BundlesRequest(), metadata=metadata, timeout=TIMEOUT)
    response: wl.X509BundlesResponse = first(call)
    return response


def status_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    """The status code and details of ``call``, which must fail."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert isinstance(error, grpc.Call)
    return error.code(), error.details() or ""


def jwt_calls(
    channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]
) -> dict[str, Callable[[], Any]]:
    """One call of each JWT method (streams are drained, so their status is raised)."""
    fetch_svid = channel.unary_unary(
        SERVICE + "FetchJWTSVID",
        request_serializer=wl.JWTSVIDRequest.SerializeToString,
        response_deserializer=wl.JWTSVIDResponse.FromString,
    )
    fetch_bundles = channel.unary_stream(
        SERVICE + "FetchJWTBundles",
        request_serializer=wl.JWTBundlesRequest.SerializeToString,
        response_deserializer=wl.JWTBundlesResponse.FromString,
    )
    validate = channel.unary_unary(
        SERVICE + "ValidateJWTSVID",
        request_serializer=wl.ValidateJWTSVIDRequest.SerializeToString,
        response_deserializer=wl.ValidateJWTSVIDResponse.FromString,
    )
    return {
        "FetchJWTSVID": lambda: fetch_svid(
            wl.JWTSVIDRequest(audience=["example"]), metadata=metadata, timeout=TIMEOUT
        ),
        "FetchJWTBundles": lambda: list(
            fetch_bundles(wl.JWTBundlesRequest(), metadata=metadata, timeout=TIMEOUT)
        ),
        "ValidateJWTSVID": lambda: validate(
            wl.ValidateJWTSVIDRequest(audience="example", svid="e30.e30.sig"),
            metadata=metadata,
            timeout=TIMEOUT,
        ),
    }


# --- what py-spiffe gets -------------------------------------------------------------------------


def test_client_fetches_the_svid_the_agent_holds_and_the_cas_roots(
    shared_ca: RunningCa, agent: RunningAgent
) -> None:
    held = held_svid(agent)
    roots = ca_roots(shared_ca)

    with WorkloadApiClient(socket_uri(agent), default_timeout=TIMEOUT) as client:
        svid = client.fetch_x509_svid()
        bundles = client.fetch_x509_bundles()
        context = client.fetch_x509_context()

    for fetched in (svid, context.default_svid):
        assert str(fetched.spiffe_id) == str(held.spiffe_id) == SPIFFE_ID
        assert fetched.leaf.serial_number == held.leaf.serial_number
        assert [der(c) for c in fetched.cert_chain] == [der(c) for c in held.chain]
        # the key the application gets is the one the leaf certifies, and the agent's own
        assert spki(fetched.private_key) == der_spki(fetched.leaf) == spki(held.key)
    # leaf and intermediate; the root is not part of an SVID's chain
    assert len(svid.cert_chain) == 2
    assert svid.cert_chain[-1] not in roots

    for bundle_set in (bundles, context.x509_bundle_set):
        assert {b.trust_domain for b in bundle_set.bundles} == {TRUST_DOMAIN}
        bundle = bundle_set.get_bundle_for_trust_domain(TRUST_DOMAIN)
        assert bundle is not None
        assert bundle.x509_authorities == set(roots)


def test_x509_source_follows_a_rotation(agent: RunningAgent) -> None:
    old = held_svid(agent)

    with X509Source(socket_path=socket_uri(agent), timeout_in_seconds=TIMEOUT) as source:
        assert source.get_x509_context().default_svid.leaf.serial_number == old.leaf.serial_number

        def rotated() -> Svid | None:
            svid = agent.credentials.svid
            return svid if svid is not None and svid.serial_hex != old.serial_hex else None

        def seen_by_source() -> X509Svid | None:
            svid = source.get_x509_context().default_svid
            return svid if svid.leaf.serial_number == new.leaf.serial_number else None

        assert agent.agent.manager is not None
        agent.loop.call_soon_threadsafe(agent.agent.manager.renew_soon)
        new = wait_until(rotated, timeout=TIMEOUT, what="the agent to rotate its SVID")
        seen = wait_until(seen_by_source, timeout=TIMEOUT, what="the X509Source to see it")

    assert seen.spiffe_id == old.spiffe_id
    assert [der(c) for c in seen.cert_chain] == [der(c) for c in new.chain]
    assert spki(seen.private_key) == spki(new.key) != spki(old.key)


def test_a_new_root_at_the_ca_reaches_bundles_and_the_x509_source(
    own_ca: RunningCa, launch_agent: AgentFactory
) -> None:
    agent = launch_agent(own_ca)
    before = agent.wait_ready().svid
    assert before is not None
    [old_root] = ca_roots(own_ca)

    with (
        X509Source(socket_path=socket_uri(agent), timeout_in_seconds=TIMEOUT) as source,
        WorkloadApiClient(socket_uri(agent), default_timeout=TIMEOUT) as client,
    ):
        new_root = prepare_new_root(own_ca.settings)

        def source_roots() -> set[x509.Certificate] | None:
            bundle = source.get_bundle_for_trust_domain(TRUST_DOMAIN)
            return bundle.x509_authorities if bundle and len(bundle.x509_authorities) == 2 else None

        def fetched_roots() -> set[x509.Certificate] | None:
            bundle = client.fetch_x509_bundles().get_bundle_for_trust_domain(TRUST_DOMAIN)
            return bundle.x509_authorities if bundle and len(bundle.x509_authorities) == 2 else None

        streamed = wait_until(source_roots, timeout=TIMEOUT, what="2 roots in the X509Source")
        fetched = wait_until(fetched_roots, timeout=TIMEOUT, what="2 roots from FetchX509Bundles")

    assert streamed == fetched == {old_root, new_root}
    # a prepared root is trusted but does not sign: the SVID is unchanged and chains to the old one
    assert held_svid(agent).serial_hex == before.serial_hex
    assert held_svid(agent).chain[-1].issuer == old_root.subject


# --- the wire format -----------------------------------------------------------------------------


def test_raw_x509_svid_response_is_der_leaf_first_pkcs8_key_and_der_roots(
    shared_ca: RunningCa, agent: RunningAgent
) -> None:
    held = held_svid(agent)
    roots = ca_roots(shared_ca)

    with raw_channel(agent) as channel:
        response = first_x509_svid_response(channel)
        bundles = first_x509_bundles_response(channel)

    [svid] = response.svids
    assert svid.spiffe_id == str(held.spiffe_id)
    chain = [x509.load_der_x509_certificate(part) for part in split_der(svid.x509_svid)]
    assert chain == list(held.chain)
    assert chain[0].serial_number == held.leaf.serial_number
    assert not set(chain) & set(roots), "the SVID chain must not carry the root"
    assert chain[-1].issuer == roots[0].subject

    key = serialization.load_der_private_key(svid.x509_svid_key, password=None)
    assert svid.x509_svid_key == held.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert spki(key) == der_spki(chain[0])

    assert split_der(svid.bundle) == [der(r) for r in roots]
    assert dict(response.federated_bundles) == {}
    assert dict(bundles.bundles) == {"spiffe://cluster.local": b"".join(der(r) for r in roots)}


# --- refusals ------------------------------------------------------------------------------------


def test_calls_without_the_security_header_are_invalid_argument(agent: RunningAgent) -> None:
    with raw_channel(agent) as channel:
        calls: dict[str, Callable[[], Any]] = {
            "FetchX509SVID": lambda: first_x509_svid_response(channel, metadata=()),
            "FetchX509Bundles": lambda: first_x509_bundles_response(
                channel, metadata=(("workload.spiffe.io", "false"),)
            ),
            **jwt_calls(channel, metadata=()),
        }
        for method, call in calls.items():
            code, details = status_of(call)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, method
            assert "workload.spiffe.io" in details, method


def test_jwt_methods_are_unimplemented(agent: RunningAgent) -> None:
    with raw_channel(agent) as channel:
        for method, call in jwt_calls(channel, metadata=HEADER).items():
            code, details = status_of(call)
            assert code == grpc.StatusCode.UNIMPLEMENTED, method
            assert "JWT" in details, method


def test_unavailable_while_the_agent_holds_no_svid(
    shared_ca: RunningCa, launch_agent: AgentFactory
) -> None:
    agent = launch_agent(shared_ca, ca_address=[f"127.0.0.1:{free_tcp_port()}"], mtls=False)
    assert agent.credentials.svid is None

    with raw_channel(agent) as channel:
        for call in (
            lambda: first_x509_svid_response(channel),
            lambda: first_x509_bundles_response(channel),
        ):
            code, details = status_of(call)
            assert code == grpc.StatusCode.UNAVAILABLE
            assert "no X.509-SVID" in details

    with (
        WorkloadApiClient(socket_uri(agent), default_timeout=TIMEOUT) as client,
        pytest.raises(FetchX509SvidError, match="UNAVAILABLE"),
    ):
        client.fetch_x509_svid()
    assert agent.credentials.svid is None
