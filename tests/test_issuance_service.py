"""The issuance service over a real, migrated database (SQLite and PostgreSQL): a certificate
leaves the CA only with its ledger row, every refusal is recorded, and a failed ledger write
withholds the certificates (fail closed)."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from spiffe import TrustDomain
from sqlalchemy import Engine, text

from ca.core.errors import InvalidRequest, MeshcaError, PermissionDenied, Unavailable
from ca.core.identity import WorkloadIdentity
from ca.core.issuer import IssuanceRequest, IssuedSvid
from ca.core.keys import KeyType, generate_private_key, spki_der
from ca.issuance import IssuanceService, utc_now
from ca.runtime import CaRuntime
from ca.settings import Settings
from ca.storage import migrate
from ca.storage.engine import make_engine
from ca.storage.ledger import Ledger, LedgerQuery
from tests.factories import TRUST_DOMAIN, WEB_ID, make_csr

REQUESTER = "system:serviceaccount:istio-system:istiod"
API_ID = "spiffe://cluster.local/ns/default/sa/api"
MAX_TTL = timedelta(days=90)
BACKDATE = timedelta(seconds=60)


@dataclass
class Ca:
    runtime: CaRuntime
    service: IssuanceService
    now: datetime
    signer_key_id: str

    @property
    def ledger(self) -> Ledger:
        return self.runtime.ledger

    @property
    def engine(self) -> Engine:
        return self.runtime.engine


@pytest.fixture
def ca(db_url: str, tmp_path: Path) -> Iterator[Ca]:
    runtime = CaRuntime(Settings(db_url=db_url, kek_file=tmp_path / "kek"))
    migrate.upgrade(runtime.engine)
    outcome = runtime.initialise(from_dir=None, exist_ok=False, actor="test")
    built = runtime.issuance_service()
    # The same issuer and ledger, with a clock the test knows (microseconds included).
    now = utc_now().replace(microsecond=654_321)
    yield Ca(
        runtime,
        IssuanceService(built.issuer, built.ledger, lambda: now),
        now,
        outcome.signing_key_id,
    )
    runtime.engine.dispose()


def web_pod() -> WorkloadIdentity:
    return WorkloadIdentity.for_service_account(
        TRUST_DOMAIN,
        "default",
        "web",
        pod_name="web-5d8f7c9b4-x2x7q",
        pod_uid="0f6c2a8e-8c7d-4c55-9d2c-2d0f8f4e9a11",
    )


def request(
    csr: bytes,
    caller: WorkloadIdentity | None = None,
    ttl: timedelta | None = timedelta(hours=2),
) -> IssuanceRequest:
    return IssuanceRequest(
        csr=csr,
        caller=caller or web_pod(),
        requested_ttl=ttl,
        requester=REQUESTER,
        request_id=uuid.uuid4().hex,
    )


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def uri_sans(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def assert_matches_certificate(svid: IssuedSvid, req: IssuanceRequest, ca: Ca) -> None:
    """The ledger row says exactly what was issued, to whom, by which key, when."""
    cert = svid.certificate
    row = ca.ledger.cert(format(cert.serial_number, "032x"))
    assert row is not None
    assert row == svid.record
    caller = req.caller
    assert row.serial == format(cert.serial_number, "032x")
    assert row.spiffe_id == str(caller.spiffe_id) == uri_sans(cert)[0]
    assert row.namespace == caller.namespace
    assert row.service_account == caller.service_account
    assert row.pod_name == caller.pod_name
    assert row.pod_uid == caller.pod_uid
    assert row.issuer_key_id == ca.signer_key_id
    assert row.not_before == cert.not_valid_before_utc
    assert row.not_after == cert.not_valid_after_utc
    assert row.cert_sha256 == hashlib.sha256(der(cert)).hexdigest()
    assert row.public_key_sha256 == hashlib.sha256(spki_der(cert.public_key())).hexdigest()
    expected_ttl = None if req.requested_ttl is None else int(req.requested_ttl.total_seconds())
    assert row.requested_ttl_seconds == expected_ttl
    assert row.requester == req.requester
    assert row.request_id == req.request_id
    assert row.issued_at == ca.now
    assert row.issued_at.utcoffset() == timedelta(0)


# --- issuing ------------------------------------------------------------------------------


def test_good_request_yields_an_svid_and_exactly_one_matching_row(ca: Ca, db_url: str) -> None:
    key = generate_private_key(KeyType.EC_P256)
    req = request(make_csr(key, uris=[WEB_ID]))

    svid = ca.service.issue(req)

    cert = svid.certificate
    assert uri_sans(cert) == [WEB_ID]
    assert spki_der(cert.public_key()) == spki_der(key.public_key())
    intermediate, root = svid.chain
    cert.verify_directly_issued_by(intermediate)
    assert der(intermediate) == der(ca.service.issuer.signer.certificate)
    assert [der(r) for r in ca.runtime.authorities.bundle().roots] == [der(root)]
    assert cert.not_valid_after_utc == (ca.now + timedelta(hours=2)).replace(microsecond=0)
    # Backdated for clock skew, but never before the signing CA's own NotBefore.
    earliest = max(ca.now - BACKDATE, intermediate.not_valid_before_utc)
    assert cert.not_valid_before_utc == earliest.replace(microsecond=0)

    assert ca.ledger.count_issued() == 1
    assert ca.ledger.certs(LedgerQuery()) == [svid.record]
    assert ca.ledger.denied(LedgerQuery()) == []
    assert_matches_certificate(svid, req, ca)

    # Durable and visible to any other process by the time the certificate is handed out.
    other = make_engine(db_url)
    try:
        assert Ledger(other).certs(LedgerQuery()) == [svid.record]
    finally:
        other.dispose()


def test_request_without_san_pod_or_ttl_gets_the_caller_id_and_default_ttl(ca: Ca) -> None:
    caller = WorkloadIdentity.from_spiffe_id(web_pod().spiffe_id)
    req = request(make_csr(), caller, ttl=None)

    svid = ca.service.issue(req)

    assert uri_sans(svid.certificate) == [WEB_ID]
    assert svid.certificate.not_valid_after_utc == (ca.now + timedelta(hours=24)).replace(
        microsecond=0
    )
    assert svid.record.pod_name is None
    assert svid.record.pod_uid is None
    assert svid.record.requested_ttl_seconds is None
    assert_matches_certificate(svid, req, ca)
    assert ca.ledger.count_issued() == 1


# --- refusals -----------------------------------------------------------------------------


def bad_signature_csr() -> bytes:
    csr = x509.load_pem_x509_csr(make_csr(uris=[WEB_ID]))
    data = bytearray(csr.public_bytes(serialization.Encoding.DER))
    data[-1] ^= 0x01  # last byte of the signature value
    return bytes(data)


def oversized_csr() -> bytes:
    csr = make_csr(uris=[WEB_ID])
    return csr + b"\n" * (64 * 1024 + 1 - len(csr))


REFUSALS = [
    pytest.param(
        lambda: request(bad_signature_csr()), InvalidRequest, "csr_bad_signature", id="bad-sig"
    ),
    pytest.param(
        lambda: request(make_csr(uris=["spiffe://cluster.local/ns/kube-system/sa/admin"])),
        PermissionDenied,
        "csr_identity_mismatch",
        id="wrong-san",
    ),
    pytest.param(
        lambda: request(make_csr(uris=[WEB_ID], dns=["web.default.svc.cluster.local"])),
        InvalidRequest,
        "csr_forbidden_san",
        id="extra-dns-san",
    ),
    pytest.param(
        lambda: request(make_csr(uris=[WEB_ID], ca=True)),
        InvalidRequest,
        "csr_requests_ca",
        id="ca-true",
    ),
    pytest.param(
        lambda: request(
            make_csr(rsa.generate_private_key(public_exponent=65537, key_size=1024), uris=[WEB_ID])
        ),
        InvalidRequest,
        "csr_weak_key",
        id="rsa-1024",
    ),
    pytest.param(
        lambda: request(oversized_csr()), InvalidRequest, "csr_too_large", id="csr-over-64KiB"
    ),
    pytest.param(
        lambda: request(make_csr(uris=[WEB_ID]), ttl=MAX_TTL + timedelta(seconds=1)),
        InvalidRequest,
        "ttl_too_long",
        id="ttl-over-max",
    ),
    pytest.param(
        lambda: request(b"-----BEGIN CERTIFICATE REQUEST-----\nbm9wZQ==\n"),
        InvalidRequest,
        "csr_malformed",
        id="malformed",
    ),
    pytest.param(
        lambda: request(
            make_csr(),
            WorkloadIdentity.for_service_account(TrustDomain("other.example"), "default", "web"),
        ),
        PermissionDenied,
        "foreign_trust_domain",
        id="foreign-trust-domain",
    ),
]


@pytest.mark.parametrize(("make_request", "error_type", "reason"), REFUSALS)
def test_refusal_raises_and_leaves_exactly_one_denied_row(
    ca: Ca, make_request: Callable[[], IssuanceRequest], error_type: type[MeshcaError], reason: str
) -> None:
    req = make_request()
    assert req.requested_ttl is not None

    with pytest.raises(error_type) as info:
        ca.service.issue(req)

    assert type(info.value) is error_type
    assert info.value.reason == reason
    assert ca.ledger.count_issued() == 0
    assert ca.ledger.certs(LedgerQuery()) == []
    (row,) = ca.ledger.denied(LedgerQuery())
    caller = req.caller
    assert row.reason == reason
    assert row.error_type == error_type.__name__
    assert row.message == info.value.message
    assert row.request_id == req.request_id
    assert row.requester == REQUESTER
    assert row.spiffe_id == str(caller.spiffe_id)
    assert row.namespace == caller.namespace
    assert row.service_account == caller.service_account
    assert row.pod_name == caller.pod_name
    assert row.pod_uid == caller.pod_uid
    assert row.requested_ttl_seconds == int(req.requested_ttl.total_seconds())
    assert row.denied_at == ca.now


def test_ttl_at_the_maximum_is_issued(ca: Ca) -> None:
    svid = ca.service.issue(request(make_csr(uris=[WEB_ID]), ttl=MAX_TTL))
    assert svid.record.requested_ttl_seconds == int(MAX_TTL.total_seconds())
    assert ca.ledger.count_issued() == 1
    assert ca.ledger.denied(LedgerQuery()) == []


# --- batches ------------------------------------------------------------------------------


def api_pod() -> WorkloadIdentity:
    return WorkloadIdentity.for_service_account(
        TRUST_DOMAIN, "default", "api", pod_name="api-0", pod_uid="uid-api-0"
    )


def mixed_batch() -> list[IssuanceRequest]:
    same_csr = make_csr(uris=[WEB_ID])
    return [
        request(same_csr),
        request(make_csr(uris=[WEB_ID], ca=True)),
        request(make_csr(), api_pod(), ttl=timedelta(hours=1)),
        request(make_csr(uris=[WEB_ID]), ttl=timedelta(days=365)),
        request(same_csr),  # the same CSR again gets its own certificate
    ]


def test_issue_batch_returns_results_in_request_order(ca: Ca) -> None:
    batch = mixed_batch()

    results = ca.service.issue_batch(batch)

    assert len(results) == len(batch)
    ok = [r for r in results if isinstance(r, IssuedSvid)]
    assert [type(r) for r in results] == [
        IssuedSvid,
        InvalidRequest,
        IssuedSvid,
        InvalidRequest,
        IssuedSvid,
    ]
    for req, result in zip(batch, results, strict=True):
        if isinstance(result, IssuedSvid):
            assert result.record.request_id == req.request_id
            assert uri_sans(result.certificate) == [str(req.caller.spiffe_id)]
            assert_matches_certificate(result, req, ca)
    assert [r.record.spiffe_id for r in ok] == [WEB_ID, API_ID, WEB_ID]
    assert [r.reason for r in results if isinstance(r, MeshcaError)] == [
        "csr_requests_ca",
        "ttl_too_long",
    ]
    assert len({svid.record.serial for svid in ok}) == 3

    issued = ca.ledger.certs(LedgerQuery())
    assert sorted(r.request_id for r in issued) == sorted(
        req.request_id
        for req, res in zip(batch, results, strict=True)
        if isinstance(res, IssuedSvid)
    )
    denied = ca.ledger.denied(LedgerQuery())
    assert sorted((d.request_id, d.reason) for d in denied) == sorted(
        [(batch[1].request_id, "csr_requests_ca"), (batch[3].request_id, "ttl_too_long")]
    )
    assert {d.denied_at for d in denied} == {ca.now}


def test_empty_batch_returns_nothing_and_writes_nothing(ca: Ca) -> None:
    assert ca.service.issue_batch([]) == []
    assert ca.ledger.count_issued() == 0
    assert ca.ledger.denied(LedgerQuery()) == []


def test_signed_batch_is_recorded_and_released_only_by_commit(ca: Ca) -> None:
    good = request(make_csr(uris=[WEB_ID]))
    bad = request(make_csr(uris=[WEB_ID], ca=True))

    batch = ca.service.sign([good, bad])

    assert count_rows(ca.engine, "issued_certs") == 0
    assert count_rows(ca.engine, "denied_requests") == 0

    results = ca.service.commit(batch)

    svid, refusal = results
    assert isinstance(svid, IssuedSvid)
    assert isinstance(refusal, InvalidRequest)
    assert ca.ledger.certs(LedgerQuery()) == [svid.record]
    assert_matches_certificate(svid, good, ca)
    assert [(d.request_id, d.reason) for d in ca.ledger.denied(LedgerQuery())] == [
        (bad.request_id, "csr_requests_ca")
    ]


# --- fail closed --------------------------------------------------------------------------


def break_inserts(engine: Engine, table: str) -> None:
    """Make every INSERT into ``table`` fail inside the database, as a full disk would."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(
                text(
                    f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} "
                    "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION meshca_test_fail() RETURNS trigger "
                    "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$"
                )
            )
            conn.execute(
                text(
                    f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION meshca_test_fail()"
                )
            )


def repair_inserts(engine: Engine, table: str) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text(f"DROP TRIGGER fail_{table}"))
        else:
            conn.execute(text(f"DROP TRIGGER fail_{table} ON {table}"))


def count_rows(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_failed_ledger_write_withholds_the_certificate(
    ca: Ca, caplog: pytest.LogCaptureFixture
) -> None:
    break_inserts(ca.engine, "issued_certs")
    returned: IssuedSvid | None = None

    with caplog.at_level(logging.ERROR, logger="ca.issuance"), pytest.raises(Unavailable) as info:
        returned = ca.service.issue(request(make_csr(uris=[WEB_ID])))

    assert returned is None
    assert info.value.reason == "database_unavailable"
    assert "withholding 1 certificate(s)" in caplog.text
    assert count_rows(ca.engine, "issued_certs") == 0
    assert count_rows(ca.engine, "denied_requests") == 0

    # Once the database recovers, the same service issues (and records) again.
    repair_inserts(ca.engine, "issued_certs")
    svid = ca.service.issue(request(make_csr(uris=[WEB_ID])))
    assert ca.ledger.certs(LedgerQuery()) == [svid.record]


def test_failed_refusal_write_withholds_the_whole_batch(ca: Ca) -> None:
    """Issued and denied rows of a batch share one transaction: a failure writing the refusals
    also takes back the certificates written before them, and none is returned."""
    break_inserts(ca.engine, "denied_requests")

    with pytest.raises(Unavailable):
        ca.service.issue_batch(mixed_batch())

    assert count_rows(ca.engine, "issued_certs") == 0
    assert count_rows(ca.engine, "denied_requests") == 0


def test_failed_write_of_refusals_only_still_reports_the_refusal(ca: Ca) -> None:
    break_inserts(ca.engine, "denied_requests")

    with pytest.raises(InvalidRequest) as info:
        ca.service.issue(request(make_csr(uris=[WEB_ID], ca=True)))

    assert info.value.reason == "csr_requests_ca"
    assert count_rows(ca.engine, "denied_requests") == 0
    assert count_rows(ca.engine, "issued_certs") == 0


def test_commit_of_a_signed_batch_fails_closed(ca: Ca) -> None:
    batch = ca.service.sign([request(make_csr(uris=[WEB_ID])), request(make_csr(), api_pod())])
    break_inserts(ca.engine, "issued_certs")

    with pytest.raises(Unavailable):
        ca.service.commit(batch)

    assert count_rows(ca.engine, "issued_certs") == 0


def test_ledger_table_gone_is_unavailable_and_returns_nothing(ca: Ca) -> None:
    with ca.engine.begin() as conn:
        conn.execute(text("DROP TABLE issued_certs"))

    with pytest.raises(Unavailable) as info:
        ca.service.issue_batch([request(make_csr(uris=[WEB_ID]))])

    assert info.value.reason == "database_unavailable"
    assert count_rows(ca.engine, "denied_requests") == 0
