"""The agent's SDS server over its real unix socket, fed by a real CA: what each request gets,
and the xDS protocol as Envoy speaks it (ACK, NACK, stale nonces, pushes on rotation and on a
bundle change), for StreamSecrets, DeltaSecrets and FetchSecrets."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from cryptography import x509

from sds.api import xds
from sds.core.credentials import Credentials
from tests.agent.conftest import StartAgent
from tests.agent.harness import RunningAgent
from tests.agent.sds_client import SdsStream, fetch_secrets, sotw_request, unpack_secrets
from tests.server.conftest import Served
from tests.server.harness import prepare_new_root

WEB = "spiffe://cluster.local/ns/default/sa/web"


@pytest.fixture
def served(sqlite_url: str, serve: Callable[..., Served]) -> Served:
    return serve(sqlite_url)


@pytest.fixture
def agent(served: Served, start_agent: StartAgent) -> RunningAgent:
    return start_agent(served)


@pytest.fixture
def streams(agent: RunningAgent) -> Iterator[Callable[..., SdsStream]]:
    opened: list[SdsStream] = []

    def open_stream(*, delta: bool = False) -> SdsStream:
        stream = SdsStream(agent.sds_target, delta=delta)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        stream.close()


def rotate(agent: RunningAgent) -> Credentials:
    """Have the agent renew now; its credentials once the new SVID is held."""
    return agent.renew_now()


def leaf_serial(secret: Any) -> str:
    chain = x509.load_pem_x509_certificates(secret.tls_certificate.certificate_chain.inline_bytes)
    return format(chain[0].serial_number, "x")


def trusted_roots(secret: Any) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(secret.validation_context.trusted_ca.inline_bytes)


def metric(agent: RunningAgent, name: str, **labels: str) -> float:
    value = agent.agent.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


@pytest.mark.parametrize(
    "names",
    [
        ["default"],
        ["ROOTCA"],
        ["ALL"],
        [WEB],
        ["spiffe://cluster.local"],
        ["default", "ROOTCA", "ALL"],
    ],
)
def test_fetch_secrets_serves_every_name(agent: RunningAgent, names: list[str]) -> None:
    response = fetch_secrets(agent.sds_target, *names)
    got = unpack_secrets(response)
    assert list(got) == names
    assert response.version_info
    svid = agent.credentials.svid
    assert svid is not None
    for name, secret in got.items():
        if name in ("default", WEB):
            assert leaf_serial(secret) == svid.serial_hex
        elif name != "ALL":
            assert trusted_roots(secret) == agent.credentials.bundles.all_roots()


@pytest.mark.parametrize(
    "names", [["nope"], ["default", "spiffe://other.example"], ["spiffe://cluster.local/ns/x/sa/y"]]
)
def test_unknown_names_get_not_found_and_the_agent_serves_on(
    agent: RunningAgent, names: list[str]
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        fetch_secrets(agent.sds_target, *names)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert names[-1] in (raised.value.details() or "")
    assert unpack_secrets(fetch_secrets(agent.sds_target, "default"))
    assert metric(agent, "meshca_agent_sds_request_errors_total", reason="unknown_resource") == 1


def test_fetch_without_names_is_invalid(agent: RunningAgent) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        fetch_secrets(agent.sds_target)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_stream_asking_for_an_unknown_name_ends_with_not_found(
    agent: RunningAgent, streams: Callable[..., SdsStream]
) -> None:
    stream = streams()
    stream.send(sotw_request("default", "nope", node="envoy-1"))
    assert stream.error().code() == grpc.StatusCode.NOT_FOUND


def test_initial_response_ack_then_a_push_to_every_stream_on_rotation(
    agent: RunningAgent, streams: Callable[..., SdsStream]
) -> None:
    both, cert_only = streams(), streams()
    both.send(sotw_request("default", "ROOTCA", node="envoy-1"))
    cert_only.send(sotw_request("default", node="envoy-2"))
    first_both, first_cert = both.next(), cert_only.next()
    assert set(unpack_secrets(first_both)) == {"default", "ROOTCA"}
    assert first_both.version_info != first_cert.version_info  # different content
    assert first_both.nonce != first_cert.nonce
    # ACKs
    both.send(
        sotw_request("default", "ROOTCA", nonce=first_both.nonce, version=first_both.version_info)
    )
    cert_only.send(sotw_request("default", nonce=first_cert.nonce, version=first_cert.version_info))

    rotated = rotate(agent)

    assert rotated.svid is not None
    for stream, previous in ((both, first_both), (cert_only, first_cert)):
        pushed = stream.next()
        assert pushed.version_info != previous.version_info
        assert leaf_serial(unpack_secrets(pushed)["default"]) == rotated.svid.serial_hex
    # one push each; the ACKs got nothing
    assert both.pending() == 0
    assert cert_only.pending() == 0
    assert metric(agent, "meshca_agent_sds_streams", api="sotw") == 2


def test_a_nack_is_counted_and_its_content_never_resent(
    agent: RunningAgent, streams: Callable[..., SdsStream]
) -> None:
    stream = streams()
    stream.send(sotw_request("default", node="envoy-1"))
    first = stream.next()
    stream.send(
        sotw_request("default", nonce=first.nonce, error="Failed to load certificate chain")
    )
    # the same subscription again (as Envoy does after a NACK): still not resent
    stream.send(
        sotw_request("default", nonce=first.nonce, error="Failed to load certificate chain")
    )
    rotated = rotate(agent)
    pushed = stream.next()
    assert pushed.version_info != first.version_info
    assert rotated.svid is not None
    assert leaf_serial(unpack_secrets(pushed)["default"]) == rotated.svid.serial_hex
    assert metric(agent, "meshca_agent_sds_nacks_total", api="sotw") == 1
    assert stream.pending() == 0


def test_a_stale_nonce_is_ignored(agent: RunningAgent, streams: Callable[..., SdsStream]) -> None:
    stream = streams()
    stream.send(sotw_request("default", node="envoy-1"))
    first = stream.next()
    rotate(agent)
    second = stream.next()
    # an answer to the first response arrives late, asking for other names: ignored
    stream.send(sotw_request("ROOTCA", nonce=first.nonce))
    stream.send(sotw_request("default", nonce=second.nonce, version=second.version_info))
    rotate(agent)
    third = stream.next()
    assert list(unpack_secrets(third)) == ["default"]


def test_a_change_of_subscribed_names_is_answered(
    agent: RunningAgent, streams: Callable[..., SdsStream]
) -> None:
    stream = streams()
    stream.send(sotw_request("default", node="envoy-1"))
    first = stream.next()
    stream.send(sotw_request("default", "ALL", nonce=first.nonce, version=first.version_info))
    assert list(unpack_secrets(stream.next())) == ["default", "ALL"]


def test_node_only_on_the_first_message(
    agent: RunningAgent, streams: Callable[..., SdsStream]
) -> None:
    """Envoy's ``set_node_on_first_message_only``: later requests carry no node."""
    stream = streams()
    stream.send(sotw_request("default", node="envoy-1"))
    first = stream.next()
    stream.send(sotw_request("default", nonce=first.nonce, version=first.version_info))
    rotated = rotate(agent)
    assert rotated.svid is not None
    assert leaf_serial(unpack_secrets(stream.next())["default"]) == rotated.svid.serial_hex


def test_a_new_root_at_the_ca_is_pushed_within_a_second(
    served: Served, agent: RunningAgent, streams: Callable[..., SdsStream]
) -> None:
    stream = streams()
    stream.send(sotw_request("ROOTCA", "ALL", node="envoy-1"))
    first = stream.next()
    assert len(trusted_roots(unpack_secrets(first)["ROOTCA"])) == 1
    stream.send(sotw_request("ROOTCA", "ALL", nonce=first.nonce, version=first.version_info))
    started = time.monotonic()
    new_root = prepare_new_root(served.ca.settings)
    pushed = stream.next(timeout=1.0)
    elapsed = time.monotonic() - started
    assert new_root in trusted_roots(unpack_secrets(pushed)["ROOTCA"])
    assert len(trusted_roots(unpack_secrets(pushed)["ROOTCA"])) == 2
    assert elapsed < 1.0
    assert metric(agent, "meshca_agent_bundle_updates_total") == 1


def test_delta_subscribe_push_and_unknown_names(
    agent: RunningAgent, streams: Callable[..., SdsStream]
) -> None:
    stream = streams(delta=True)
    stream.send(
        xds.DeltaDiscoveryRequest(
            resource_names_subscribe=["default", "ROOTCA", "nope"],
            node={"id": "envoy-delta", "cluster": "test"},
        )
    )
    first = stream.next()
    assert {r.name for r in first.resources} == {"default", "ROOTCA"}
    assert list(first.removed_resources) == ["nope"]
    versions = {r.name: r.version for r in first.resources}
    assert len(set(versions.values())) == 2
    stream.send(xds.DeltaDiscoveryRequest(response_nonce=first.nonce))
    rotated = rotate(agent)
    pushed = stream.next()
    assert [r.name for r in pushed.resources] == ["default"]
    assert rotated.svid is not None
    assert leaf_serial(unpack_secrets(pushed)["default"]) == rotated.svid.serial_hex
    assert pushed.resources[0].version != versions["default"]


def test_before_the_first_svid_only_trust_is_served(
    served: Served, start_agent: StartAgent
) -> None:
    agent = start_agent(served, ca_address=["127.0.0.1:9"], ca_mtls_address=[], wait=False)
    with pytest.raises(grpc.RpcError) as raised:
        fetch_secrets(agent.sds_target, "default")
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    roots = trusted_roots(unpack_secrets(fetch_secrets(agent.sds_target, "ROOTCA"))["ROOTCA"])
    assert roots == [x509.load_pem_x509_certificate(served.ca.root_pem())]
    assert agent.agent.readiness()[0] is False


def test_rotation_reaches_a_stream_within_its_deadline(
    agent: RunningAgent, streams: Callable[..., SdsStream]
) -> None:
    stream = streams()
    stream.send(sotw_request("default", node="envoy-1"))
    stream.next()
    started = time.monotonic()
    rotate(agent)
    stream.next(timeout=1.0)
    assert time.monotonic() - started < timedelta(seconds=1).total_seconds()
