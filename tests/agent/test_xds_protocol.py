"""The xDS protocol of one SDS stream, driven request by request: versions and nonces, ACK,
NACK, stale nonces, subscription changes and pushes, for state-of-the-world and delta streams."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sds.api import xds
from sds.core.credentials import Credentials
from sds.core.secrets import ALL, DEFAULT, ROOTCA
from sds.core.xds_protocol import DeltaStream, Outcome, SotwStream, UnknownResources
from tests.agent.workload_ca import WorkloadCa


@pytest.fixture(scope="module")
def workload_ca() -> WorkloadCa:
    return WorkloadCa()


@pytest.fixture
def creds(workload_ca: WorkloadCa) -> Credentials:
    return workload_ca.credentials()


def rotated(creds: Credentials, workload_ca: WorkloadCa) -> Credentials:
    return dataclasses.replace(creds, svid=workload_ca.svid(), generation=creds.generation + 1)


def request(*names: str, nonce: str = "", version: str = "", error: str | None = None) -> Any:
    message = xds.DiscoveryRequest(
        resource_names=list(names),
        response_nonce=nonce,
        version_info=version,
        type_url=xds.SECRET_TYPE_URL,
    )
    if error is not None:
        message.error_detail.message = error
    return message


def secret_names(response: Any) -> list[str]:
    out = []
    for packed in response.resources:
        secret = xds.Secret()
        assert packed.Unpack(secret)
        out.append(secret.name)
    return out


# --- state of the world ---


def test_first_request_is_answered_with_a_version_and_a_nonce(creds: Credentials) -> None:
    stream = SotwStream()
    assert stream.on_request(request(DEFAULT, ROOTCA)) is Outcome.INITIAL
    response = stream.respond(creds, force=True)
    assert response.version_info
    assert response.nonce
    assert response.type_url == xds.SECRET_TYPE_URL
    assert secret_names(response) == [DEFAULT, ROOTCA]


def test_nothing_is_pushed_before_the_first_request(creds: Credentials) -> None:
    assert SotwStream().respond(creds) is None
    assert SotwStream().respond(creds, force=True) is None
    assert DeltaStream().respond(creds) is None


def test_ack_changes_nothing(creds: Credentials) -> None:
    stream = SotwStream()
    stream.on_request(request(DEFAULT))
    first = stream.respond(creds, force=True)
    outcome = stream.on_request(request(DEFAULT, nonce=first.nonce, version=first.version_info))
    assert outcome is Outcome.ACK
    assert stream.respond(creds) is None


def test_same_content_gets_the_same_version_and_new_content_a_new_one(
    creds: Credentials, workload_ca: WorkloadCa
) -> None:
    one, two = SotwStream(), SotwStream()
    for stream in (one, two):
        stream.on_request(request(DEFAULT))
    a = one.respond(creds, force=True)
    b = two.respond(creds, force=True)
    assert a.version_info == b.version_info
    assert a.nonce != b.nonce
    pushed = one.respond(rotated(creds, workload_ca))
    assert pushed is not None
    assert pushed.version_info != a.version_info
    assert pushed.nonce != a.nonce


def test_a_credential_change_is_pushed_only_to_streams_it_concerns(
    creds: Credentials, workload_ca: WorkloadCa
) -> None:
    certificate, trust = SotwStream(), SotwStream()
    certificate.on_request(request(DEFAULT))
    trust.on_request(request(ROOTCA))
    certificate.respond(creds, force=True)
    trust.respond(creds, force=True)
    new = rotated(creds, workload_ca)  # same bundle, new SVID
    assert certificate.respond(new) is not None
    assert trust.respond(new) is None


def test_nack_is_recorded_and_the_rejected_content_never_sent_again(
    creds: Credentials, workload_ca: WorkloadCa
) -> None:
    stream = SotwStream()
    stream.on_request(request(DEFAULT))
    first = stream.respond(creds, force=True)
    outcome = stream.on_request(request(DEFAULT, nonce=first.nonce, error="bad certificate chain"))
    assert outcome is Outcome.NACK
    assert stream.nack_detail == "bad certificate chain"
    # neither on a re-request with the same names nor when forced
    assert stream.respond(creds) is None
    assert stream.respond(creds, force=True) is None
    # new content is sent
    assert stream.respond(rotated(creds, workload_ca)) is not None


def test_a_stale_nonce_is_ignored(creds: Credentials, workload_ca: WorkloadCa) -> None:
    stream = SotwStream()
    stream.on_request(request(DEFAULT))
    first = stream.respond(creds, force=True)
    second = stream.respond(rotated(creds, workload_ca))
    assert second is not None
    # Envoy's ACK (or NACK) of the first response arrives after the second was sent
    assert stream.on_request(request(DEFAULT, ROOTCA, nonce=first.nonce)) is Outcome.STALE
    assert stream.on_request(request(DEFAULT, nonce=first.nonce, error="x")) is Outcome.STALE
    assert stream.names == (DEFAULT,)
    assert stream.nacked_versions == set()


def test_a_change_of_names_is_answered(creds: Credentials) -> None:
    stream = SotwStream()
    stream.on_request(request(DEFAULT))
    first = stream.respond(creds, force=True)
    outcome = stream.on_request(request(DEFAULT, ALL, nonce=first.nonce))
    assert outcome is Outcome.SUBSCRIBE
    response = stream.respond(creds, force=True)
    assert secret_names(response) == [DEFAULT, ALL]


def test_the_node_of_the_first_message_is_kept(creds: Credentials) -> None:
    """With ``set_node_on_first_message_only`` Envoy sends the node once."""
    stream = SotwStream()
    first_request = request(DEFAULT)
    first_request.node.id = "sidecar~10.0.0.1~web-1.default~default.svc.cluster.local"
    stream.on_request(first_request)
    response = stream.respond(creds, force=True)
    stream.on_request(request(DEFAULT, nonce=response.nonce))
    assert stream.node.id.startswith("sidecar~")


def test_unknown_names_are_an_error_for_the_request(creds: Credentials) -> None:
    stream = SotwStream()
    stream.on_request(request(DEFAULT, "spiffe://other.example", "nope"))
    with pytest.raises(UnknownResources) as raised:
        stream.respond(creds, force=True)
    assert raised.value.names == ("spiffe://other.example", "nope")
    assert "nope" in str(raised.value)


def test_nothing_is_sent_until_the_svid_is_held(workload_ca: WorkloadCa) -> None:
    waiting = workload_ca.credentials(with_svid=False)
    stream = SotwStream()
    stream.on_request(request(DEFAULT, ROOTCA))
    assert stream.respond(waiting, force=True) is None
    trust_only = SotwStream()
    trust_only.on_request(request(ROOTCA))
    assert trust_only.respond(waiting, force=True) is not None


def test_the_spiffe_id_alias_waits_for_the_svid_then_serves_the_certificate(
    workload_ca: WorkloadCa,
) -> None:
    stream = SotwStream()
    creds = workload_ca.credentials()
    assert creds.svid is not None
    alias = str(creds.svid.spiffe_id)
    stream.on_request(request(alias))
    assert stream.respond(dataclasses.replace(creds, svid=None), force=True) is None
    response = stream.respond(creds, force=True)
    assert secret_names(response) == [alias]


# --- delta ---


def delta_request(
    subscribe: tuple[str, ...] = (),
    unsubscribe: tuple[str, ...] = (),
    *,
    nonce: str = "",
    error: str | None = None,
    initial: dict[str, str] | None = None,
) -> Any:
    message = xds.DeltaDiscoveryRequest(
        type_url=xds.SECRET_TYPE_URL,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    if error is not None:
        message.error_detail.message = error
    return message


def delta_names(response: Any) -> list[str]:
    return [r.name for r in response.resources]


def test_delta_sends_each_subscribed_resource_with_its_own_version(creds: Credentials) -> None:
    stream = DeltaStream()
    assert stream.on_request(delta_request((DEFAULT, ROOTCA))) is Outcome.INITIAL
    response = stream.respond(creds)
    assert delta_names(response) == [DEFAULT, ROOTCA]
    versions = {r.name: r.version for r in response.resources}
    assert len(set(versions.values())) == 2
    assert response.nonce
    assert stream.on_request(delta_request(nonce=response.nonce)) is Outcome.ACK
    assert stream.respond(creds) is None


def test_delta_pushes_only_what_changed(creds: Credentials, workload_ca: WorkloadCa) -> None:
    stream = DeltaStream()
    stream.on_request(delta_request((DEFAULT, ROOTCA)))
    stream.respond(creds)
    pushed = stream.respond(rotated(creds, workload_ca))
    assert delta_names(pushed) == [DEFAULT]


def test_delta_skips_what_the_client_already_has(creds: Credentials) -> None:
    first = DeltaStream()
    first.on_request(delta_request((DEFAULT, ROOTCA)))
    versions = {r.name: r.version for r in first.respond(creds).resources}
    # Envoy reconnects and says what it holds
    again = DeltaStream()
    again.on_request(delta_request((DEFAULT, ROOTCA), initial={ROOTCA: versions[ROOTCA]}))
    assert delta_names(again.respond(creds)) == [DEFAULT]


def test_delta_subscribe_later_and_unsubscribe(creds: Credentials, workload_ca: WorkloadCa) -> None:
    stream = DeltaStream()
    stream.on_request(delta_request((DEFAULT,)))
    first = stream.respond(creds)
    outcome = stream.on_request(delta_request((ALL,), nonce=first.nonce))
    assert outcome is Outcome.SUBSCRIBE
    assert delta_names(stream.respond(creds)) == [ALL]
    stream.on_request(delta_request(unsubscribe=(DEFAULT,)))
    assert stream.respond(rotated(creds, workload_ca)) is None


def test_delta_nack_is_not_resent(creds: Credentials, workload_ca: WorkloadCa) -> None:
    stream = DeltaStream()
    stream.on_request(delta_request((DEFAULT,)))
    first = stream.respond(creds)
    assert stream.on_request(delta_request(nonce=first.nonce, error="rejected")) is Outcome.NACK
    assert stream.nack_detail == "rejected"
    assert stream.respond(creds) is None
    assert delta_names(stream.respond(rotated(creds, workload_ca))) == [DEFAULT]


def test_delta_unknown_names_come_back_as_removed_once(creds: Credentials) -> None:
    stream = DeltaStream()
    stream.on_request(delta_request((DEFAULT, "nope")))
    response = stream.respond(creds)
    assert delta_names(response) == [DEFAULT]
    assert list(response.removed_resources) == ["nope"]
    assert stream.respond(creds) is None


def test_delta_stale_nonce_still_counts_its_subscriptions(creds: Credentials) -> None:
    stream = DeltaStream()
    stream.on_request(delta_request((DEFAULT,)))
    stream.respond(creds)
    assert stream.on_request(delta_request((ROOTCA,), nonce="not-a-nonce")) is Outcome.SUBSCRIBE
    assert delta_names(stream.respond(creds)) == [ROOTCA]
