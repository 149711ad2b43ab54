"""The CA server's own certificate: an X.509-SVID that also names the DNS names and IP addresses
clients dial. Its SAN is the SPIFFE URI first, then exactly the names asked for; OpenSSL accepts
it as a TLS server certificate for those names (and no others); py-spiffe still reads it as an
SVID; and the independent validator refuses any leaf whose extra names differ from those
expected, so a workload SVID can never pick up extra names by accident."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import SpiffeId, TrustDomain, X509Svid

from ca.core.csr_policy import TtlPolicy
from ca.core.errors import InternalError, PermissionDenied
from ca.core.identity import WorkloadIdentity
from ca.core.issuer import IssuedSvid, Issuer
from ca.core.keys import KeyType, generate_private_key
from ca.core.svid_validator import SvidValidator
from ca.server.server_tls import SERVER_PATH, SERVER_REQUESTER, serving_names
from tests.core.builders import CaBank, CaPair, key_pem, pem, request_for
from tests.factories import TRUST_DOMAIN, WEB_ID, make_csr

SERVER_ID = f"spiffe://cluster.local{SERVER_PATH}"
NAMES = ["localhost", "127.0.0.1", "::1"]
TTL = timedelta(hours=6)

requires_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="the openssl command-line tool is not installed"
)


@dataclass(frozen=True, slots=True)
class Serving:
    ca: CaPair
    key: ec.EllipticCurvePrivateKey
    svid: IssuedSvid
    now: datetime
    request_id: str

    @property
    def leaf(self) -> x509.Certificate:
        return self.svid.certificate


def server_identity(trust_domain: TrustDomain = TRUST_DOMAIN) -> WorkloadIdentity:
    return WorkloadIdentity.from_spiffe_id(SpiffeId(f"{trust_domain.as_spiffe_id()}{SERVER_PATH}"))


@pytest.fixture
def ca(ca_bank: CaBank) -> CaPair:
    return ca_bank.ca(KeyType.EC_P256)


@pytest.fixture
def issuer(ca: CaPair) -> Issuer:
    return Issuer(TRUST_DOMAIN, ca.intermediate, TtlPolicy())


@pytest.fixture
def serving(ca: CaPair, issuer: Issuer, now: datetime) -> Serving:
    key = generate_private_key(KeyType.EC_P256)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    request_id = uuid.uuid4().hex
    svid = issuer.issue_serving(
        key.public_key(),
        server_identity(),
        serving_names(NAMES),
        TTL,
        now,
        requester=SERVER_REQUESTER,
        request_id=request_id,
    )
    return Serving(ca, key, svid, now, request_id)


def san(cert: x509.Certificate) -> x509.Extension[x509.SubjectAlternativeName]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


# --- serving_names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("localhost", x509.DNSName("localhost"), id="localhost"),
        pytest.param(
            "meshca.istio-system.svc",
            x509.DNSName("meshca.istio-system.svc"),
            id="service-dns-name",
        ),
        pytest.param(
            "127.0.0.1", x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), id="ipv4-loopback"
        ),
        pytest.param("10.96.0.12", x509.IPAddress(ipaddress.IPv4Address("10.96.0.12")), id="ipv4"),
        pytest.param("::1", x509.IPAddress(ipaddress.IPv6Address("::1")), id="ipv6-loopback"),
        pytest.param(
            "2001:db8::7", x509.IPAddress(ipaddress.IPv6Address("2001:db8::7")), id="ipv6"
        ),
    ],
)
def test_serving_names_types_each_entry(text: str, expected: x509.GeneralName) -> None:
    (entry,) = serving_names([text])
    assert entry == expected
    assert type(entry) is type(expected)


def test_serving_names_keeps_the_order_given() -> None:
    assert serving_names(NAMES) == [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        x509.IPAddress(ipaddress.IPv6Address("::1")),
    ]
    assert serving_names([]) == []


# --- the issued certificate -----------------------------------------------------------------


def test_san_is_the_spiffe_uri_first_then_exactly_the_serving_names(serving: Serving) -> None:
    extension = san(serving.leaf)

    assert extension.critical  # the subject is empty
    assert list(extension.value) == [
        x509.UniformResourceIdentifier(SERVER_ID),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        x509.IPAddress(ipaddress.IPv6Address("::1")),
    ]
    assert len(serving.leaf.subject) == 0


def test_serving_certificate_certifies_the_server_key_for_the_ttl(serving: Serving) -> None:
    leaf = serving.leaf
    assert leaf.public_key() == serving.key.public_key()
    assert leaf.not_valid_after_utc == serving.now + TTL
    leaf.verify_directly_issued_by(serving.ca.intermediate.certificate)
    assert [c.subject for c in serving.svid.chain] == [
        serving.ca.intermediate.certificate.subject,
        serving.ca.root.certificate.subject,
    ]


def test_serving_certificate_record_names_the_server_request(serving: Serving) -> None:
    record = serving.svid.record
    assert record.spiffe_id == SERVER_ID
    assert record.namespace is None
    assert record.service_account is None
    assert record.requester == SERVER_REQUESTER
    assert record.request_id == serving.request_id
    assert record.requested_ttl_seconds == int(TTL.total_seconds())
    assert record.serial == format(serving.leaf.serial_number, "032x")
    assert record.issued_at == serving.now


def test_py_spiffe_parses_the_serving_certificate_as_an_svid(serving: Serving) -> None:
    chain = "".join(serving.svid.chain_pem()).encode()

    parsed = X509Svid.parse(chain, key_pem(serving.key))

    assert str(parsed.spiffe_id) == SERVER_ID
    assert parsed.leaf.serial_number == serving.leaf.serial_number


def openssl_verify(
    serving: Serving, tmp_path: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "root.pem").write_bytes(pem(serving.ca.root.certificate))
    (tmp_path / "intermediate.pem").write_bytes(pem(serving.ca.intermediate.certificate))
    (tmp_path / "leaf.pem").write_bytes(pem(serving.leaf))
    return subprocess.run(
        [
            "openssl",
            "verify",
            "-purpose",
            "sslserver",
            *options,
            "-CAfile",
            str(tmp_path / "root.pem"),
            "-untrusted",
            str(tmp_path / "intermediate.pem"),
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


@requires_openssl
@pytest.mark.parametrize(
    "options",
    [
        pytest.param([], id="purpose-only"),
        pytest.param(["-verify_hostname", "localhost"], id="hostname-localhost"),
        pytest.param(["-verify_ip", "127.0.0.1"], id="ip-127.0.0.1"),
        pytest.param(["-verify_ip", "::1"], id="ip-::1"),
        pytest.param(["-x509_strict"], id="x509-strict"),
    ],
)
def test_openssl_verifies_it_as_a_tls_server_certificate(
    serving: Serving, tmp_path: Path, options: list[str]
) -> None:
    result = openssl_verify(serving, tmp_path, *options)
    assert result.returncode == 0, result.stdout + result.stderr


@requires_openssl
@pytest.mark.parametrize(
    ("options", "error"),
    [
        pytest.param(["-verify_hostname", "meshca.example"], "hostname mismatch", id="hostname"),
        pytest.param(["-verify_ip", "10.0.0.1"], "IP address mismatch", id="ip"),
    ],
)
def test_openssl_refuses_it_for_names_it_does_not_carry(
    serving: Serving, tmp_path: Path, options: list[str], error: str
) -> None:
    result = openssl_verify(serving, tmp_path, *options)
    assert result.returncode != 0, result.stdout
    assert error in result.stdout + result.stderr


def test_serving_certificate_outside_the_trust_domain_is_refused(
    issuer: Issuer, now: datetime
) -> None:
    key = generate_private_key(KeyType.EC_P256)
    with pytest.raises(PermissionDenied) as info:
        issuer.issue_serving(
            key.public_key(),
            server_identity(TrustDomain("other.example")),
            serving_names(NAMES),
            TTL,
            now,
            requester=SERVER_REQUESTER,
            request_id="r",
        )
    assert info.value.reason == "foreign_trust_domain"


def test_a_second_uri_among_the_serving_names_is_never_issued(
    issuer: Issuer, now: datetime
) -> None:
    """One certificate, one SPIFFE ID: a URI smuggled in as an extra name fails validation."""
    key = generate_private_key(KeyType.EC_P256)
    with pytest.raises(InternalError) as info:
        issuer.issue_serving(
            key.public_key(),
            server_identity(),
            [x509.DNSName("localhost"), x509.UniformResourceIdentifier(WEB_ID)],
            TTL,
            now,
            requester=SERVER_REQUESTER,
            request_id="r",
        )
    assert info.value.reason == "svid_validation_failed"


def test_workload_svids_still_carry_the_uri_alone(
    issuer: Issuer, web: WorkloadIdentity, now: datetime
) -> None:
    svid = issuer.issue(request_for(make_csr(uris=[WEB_ID]), web), now)
    assert list(san(svid.certificate).value) == [x509.UniformResourceIdentifier(WEB_ID)]


# --- the validator's view of extra names ----------------------------------------------------

LOCALHOST = x509.DNSName("localhost")
V4 = x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))
V6 = x509.IPAddress(ipaddress.IPv6Address("::1"))


def test_validator_accepts_exactly_the_expected_names(serving: Serving) -> None:
    SvidValidator(serving.ca.intermediate.certificate).validate(
        serving.leaf,
        SpiffeId(SERVER_ID),
        now=serving.now,
        public_key=serving.key.public_key(),
        extra_names=[LOCALHOST, V4, V6],
    )


@pytest.mark.parametrize(
    "expected",
    [
        pytest.param([], id="none-expected-as-for-workloads"),
        pytest.param([LOCALHOST, V4], id="one-name-fewer"),
        pytest.param([LOCALHOST, V4, V6, x509.DNSName("meshca.svc")], id="one-name-more"),
        pytest.param([V4, LOCALHOST, V6], id="other-order"),
        pytest.param(
            [LOCALHOST, x509.IPAddress(ipaddress.IPv4Address("127.0.0.2")), V6], id="other-ip"
        ),
        pytest.param([x509.DNSName("localhost.localdomain"), V4, V6], id="other-dns-name"),
        pytest.param(
            [x509.UniformResourceIdentifier(SERVER_ID), LOCALHOST, V4, V6],
            id="uri-among-expected",
        ),
    ],
)
def test_validator_refuses_a_leaf_whose_extra_names_differ(
    serving: Serving, expected: list[x509.GeneralName]
) -> None:
    with pytest.raises(InternalError) as info:
        SvidValidator(serving.ca.intermediate.certificate).validate(
            serving.leaf, SpiffeId(SERVER_ID), now=serving.now, extra_names=expected
        )
    assert info.value.reason == "svid_validation_failed"


def test_validator_refuses_a_workload_leaf_when_names_are_expected(
    issuer: Issuer, ca: CaPair, web: WorkloadIdentity, now: datetime
) -> None:
    svid = issuer.issue(request_for(make_csr(uris=[WEB_ID]), web), now)
    with pytest.raises(InternalError):
        SvidValidator(ca.intermediate.certificate).validate(
            svid.certificate, SpiffeId(WEB_ID), now=now, extra_names=[LOCALHOST]
        )
