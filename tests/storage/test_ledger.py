"""The issuance ledger on SQLite and PostgreSQL: atomic writes, every audit filter, exact
timestamps, pruning and counts."""

from __future__ import annotations

import dataclasses
import warnings
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import SADeprecationWarning

from ca.core.errors import Unavailable
from ca.core.records import DeniedRecord, IssuedRecord
from ca.storage.engine import make_engine
from ca.storage.ledger import Ledger, LedgerQuery

T0 = datetime(2030, 1, 2, 3, 4, 5, 123_456, tzinfo=UTC)
K1 = "1" * 32
K2 = "2" * 32
TD = "spiffe://cluster.local"
WEB = f"{TD}/ns/default/sa/web"
API = f"{TD}/ns/default/sa/api"
PROD_WEB = f"{TD}/ns/prod/sa/web"
CUSTOM = f"{TD}/custom/thing"
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def serial(n: int) -> str:
    return format(n, "032x")


S1, S2, S3, S4, S5 = (serial(0xA0 << 120 | n) for n in range(1, 6))


def issued(
    serial_hex: str,
    *,
    spiffe_id: str = WEB,
    namespace: str | None = "default",
    service_account: str | None = "web",
    issuer_key_id: str = K1,
    issued_at: datetime = T0,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> IssuedRecord:
    return IssuedRecord(
        serial=serial_hex,
        spiffe_id=spiffe_id,
        namespace=namespace,
        service_account=service_account,
        pod_name="web-5d8f7c9b4-x2x7q",
        pod_uid="0f6c2a8e-8c7d-4c55-9d2c-2d0f8f4e9a11",
        issuer_key_id=issuer_key_id,
        not_before=not_before if not_before is not None else issued_at - MINUTE,
        not_after=not_after if not_after is not None else issued_at + HOUR,
        cert_sha256=serial_hex * 2,
        public_key_sha256="f" * 64,
        requested_ttl_seconds=3600,
        requester="system:serviceaccount:istio-system:istiod",
        request_id=f"req-{serial_hex[-4:]}",
        issued_at=issued_at,
    )


def denied(
    request_id: str,
    *,
    spiffe_id: str | None = WEB,
    namespace: str | None = "default",
    service_account: str | None = "web",
    denied_at: datetime = T0,
    reason: str = "csr_requests_ca",
) -> DeniedRecord:
    return DeniedRecord(
        request_id=request_id,
        reason=reason,
        message="CSR asks for a CA certificate (CA=true)",
        error_type="InvalidRequest",
        requester="system:serviceaccount:istio-system:istiod",
        spiffe_id=spiffe_id,
        namespace=namespace,
        service_account=service_account,
        pod_name=None,
        pod_uid=None,
        requested_ttl_seconds=None,
        denied_at=denied_at,
    )


# Five certificates, issued 10 minutes apart, of different identities, issuers and lifetimes.
CERTS = {
    S1: issued(S1, issued_at=T0, not_after=T0 + HOUR),
    S2: issued(S2, issuer_key_id=K2, issued_at=T0 + 10 * MINUTE, not_after=T0 + timedelta(days=1)),
    S3: issued(
        S3,
        spiffe_id=API,
        service_account="api",
        issued_at=T0 + 20 * MINUTE,
        not_after=T0 + 2 * HOUR,
    ),
    S4: issued(
        S4,
        spiffe_id=PROD_WEB,
        namespace="prod",
        issued_at=T0 + 30 * MINUTE,
        not_after=T0 + 90 * MINUTE,
    ),
    S5: issued(
        S5,
        spiffe_id=CUSTOM,
        namespace=None,
        service_account=None,
        issuer_key_id=K2,
        issued_at=T0 + 40 * MINUTE,
        not_after=T0 + 50 * MINUTE,
    ),
}

DENIALS = {
    "d1": denied("d1", denied_at=T0),
    "d2": denied("d2", spiffe_id=API, service_account="api", denied_at=T0 + 10 * MINUTE),
    "d3": denied("d3", spiffe_id=PROD_WEB, namespace="prod", denied_at=T0 + 20 * MINUTE),
    "d4": denied(
        "d4",
        spiffe_id=None,
        namespace=None,
        service_account=None,
        reason="unauthenticated",
        denied_at=T0 + 30 * MINUTE,
    ),
    "d5": denied("d5", denied_at=T0 + 30 * MINUTE),  # same instant as d4, written after it
}


@pytest.fixture
def ledger(migrated_engine: Engine) -> Ledger:
    return Ledger(migrated_engine)


@pytest.fixture
def filled(ledger: Ledger) -> Ledger:
    ledger.record(list(CERTS.values()), [DENIALS[k] for k in ("d1", "d2", "d3", "d4")])
    ledger.record([], [DENIALS["d5"]])
    return ledger


def serials(records: list[IssuedRecord]) -> list[str]:
    return [r.serial for r in records]


def request_ids(records: list[DeniedRecord]) -> list[str]:
    return [r.request_id for r in records]


def assert_utc(value: datetime) -> None:
    assert value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)


# --- writing ------------------------------------------------------------------------------


def test_record_writes_issued_and_denied_rows_that_read_back_unchanged(ledger: Ledger) -> None:
    ledger.record([CERTS[S1], CERTS[S2]], [DENIALS["d1"], DENIALS["d4"]])

    assert ledger.certs(LedgerQuery()) == [CERTS[S2], CERTS[S1]]
    assert ledger.denied(LedgerQuery()) == [DENIALS["d4"], DENIALS["d1"]]
    assert ledger.count_issued() == 2


def test_rows_are_durable_for_other_connections(ledger: Ledger, db_url: str) -> None:
    ledger.record([CERTS[S1]], [DENIALS["d1"]])
    other = make_engine(db_url)
    try:
        with other.connect() as conn:
            assert conn.execute(text("SELECT serial FROM issued_certs")).scalars().all() == [S1]
            assert conn.execute(text("SELECT reason FROM denied_requests")).scalars().all() == [
                "csr_requests_ca"
            ]
    finally:
        other.dispose()


def test_recording_nothing_writes_nothing(ledger: Ledger) -> None:
    ledger.record([], [])
    assert ledger.count_issued() == 0
    assert ledger.denied(LedgerQuery()) == []


def test_duplicate_serial_is_unavailable_and_writes_nothing_of_the_batch(ledger: Ledger) -> None:
    ledger.record([CERTS[S1]])
    clash = dataclasses.replace(CERTS[S2], serial=S1, request_id="clash")

    with pytest.raises(Unavailable) as info:
        ledger.record([CERTS[S3], clash, CERTS[S4]], [DENIALS["d1"], DENIALS["d2"]])

    assert info.value.reason == "database_unavailable"
    # The whole call was one transaction: none of its other rows were kept ...
    assert serials(ledger.certs(LedgerQuery())) == [S1]
    assert ledger.denied(LedgerQuery()) == []
    assert ledger.count_issued() == 1
    # ... and the row already there was not overwritten.
    assert ledger.cert(S1) == CERTS[S1]


def test_duplicate_serial_within_one_batch_writes_nothing(ledger: Ledger) -> None:
    twin = dataclasses.replace(CERTS[S1], request_id="twin")
    with pytest.raises(Unavailable):
        ledger.record([CERTS[S1], twin], [DENIALS["d1"]])
    assert ledger.count_issued() == 0
    assert ledger.denied(LedgerQuery()) == []


def test_database_error_message_carries_no_sql_or_values(ledger: Ledger) -> None:
    ledger.record([CERTS[S1]])
    with pytest.raises(Unavailable) as info:
        ledger.record([CERTS[S1]])
    message = info.value.message
    assert message.startswith("database error while recording issuance: ")
    assert S1 not in message
    assert "INSERT" not in message.upper()
    assert CERTS[S1].requester not in message


def test_ledger_on_an_unmigrated_database_is_unavailable(engine: Engine) -> None:
    with pytest.raises(Unavailable) as info:
        Ledger(engine).record([CERTS[S1]])
    assert info.value.reason == "database_unavailable"
    with pytest.raises(Unavailable):
        Ledger(engine).certs(LedgerQuery())


# --- timestamps ---------------------------------------------------------------------------


def test_timestamps_come_back_utc_aware_and_exact_to_the_microsecond(ledger: Ledger) -> None:
    plus_0530 = timezone(timedelta(hours=5, minutes=30))
    minus_0800 = timezone(timedelta(hours=-8))
    issued_at = datetime(2031, 6, 30, 23, 59, 59, 999_999, tzinfo=plus_0530)
    record = issued(
        S1,
        issued_at=issued_at,
        not_before=datetime(2031, 6, 30, 10, 0, 0, 1, tzinfo=minus_0800),
        not_after=datetime(2031, 7, 1, 0, 0, 0, tzinfo=UTC),
    )
    refusal = denied("d1", denied_at=datetime(2031, 12, 31, 23, 59, 59, 500_001, tzinfo=minus_0800))
    ledger.record([record], [refusal])

    (back,) = ledger.certs(LedgerQuery())
    (back_denied,) = ledger.denied(LedgerQuery())
    for written, read in [
        (record.issued_at, back.issued_at),
        (record.not_before, back.not_before),
        (record.not_after, back.not_after),
        (refusal.denied_at, back_denied.denied_at),
    ]:
        assert_utc(read)
        assert read == written
        assert read.microsecond == written.astimezone(UTC).microsecond
        assert read.isoformat() == written.astimezone(UTC).isoformat()


# --- certs() filters ----------------------------------------------------------------------

CERT_CASES: list[tuple[str, LedgerQuery, list[str]]] = [
    ("everything, newest first", LedgerQuery(), [S5, S4, S3, S2, S1]),
    ("spiffe_id", LedgerQuery(spiffe_id=WEB), [S2, S1]),
    ("spiffe_id without rows", LedgerQuery(spiffe_id=f"{TD}/ns/none/sa/none"), []),
    ("namespace", LedgerQuery(namespace="default"), [S3, S2, S1]),
    ("service_account", LedgerQuery(service_account="web"), [S4, S2, S1]),
    (
        "namespace+service_account",
        LedgerQuery(namespace="default", service_account="web"),
        [S2, S1],
    ),
    ("serial", LedgerQuery(serial=S3), [S3]),
    ("serial upper-case", LedgerQuery(serial=S3.upper()), [S3]),
    ("issuer_key_id", LedgerQuery(issuer_key_id=K2), [S5, S2]),
    # valid at T0+90m: NotBefore <= t < NotAfter (S4 ends exactly then, so it is not active)
    ("active_at", LedgerQuery(active_at=T0 + 90 * MINUTE), [S3, S2]),
    ("active_at before any NotBefore", LedgerQuery(active_at=T0 - 2 * MINUTE), []),
    ("active_at at a NotBefore", LedgerQuery(active_at=T0 - MINUTE), [S1]),
    # NotAfter <= t: S4's NotAfter is exactly t
    ("expiring_before", LedgerQuery(expiring_before=T0 + 90 * MINUTE), [S5, S4, S1]),
    (
        "expiring within (active_at + expiring_before)",
        LedgerQuery(active_at=T0 + 35 * MINUTE, expiring_before=T0 + 90 * MINUTE),
        [S4, S1],
    ),
    ("since is inclusive", LedgerQuery(since=T0 + 10 * MINUTE), [S5, S4, S3, S2]),
    (
        "since is exact to the microsecond",
        LedgerQuery(since=T0 + 10 * MINUTE + timedelta(microseconds=1)),
        [S5, S4, S3],
    ),
    ("until is exclusive", LedgerQuery(until=T0 + 30 * MINUTE), [S3, S2, S1]),
    (
        "until is exact to the microsecond",
        LedgerQuery(until=T0 + 30 * MINUTE + timedelta(microseconds=1)),
        [S4, S3, S2, S1],
    ),
    ("since+until", LedgerQuery(since=T0 + 10 * MINUTE, until=T0 + 30 * MINUTE), [S3, S2]),
    (
        "since in another time zone",
        LedgerQuery(since=(T0 + 10 * MINUTE).astimezone(timezone(timedelta(hours=-7)))),
        [S5, S4, S3, S2],
    ),
    ("limit keeps the newest", LedgerQuery(limit=2), [S5, S4]),
    ("limit after filtering", LedgerQuery(namespace="default", limit=1), [S3]),
    (
        "filters combine",
        LedgerQuery(issuer_key_id=K1, service_account="web", active_at=T0 + 45 * MINUTE),
        [S4, S1],
    ),
]


@pytest.mark.parametrize(
    ("query", "expected"),
    [pytest.param(q, e, id=name) for name, q, e in CERT_CASES],
)
def test_certs_filters(filled: Ledger, query: LedgerQuery, expected: list[str]) -> None:
    found = filled.certs(query)
    assert serials(found) == expected
    assert found == [CERTS[s] for s in expected]


def test_certs_with_equal_issue_times_have_a_stable_order(ledger: Ledger) -> None:
    same = [issued(s, issued_at=T0) for s in (S3, S1, S2)]
    ledger.record(same)
    assert serials(ledger.certs(LedgerQuery())) == [S1, S2, S3]
    assert serials(ledger.certs(LedgerQuery(limit=2))) == [S1, S2]


def test_active_at_and_expiring_before_partition_started_certificates(filled: Ledger) -> None:
    """At any instant every started certificate is either still valid or has expired by then:
    ``--active`` and ``expiring_before`` never both claim, nor both miss, a certificate."""
    for at in (T0, T0 + 50 * MINUTE, T0 + HOUR, T0 + 90 * MINUTE, T0 + 3 * HOUR):
        started = {s for s, r in CERTS.items() if r.not_before <= at}
        active = set(serials(filled.certs(LedgerQuery(active_at=at))))
        expired = set(serials(filled.certs(LedgerQuery(expiring_before=at)))) & started
        assert active & expired == set(), at
        assert active | expired == started, at


# --- denied() filters ---------------------------------------------------------------------

DENIED_CASES: list[tuple[str, LedgerQuery, list[str]]] = [
    ("everything, newest first", LedgerQuery(), ["d5", "d4", "d3", "d2", "d1"]),
    ("spiffe_id", LedgerQuery(spiffe_id=WEB), ["d5", "d1"]),
    ("namespace", LedgerQuery(namespace="default"), ["d5", "d2", "d1"]),
    ("service_account", LedgerQuery(service_account="web"), ["d5", "d3", "d1"]),
    ("since is inclusive", LedgerQuery(since=T0 + 20 * MINUTE), ["d5", "d4", "d3"]),
    ("until is exclusive", LedgerQuery(until=T0 + 20 * MINUTE), ["d2", "d1"]),
    ("since+until", LedgerQuery(since=T0 + 10 * MINUTE, until=T0 + 30 * MINUTE), ["d3", "d2"]),
    ("limit keeps the newest", LedgerQuery(limit=1), ["d5"]),
    (
        "certificate-only filters do not apply",
        LedgerQuery(
            serial=S1,
            issuer_key_id=K1,
            active_at=T0 + 10 * HOUR,
            expiring_before=T0 - 10 * HOUR,
        ),
        ["d5", "d4", "d3", "d2", "d1"],
    ),
]


@pytest.mark.parametrize(
    ("query", "expected"),
    [pytest.param(q, e, id=name) for name, q, e in DENIED_CASES],
)
def test_denied_filters(filled: Ledger, query: LedgerQuery, expected: list[str]) -> None:
    found = filled.denied(query)
    assert request_ids(found) == expected
    assert found == [DENIALS[r] for r in expected]


# --- cert(serial) -------------------------------------------------------------------------


def test_cert_finds_a_serial_in_any_case_and_with_0x(filled: Ledger) -> None:
    assert filled.cert(S3) == CERTS[S3]
    assert filled.cert(S3.upper()) == CERTS[S3]
    assert filled.cert("0x" + S3) == CERTS[S3]
    assert filled.cert("0X" + S3.upper()) == CERTS[S3]


def test_cert_of_an_unknown_serial_is_none(filled: Ledger) -> None:
    assert filled.cert(serial(0xA0 << 120 | 99)) is None


LEADING_ZERO = serial(0x00AB << 112 | 0x1234)  # 1 certificate in 256 has a zero first byte


def test_cert_finds_a_serial_written_without_leading_zeros(ledger: Ledger) -> None:
    ledger.record([issued(LEADING_ZERO)])
    number = int(LEADING_ZERO, 16)
    assert ledger.cert(hex(number)) is not None  # '0xab...1234', 30 digits
    assert ledger.cert(format(number, "X")) is not None  # what openssl prints


def test_certs_serial_filter_accepts_0x_like_cert(filled: Ledger) -> None:
    assert serials(filled.certs(LedgerQuery(serial="0x" + S3))) == [S3]


# --- prune, counts ------------------------------------------------------------------------


def test_prune_deletes_exactly_the_rows_expired_before_the_cutoff(filled: Ledger) -> None:
    # NotAfter: S5 T0+50m, S1 T0+60m, S4 T0+90m (== cutoff, kept), S3 T0+2h, S2 T0+1d
    assert filled.prune(T0 + 90 * MINUTE) == 2
    assert serials(filled.certs(LedgerQuery())) == [S4, S3, S2]
    assert filled.count_issued() == 3
    assert len(filled.denied(LedgerQuery())) == len(DENIALS)  # refusals are not pruned
    assert filled.prune(T0 + 90 * MINUTE) == 0
    assert filled.prune(T0 + 90 * MINUTE + timedelta(microseconds=1)) == 1
    assert serials(filled.certs(LedgerQuery())) == [S3, S2]


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_prune_in_chunks_deletes_every_expired_row(filled: Ledger, chunk: int) -> None:
    # Three rows expired before T0+2h (S5, S1, S4); chunks of 1, 2 and 3 (== the count,
    # which needs one more empty round) all delete exactly those and report the total.
    assert filled.prune(T0 + 2 * 60 * MINUTE, chunk=chunk) == 3
    assert serials(filled.certs(LedgerQuery())) == [S3, S2]


def test_prune_of_an_empty_ledger_deletes_nothing(ledger: Ledger) -> None:
    assert ledger.prune(T0 + timedelta(days=365)) == 0


def test_active_counts_by_issuer(filled: Ledger) -> None:
    assert filled.active_counts_by_issuer(T0) == {K1: 3, K2: 2}
    # S4 (K1) ends exactly at T0+90m; S1 (K1) and S5 (K2) have ended before
    assert filled.active_counts_by_issuer(T0 + 90 * MINUTE) == {K1: 1, K2: 1}
    assert filled.active_counts_by_issuer(T0 + 3 * HOUR) == {K2: 1}
    assert filled.active_counts_by_issuer(T0 + timedelta(days=2)) == {}


def test_count_issued(ledger: Ledger) -> None:
    assert ledger.count_issued() == 0
    ledger.record([CERTS[S1], CERTS[S2]], [DENIALS["d1"]])
    assert ledger.count_issued() == 2
    ledger.record([CERTS[S3]])
    assert ledger.count_issued() == 3


def test_unfiltered_queries_use_no_deprecated_sqlalchemy_api(filled: Ledger) -> None:
    """Unfiltered ``audit certs``/``audit denied`` use no SQLAlchemy form that a future release
    removes (such as an empty ``and_()``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SADeprecationWarning)
        assert len(filled.certs(LedgerQuery())) == len(CERTS)
        assert len(filled.denied(LedgerQuery())) == len(DENIALS)
