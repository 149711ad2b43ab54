"""Renewal over the mTLS port: a workload holding a certificate from this CA renews its own
SPIFFE ID without a token, and nothing else — not another identity, not with a certificate of
another CA, and not on the token port."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from spiffe import X509Svid

from ca.core.csr_policy import TtlPolicy
from ca.core.identity import WorkloadIdentity, parse_spiffe_id
from ca.core.issuer import IssuanceRequest, Issuer
from ca.core.keys import KeyType, generate_private_key
from ca.core.serials import random_serial
from ca.core.svid_builder import SvidBuilder
from ca.runtime import CaRuntime
from tests.cli.helpers import to_pem
from tests.factories import TRUST_DOMAIN, make_ca, make_csr
from tests.server.conftest import (
    Served,
    certificates,
    pem_key,
    refused,
    serial_of,
    spiffe_id,
    uri_sans,
)

WEB = spiffe_id("default", "web")
PEER = re.compile(r"^ipv4:127\.0\.0\.1:\d+$")


def _credentials(served: Served) -> tuple[CertificateIssuerPrivateKeyTypes, list[str]]:
    """A key the client generated and the chain the CA issued for it, with a token."""
    key = generate_private_key(KeyType.EC_P256)
    chain = served.issue("default", "web", key=key, pod_name="web-1", pod_uid="uid-1")
    return key, chain


def _mtls_channel(
    served: Served, key: CertificateIssuerPrivateKeyTypes, chain: list[str]
) -> grpc.Channel:
    # the client presents its leaf and the intermediate (the server trusts the roots)
    return served.ca.channel(
        client_key_pem=pem_key(key), client_chain_pem="".join(chain[:2]).encode(), mtls=True
    )


def test_renews_its_own_identity_without_a_token(db_url: str, serve: Callable[..., Served]) -> None:
    served = serve(db_url)
    key, chain = _credentials(served)
    new_key = generate_private_key(KeyType.EC_P256)

    with _mtls_channel(served, key, chain) as channel:
        renewed = served.ca.create_certificate(
            make_csr(new_key), None, validity_seconds=1800, channel=channel
        )
        # a CSR naming its own SPIFFE ID is fine too
        again = served.ca.create_certificate(make_csr(uris=[WEB]), None, channel=channel)

    svid = X509Svid.parse("".join(renewed).encode(), pem_key(new_key))
    assert str(svid.spiffe_id) == WEB
    leaf = certificates(renewed)[0]
    assert uri_sans(certificates(again)[0]) == [WEB]
    (row,) = [r for r in served.workload_rows() if r.serial == serial_of(leaf)]
    assert row.spiffe_id == WEB
    assert row.requested_ttl_seconds == 1800
    assert PEER.match(row.requester), row.requester
    assert len(served.workload_rows()) == 3  # the token-issued one and the two renewals


def test_a_renewed_certificate_renews_in_turn(
    sqlite_url: str, serve: Callable[..., Served]
) -> None:
    served = serve(sqlite_url)
    key, chain = _credentials(served)
    for _ in range(2):
        new_key = generate_private_key(KeyType.EC_P256)
        with _mtls_channel(served, key, chain) as channel:
            chain = served.ca.create_certificate(make_csr(new_key), None, channel=channel)
        key = new_key
    assert uri_sans(certificates(chain)[0]) == [WEB]


def test_cannot_renew_another_identity(sqlite_url: str, serve: Callable[..., Served]) -> None:
    served = serve(sqlite_url)
    key, chain = _credentials(served)
    issued = len(served.workload_rows())

    with _mtls_channel(served, key, chain) as channel:
        failure = refused(
            lambda: served.ca.create_certificate(
                make_csr(uris=[spiffe_id("payments", "api")]), None, channel=channel
            )
        )

    assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    assert failure.reason == "csr_identity_mismatch"
    row = served.denied_row(failure.request_id)
    assert (row.reason, row.spiffe_id) == ("csr_identity_mismatch", WEB)
    assert len(served.workload_rows()) == issued


def _foreign_svid() -> tuple[CertificateIssuerPrivateKeyTypes, list[str]]:
    """An SVID for the same SPIFFE ID and trust domain from a CA this server never trusted."""
    _, intermediate = make_ca()
    key = generate_private_key(KeyType.EC_P256)
    issuer = Issuer(TRUST_DOMAIN, intermediate, TtlPolicy())
    identity = WorkloadIdentity.from_spiffe_id(parse_spiffe_id(WEB))
    svid = issuer.issue(
        IssuanceRequest(make_csr(key), identity, timedelta(hours=1), "test", "foreign"),
        datetime.now(UTC),
    )
    return key, svid.chain_pem()


def test_certificate_of_another_ca_cannot_renew(
    sqlite_url: str, serve: Callable[..., Served]
) -> None:
    served = serve(sqlite_url)
    key, chain = _foreign_svid()

    with _mtls_channel(served, key, chain) as channel, pytest.raises(grpc.RpcError) as info:
        served.ca.create_certificate(make_csr(), None, channel=channel)

    # the TLS handshake fails (UNAVAILABLE on the client); never a certificate
    assert info.value.code() in (  # type: ignore[attr-defined]
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAUTHENTICATED,
    ), info.value
    assert served.workload_rows() == []


def test_mtls_port_requires_a_client_certificate(
    sqlite_url: str, serve: Callable[..., Served]
) -> None:
    served = serve(sqlite_url)
    with served.ca.channel(mtls=True) as channel, pytest.raises(grpc.RpcError) as info:
        served.ca.create_certificate(make_csr(), None, channel=channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert served.workload_rows() == []


def test_token_port_ignores_client_certificates(
    sqlite_url: str, serve: Callable[..., Served]
) -> None:
    """On the token port a client certificate proves nothing: no token, no certificate."""
    served = serve(sqlite_url)
    key, chain = _credentials(served)
    issued = len(served.workload_rows())
    with served.ca.channel(
        client_key_pem=pem_key(key), client_chain_pem="".join(chain[:2]).encode()
    ) as channel:
        failure = refused(lambda: served.ca.create_certificate(make_csr(), None, channel=channel))
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert failure.reason == "token_missing"
    assert served.denied_row(failure.request_id).reason == "token_missing"
    assert len(served.workload_rows()) == issued


def test_token_port_without_token_is_unauthenticated(
    sqlite_url: str, serve: Callable[..., Served]
) -> None:
    served = serve(sqlite_url)
    failure = refused(lambda: served.ca.create_certificate(make_csr(), None))
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAUTHENTICATED, "token_missing")
    assert served.workload_rows() == []


def test_a_token_on_the_mtls_port_is_the_callers_identity(
    sqlite_url: str, serve: Callable[..., Served]
) -> None:
    """A token, when sent, decides who the caller is, even over mTLS with another identity's
    certificate: the certificate is not an extra credential that can widen access."""
    served = serve(sqlite_url)
    key, chain = _credentials(served)  # default/web
    token = served.minter.mint("payments", "api")
    with _mtls_channel(served, key, chain) as channel:
        renewed = served.ca.create_certificate(make_csr(), token, channel=channel)
        failure = refused(
            lambda: served.ca.create_certificate(make_csr(uris=[WEB]), token, channel=channel)
        )
    assert uri_sans(certificates(renewed)[0]) == [spiffe_id("payments", "api")]
    assert failure.reason == "csr_identity_mismatch"


def test_expired_certificate_of_this_ca_cannot_renew(
    sqlite_url: str, serve: Callable[..., Served]
) -> None:
    """A certificate this CA's own intermediate signed, but expired an hour ago."""
    served = serve(sqlite_url)
    runtime = CaRuntime(served.ca.settings)
    try:
        signer = runtime.authorities.signing_authority(runtime.kek())
    finally:
        runtime.engine.dispose()
    key = generate_private_key(KeyType.EC_P256)
    now = datetime.now(UTC)
    leaf = SvidBuilder(signer).build(
        key.public_key(),
        parse_spiffe_id(WEB),
        serial=random_serial(),
        not_before=now - timedelta(hours=2),
        not_after=now - timedelta(hours=1),
    )
    chain = [to_pem(leaf), *(to_pem(c) for c in signer.chain_for_leaf)]

    with _mtls_channel(served, key, chain) as channel, pytest.raises(grpc.RpcError) as info:
        served.ca.create_certificate(make_csr(), None, channel=channel)

    assert info.value.code() in (  # type: ignore[attr-defined]
        grpc.StatusCode.UNAVAILABLE,  # the handshake refused it
        grpc.StatusCode.UNAUTHENTICATED,  # or the server's own check of the leaf did
    ), info.value
    assert served.workload_rows() == []


def test_deny_list_applies_to_renewals_on_another_replica(
    sqlite_url: str, serve: Callable[..., Served]
) -> None:
    """Two replicas share the database (and KEK): a certificate issued by one renews on the
    other, unless that one's deny list names the identity."""
    first = serve(sqlite_url)
    key, chain = _credentials(first)
    kek_file = first.ca.settings.kek_file
    second = serve(sqlite_url, kek_file=kek_file)
    denying = serve(sqlite_url, kek_file=kek_file, deny_identities=[WEB])

    with _mtls_channel(second, key, chain) as channel:
        renewed = second.ca.create_certificate(make_csr(), None, channel=channel)
    assert uri_sans(certificates(renewed)[0]) == [WEB]

    with _mtls_channel(denying, key, chain) as channel:
        failure = refused(lambda: denying.ca.create_certificate(make_csr(), None, channel=channel))
    assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, "identity_denied")
    assert denying.denied_row(failure.request_id).spiffe_id == WEB
    assert len(first.workload_rows()) == 2
