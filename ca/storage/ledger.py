"""The issuance ledger: what was issued to whom, when, by which CA key, and what was refused."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Delete,
    Engine,
    Select,
    UnaryExpression,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
)

from ca.core.errors import InvalidRequest, Unavailable
from ca.core.lifecycle import AuthorityState
from ca.core.records import SERVER_REQUESTER, DeniedRecord, IssuedRecord
from ca.core.serials import normalise_serial
from ca.storage.errors import database_errors
from ca.storage.models import Authority, DeniedRequest, IssuedCert

PRUNE_CHUNK = 10_000
_ISSUED_FIELDS = [f.name for f in dataclasses.fields(IssuedRecord)]
_DENIED_FIELDS = [f.name for f in dataclasses.fields(DeniedRecord)]


@dataclass(frozen=True, slots=True)
class LedgerQuery:
    """Filters shared by ``audit certs`` and ``audit denied``; ``None`` means no filter.

    ``active_at`` keeps certificates valid at that instant; ``expiring_before`` keeps those
    whose NotAfter is before it (combine with ``active_at`` for "expiring within").
    """

    spiffe_id: str | None = None
    namespace: str | None = None
    service_account: str | None = None
    serial: str | None = None
    issuer_key_id: str | None = None
    active_at: datetime | None = None
    expiring_before: datetime | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100


class Ledger:
    """Reads and writes the ledger tables through one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, issued: Sequence[IssuedRecord], denied: Sequence[DeniedRecord] = ()) -> None:
        """Write all rows in one transaction; when this returns they are durable.

        Refuses (:class:`Unavailable`, nothing recorded) when an issuing authority was retired or
        revoked since this process loaded it: a replica that has not yet heard of the change
        must not hand out its certificates.
        """
        if not issued and not denied:
            return
        with database_errors("recording issuance"), self.engine.begin() as conn:
            if issued:
                conn.execute(insert(IssuedCert), [_row(r, _ISSUED_FIELDS) for r in issued])
                # After the insert, which holds the write lock on SQLite: the check sees every
                # committed lifecycle step, and a refusal rolls the rows back.
                _require_in_service(conn, {r.issuer_key_id for r in issued})
            if denied:
                conn.execute(insert(DeniedRequest), [_row(r, _DENIED_FIELDS) for r in denied])

    def certs(self, query: LedgerQuery) -> list[IssuedRecord]:
        """Issued certificates matching ``query``, newest first."""
        return [IssuedRecord(*row) for row in self._rows(certs_statement(query))]

    def cert(self, serial: str) -> IssuedRecord | None:
        """The certificate with ``serial`` (hex), if recorded."""
        found = self.certs(LedgerQuery(serial=serial, limit=1))
        return found[0] if found else None

    def require_cert(self, serial: str) -> IssuedRecord:
        """The certificate with ``serial`` (hex); :class:`InvalidRequest` when none is recorded
        (like an unknown authority id)."""
        found = self.cert(serial)
        if found is None:
            raise InvalidRequest(
                "unknown_serial",
                f"no certificate with serial {normalise_serial(serial)} in the ledger",
            )
        return found

    def denied(self, query: LedgerQuery) -> list[DeniedRecord]:
        """Refused requests matching ``query`` (serial, issuer and validity filters do not
        apply), newest first."""
        return [DeniedRecord(*row) for row in self._rows(denied_statement(query))]

    def count_issued(self) -> int:
        with database_errors("counting certificates"), self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(IssuedCert)).scalar_one())

    def active_counts_by_issuer(self, now: datetime) -> dict[str, int]:
        """How many unexpired certificates each CA key has issued."""
        return {key: int(count) for key, count in self._rows(active_counts_statement(now))}

    def in_use_count(self, issuer_key_ids: Sequence[str], now: datetime) -> int:
        """Unexpired certificates of ``issuer_key_ids`` still in use (see
        :func:`in_use_statement`)."""
        return sum(int(count) for _, count in self._rows(in_use_statement(issuer_key_ids, now)))

    def prune(self, expired_before: datetime, chunk: int = PRUNE_CHUNK) -> int:
        """Delete rows of certificates that expired before ``expired_before``; return how many.

        Rows go in transactions of at most ``chunk`` rows, so issuance (which needs the write
        lock on SQLite) is never held up for long.
        """
        statement = prune_statement(expired_before, chunk)
        total = 0
        while True:
            with database_errors("pruning the ledger"), self.engine.begin() as conn:
                deleted = int(conn.execute(statement).rowcount)
            total += deleted
            if deleted < chunk:
                return total

    def _rows(self, stmt: Select[Any]) -> list[Any]:
        with database_errors("reading the ledger"), self.engine.connect() as conn:
            return list(conn.execute(stmt).all())


# The (columns, time) indexes that serve newest-first queries filtered by those columns, in the
# order they are preferred when a query's filters cover several.
_CERT_ORDER_INDEXES = (
    ("spiffe_id",),
    ("namespace", "service_account"),
    ("namespace",),
    ("issuer_key_id",),
)
_DENIED_ORDER_INDEXES = (("spiffe_id",), ("namespace", "service_account"))


def certs_statement(query: LedgerQuery) -> Select[Any]:
    """The SELECT behind ``audit certs``."""
    table = IssuedCert.__table__
    t = table.c
    serial = normalise_serial(query.serial) if query.serial is not None else None
    conditions, lead = _equal_filters(
        table,
        {
            "spiffe_id": query.spiffe_id,
            "namespace": query.namespace,
            "service_account": query.service_account,
            "issuer_key_id": query.issuer_key_id,
            "serial": serial,
        },
        _CERT_ORDER_INDEXES,
    )
    conditions += _time_range(query, t.issued_at)
    if query.active_at is not None:
        conditions += [t.not_after > query.active_at, t.not_before <= query.active_at]
    if query.expiring_before is not None:
        conditions.append(t.not_after <= query.expiring_before)
    stmt = select(*[t[name] for name in _ISSUED_FIELDS]).where(*conditions)
    return stmt.order_by(*lead, t.issued_at.desc(), t.serial).limit(query.limit)


def denied_statement(query: LedgerQuery) -> Select[Any]:
    """The SELECT behind ``audit denied``."""
    table = DeniedRequest.__table__
    t = table.c
    conditions, lead = _equal_filters(
        table,
        {
            "spiffe_id": query.spiffe_id,
            "namespace": query.namespace,
            "service_account": query.service_account,
        },
        _DENIED_ORDER_INDEXES,
    )
    conditions += _time_range(query, t.denied_at)
    stmt = select(*[t[name] for name in _DENIED_FIELDS]).where(*conditions)
    return stmt.order_by(*lead, t.denied_at.desc(), t.id.desc()).limit(query.limit)


def active_counts_statement(now: datetime) -> Select[Any]:
    """Unexpired certificates per issuing key (``ca status``, ``root retire``)."""
    t = IssuedCert.__table__.c
    # Materialised first so that the planner ranges over the (not_after, issuer_key_id) index,
    # which spans only live certificates, instead of walking an index sorted by issuer.
    active = (
        select(t.issuer_key_id).where(t.not_after > now).cte("active").prefix_with("MATERIALIZED")
    )
    return select(active.c.issuer_key_id, func.count()).group_by(active.c.issuer_key_id)


def in_use_statement(issuer_key_ids: Sequence[str], now: datetime) -> Select[Any]:
    """Unexpired certificates issued by ``issuer_key_ids`` that are still in use, counted per
    SPIFFE ID, most first (``root retire``).

    A certificate is no longer in use once its pod (``pod_uid``) was issued a newer one by
    another authority: agents switch at once and never go back. A certificate without a pod
    (an admin's ``ca sign``, a token without pod claims) stays in use until it expires. CA
    servers' own certificates never count: a live server replaces its certificate the moment
    the CA changes, and a dead one serves nothing.
    """
    current = IssuedCert.__table__.alias("current")
    newer = IssuedCert.__table__.alias("newer")
    ids = list(issuer_key_ids)
    superseded = (
        select(newer.c.serial)
        .where(
            newer.c.pod_uid == current.c.pod_uid,
            newer.c.issued_at > current.c.issued_at,
            newer.c.issuer_key_id.not_in(ids),
        )
        .exists()
    )
    count = func.count()
    return (
        select(current.c.spiffe_id, count)
        .where(
            current.c.issuer_key_id.in_(ids),
            current.c.not_after > now,
            current.c.requester != SERVER_REQUESTER,
            or_(current.c.pod_uid.is_(None), ~superseded),
        )
        .group_by(current.c.spiffe_id)
        .order_by(count.desc(), current.c.spiffe_id)
    )


def prune_statement(expired_before: datetime, chunk: int) -> Delete:
    """Delete at most ``chunk`` rows of certificates that expired before ``expired_before``."""
    t = IssuedCert.__table__.c
    expired = select(t.serial).where(t.not_after < expired_before).limit(chunk)
    return delete(IssuedCert).where(t.serial.in_(expired.scalar_subquery()))


# Built once: this runs in every issuance transaction, where statement construction would cost
# more than the query itself.
_OUT_OF_SERVICE = (
    select(Authority.id, Authority.state)
    .where(Authority.id.in_(bindparam("ids", expanding=True)))
    .where(Authority.state != AuthorityState.ACTIVE.value)
)


def _require_in_service(conn: Connection, issuer_key_ids: set[str]) -> None:
    out = conn.execute(_OUT_OF_SERVICE, {"ids": sorted(issuer_key_ids)}).all()
    if out:
        raise Unavailable(
            "authority_out_of_service",
            f"the signing authority {out[0].id} is {out[0].state} now; nothing was issued, "
            "retry to get a certificate from the active authority",
        )


def _row(record: Any, fields: list[str]) -> dict[str, Any]:
    return {name: getattr(record, name) for name in fields}


def _equal_filters(
    table: Any, equal: dict[str, Any], order_indexes: Sequence[tuple[str, ...]]
) -> tuple[list[ColumnElement[bool]], list[UnaryExpression[Any]]]:
    """Equality filters (``None`` values are no filter), and the columns to lead ORDER BY with.

    The filters on the first of ``order_indexes`` that they cover lead ORDER BY (the same
    order: they are fixed), and the last of them is written as a closed range (``c >= v AND
    c <= v``: the same rows). Then only that (columns, time) index delivers the order. Written
    as ``c = v`` it would be a constant to PostgreSQL, which may instead walk the global time
    index backwards past every newer row: cheap by its estimate that values spread evenly over
    time, ruinous for values whose rows all lie in the past, such as a retired issuer or a
    deleted namespace. Only the last is a range because SQLite seeks on equalities and one
    range, in index order.
    """
    given = {name: value for name, value in equal.items() if value is not None}
    lead = next((index for index in order_indexes if all(c in given for c in index)), ())
    conditions: list[ColumnElement[bool]] = []
    for name, value in given.items():
        column = table.c[name]
        if lead and name == lead[-1]:
            conditions += [column >= value, column <= value]
        else:
            conditions.append(column == value)
    return conditions, [table.c[name].desc() for name in lead]


def _time_range(query: LedgerQuery, at: ColumnElement[Any]) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if query.since is not None:
        conditions.append(at >= query.since)
    if query.until is not None:
        conditions.append(at < query.until)
    return conditions
