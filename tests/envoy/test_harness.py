"""Self-test of the Envoy harness: two real Envoys with secrets from meshca's own CA, static
(most tests) or from a minimal fake SDS server (one test; the real agent lives in ``sds/``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2

from ca.core.authority import SigningAuthority
from ca.core.csr_policy import TtlPolicy
from ca.core.identity import WorkloadIdentity
from ca.core.issuer import IssuanceRequest, Issuer
from ca.core.keys import KeyType, generate_private_key
from tests.core.builders import key_pem, pem
from tests.envoy.harness import (
    EnvoyConfig,
    EnvoyError,
    EnvoyPair,
    EnvoyProcess,
    SdsApi,
    SdsSource,
    StaticSecrets,
    envoy_pair,
    normalise_serial,
    spiffe_validator_secret,
    validate_bootstrap,
)
from tests.factories import TRUST_DOMAIN, make_ca, make_csr

A_ID = "spiffe://cluster.local/ns/default/sa/a"
B_ID = "spiffe://cluster.local/ns/default/sa/b"
OTHER_ID = "spiffe://cluster.local/ns/default/sa/other"


@dataclass(frozen=True, slots=True)
class Workload:
    """An X.509-SVID issued by meshca's issuer, packaged as static Envoy secrets."""

    spiffe_id: str
    leaf: x509.Certificate
    secrets: StaticSecrets


@dataclass(frozen=True, slots=True)
class SvidMaker:
    root: SigningAuthority
    issuer: Issuer

    def workload(self, service_account: str) -> Workload:
        key = generate_private_key(KeyType.EC_P256)
        identity = WorkloadIdentity.for_service_account(TRUST_DOMAIN, "default", service_account)
        spiffe_id = str(identity.spiffe_id)
        request = IssuanceRequest(
            make_csr(key, uris=[spiffe_id]), identity, timedelta(hours=1), "tests/envoy", spiffe_id
        )
        svid = self.issuer.issue(request, datetime.now(UTC))
        secrets = StaticSecrets(
            cert_chain_pem=pem(svid.certificate, *svid.chain),
            private_key_pem=key_pem(key),
            trusted_ca_pem=pem(self.root.certificate),
        )
        return Workload(spiffe_id, svid.certificate, secrets)


@pytest.fixture(scope="module")
def svids() -> SvidMaker:
    root, intermediate = make_ca()
    return SvidMaker(root, Issuer(TRUST_DOMAIN, intermediate, TtlPolicy()))


@pytest.fixture(scope="module")
def workloads(svids: SvidMaker) -> tuple[Workload, Workload]:
    return svids.workload("a"), svids.workload("b")


def configs(a: Workload, b: Workload, **overrides: object) -> tuple[EnvoyConfig, EnvoyConfig]:
    """Configs for A and B, each allowing exactly the other's SPIFFE ID both ways."""
    config_a = EnvoyConfig("node-a", a.secrets, [b.spiffe_id], [b.spiffe_id])
    config_b = EnvoyConfig("node-b", b.secrets, [a.spiffe_id], [a.spiffe_id])
    return replace(config_a, **overrides), replace(config_b, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def pair(workloads: tuple[Workload, Workload], tmp_path: Path) -> Iterator[EnvoyPair]:
    with envoy_pair(*configs(*workloads), tmp_path) as started:
        started.wait_listeners_ready()
        yield started


def serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def test_request_crosses_to_the_peer_over_mtls(
    pair: EnvoyPair, workloads: tuple[Workload, Workload], svids: SvidMaker
) -> None:
    a, b = workloads

    response = pair.a.request("/hello")

    assert response.status == 200, response
    assert response.body == b"ok"
    assert response.headers["x-served-by"] == "node-b"
    assert response.headers["x-peer-spiffe-id"] == A_ID == a.spiffe_id
    assert normalise_serial(response.headers["x-peer-serial"]) == serial(a.leaf)
    assert response.headers["x-upstream-peer-spiffe-id"] == B_ID == b.spiffe_id

    back = pair.b.request()
    assert (back.status, back.headers["x-served-by"]) == (200, "node-a")
    assert back.headers["x-peer-spiffe-id"] == B_ID


def test_certs_report_leaf_and_trust(
    pair: EnvoyPair, workloads: tuple[Workload, Workload], svids: SvidMaker
) -> None:
    a, b = workloads

    certs = pair.a.certs()

    assert len(certs.contexts) == 2  # inbound listener and peer cluster
    assert certs.leaf_serials() == pair.a.leaf_serials() == {serial(a.leaf)}
    assert certs.leaf_uri_sans() == {A_ID}
    assert pair.a.trusted_ca_serials() == {serial(svids.root.certificate)}
    assert pair.b.leaf_serials() == {serial(b.leaf)}
    for leaf in (ctx.cert_chain[0] for ctx in certs.contexts):
        assert leaf.days_until_expiration == 0  # an hour-long SVID
        assert 3000 < leaf.seconds_until_expiration() <= 3600


def test_every_request_makes_a_new_upstream_handshake(pair: EnvoyPair) -> None:
    for _ in range(3):
        assert pair.a.request().status == 200

    stats = pair.a.stats("^cluster\\.peer\\.")
    assert stats["cluster.peer.upstream_cx_total"] == 3
    assert stats["cluster.peer.ssl.handshake"] == 3
    assert stats["cluster.peer.ssl.session_reused"] == 0


def test_without_fresh_connections_envoy_pools_the_upstream_connection(
    workloads: tuple[Workload, Workload], tmp_path: Path
) -> None:
    with envoy_pair(*configs(*workloads, fresh_upstream_connections=False), tmp_path) as pair:
        pair.wait_listeners_ready()
        for _ in range(3):
            assert pair.a.request().status == 200  # a new downstream connection each time

        assert pair.a.stats("^cluster\\.peer\\.upstream_cx_total$") == {
            "cluster.peer.upstream_cx_total": 1
        }


def test_peer_outside_the_allow_list_is_refused(
    workloads: tuple[Workload, Workload], tmp_path: Path
) -> None:
    config_a, config_b = configs(*workloads)
    config_b = replace(config_b, inbound_allowed_ids=[OTHER_ID])
    with envoy_pair(config_a, config_b, tmp_path) as pair:
        pair.wait_listeners_ready()

        response = pair.a.request()

        assert response.status == 503, response
        assert "x-peer-spiffe-id" not in response.headers
        pair.b.wait_stat("listener.inbound.ssl.fail_verify_san", lambda n: n >= 1)
        assert pair.b.stats()["listener.inbound.ssl.handshake"] == 0
        assert pair.b.request().status == 200  # B's own outbound still passes A's checks


@pytest.mark.parametrize("allowed", [[A_ID], [OTHER_ID]], ids=["allowed", "refused"])
def test_spiffe_validator_secret_with_allow_list(
    workloads: tuple[Workload, Workload],
    svids: SvidMaker,
    tmp_path: Path,
    allowed: list[str],
) -> None:
    spiffe = spiffe_validator_secret("ALL", {"cluster.local": pem(svids.root.certificate)})
    a, b = (replace(w, secrets=replace(w.secrets, extra=(spiffe,))) for w in workloads)
    config_a, config_b = configs(a, b, validation_secret_name="ALL")
    config_b = replace(config_b, inbound_allowed_ids=allowed)
    with envoy_pair(config_a, config_b, tmp_path) as pair:
        pair.wait_listeners_ready()

        response = pair.a.request()

        if allowed == [A_ID]:
            assert (response.status, response.headers["x-peer-spiffe-id"]) == (200, A_ID)
        else:
            assert response.status == 503
            pair.b.wait_stat("listener.inbound.ssl.fail_verify_san", lambda n: n >= 1)
        assert pair.a.trusted_ca_serials() == {serial(svids.root.certificate)}


@pytest.mark.parametrize("api_type", list(SdsApi))
@pytest.mark.parametrize("validation", ["ROOTCA", "ALL", "spiffe://cluster.local"])
def test_sds_bootstrap_is_valid(api_type: SdsApi, validation: str, tmp_path: Path) -> None:
    source = SdsSource(tmp_path / "sds.sock", api_type, set_node_on_first_message_only=True)
    config = EnvoyConfig(
        "node-a", source, [B_ID], [B_ID], validation_secret_name=validation, peer_port=15006
    )
    validate_bootstrap(config, tmp_path / "envoy.json")


def test_sds_envoy_without_a_server_is_not_ready(tmp_path: Path) -> None:
    config = EnvoyConfig("node-a", SdsSource(tmp_path / "missing.sock"))

    with EnvoyProcess(config, tmp_path).start(wait_live=False) as envoy:
        with pytest.raises(EnvoyError, match="LIVE with certificates") as failure:
            envoy.wait_listeners_ready(timeout=0.5)
        assert "log tail" in str(failure.value)
        assert envoy.admin_get("/ready") == (503, "PRE_INITIALIZING\n")
        assert envoy.stats("^sds\\.default\\.update_success$") == {"sds.default.update_success": 0}


class FakeSds(sds_pb2_grpc.SecretDiscoveryServiceServicer):  # type: ignore[misc]
    """The smallest SotW SDS server: answers each requested name once, ignores ACKs."""

    def __init__(self, secrets: StaticSecrets) -> None:
        default = secret_pb2.Secret(name="default")
        default.tls_certificate.certificate_chain.inline_bytes = secrets.cert_chain_pem
        default.tls_certificate.private_key.inline_bytes = secrets.private_key_pem
        root = secret_pb2.Secret(name="ROOTCA")
        root.validation_context.trusted_ca.inline_bytes = secrets.trusted_ca_pem
        self.secrets = {"default": default, "ROOTCA": root}

    def StreamSecrets(
        self, requests: Iterator[discovery_pb2.DiscoveryRequest], context: object
    ) -> Iterator[discovery_pb2.DiscoveryResponse]:
        for request in requests:
            if request.response_nonce:
                continue  # an ACK (or NACK) of what we sent
            for name in request.resource_names:
                resource = any_pb2.Any()
                resource.Pack(self.secrets[name])
                yield discovery_pb2.DiscoveryResponse(
                    version_info="1", resources=[resource], type_url=resource.type_url, nonce=name
                )


@contextlib.contextmanager
def fake_sds(secrets: StaticSecrets, socket_path: Path) -> Iterator[None]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(FakeSds(secrets), server)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    try:
        yield
    finally:
        server.stop(grace=None)


def test_sds_mode_with_a_minimal_sds_server(
    workloads: tuple[Workload, Workload], svids: SvidMaker, tmp_path: Path
) -> None:
    a, b = workloads
    sock_a, sock_b = tmp_path / "a.sock", tmp_path / "b.sock"
    config_a, config_b = configs(a, b)
    config_a = replace(config_a, secrets=SdsSource(sock_a))
    config_b = replace(config_b, secrets=SdsSource(sock_b, SdsApi.GRPC, True))

    with (
        fake_sds(a.secrets, sock_a),
        fake_sds(b.secrets, sock_b),
        envoy_pair(config_a, config_b, tmp_path) as pair,
    ):
        pair.wait_listeners_ready()
        response = pair.a.request()

        assert (response.status, response.headers["x-peer-spiffe-id"]) == (200, A_ID)
        assert pair.a.leaf_serials() == {serial(a.leaf)}
        assert pair.b.trusted_ca_serials() == {serial(svids.root.certificate)}
        stats = pair.a.stats("^sds\\..*\\.update_success$")
        assert stats == {"sds.default.update_success": 1, "sds.ROOTCA.update_success": 1}
