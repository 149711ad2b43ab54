"""SQLAlchemy models. The Alembic migrations in ``ca/storage/migrations/`` create exactly these
tables (a test compares them)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every dialect (SQLite stores it naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# An auto-incrementing 64-bit key (SQLite only auto-increments INTEGER PRIMARY KEY).
AutoId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class CaState(Base):
    """The one row describing this CA: its trust domain, KEK id and trust bundle sequence."""

    __tablename__ = "ca_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trust_domain: Mapped[str] = mapped_column(String(255))
    kek_id: Mapped[str] = mapped_column(String(32))
    bundle_sequence: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ServerSetting(Base):
    """A setting as the serving processes use it, recorded by each ``meshca ca serve`` when it
    starts (the last one wins), so the admin CLI reports what the servers do, not its own
    default: the reissue window (``value`` in seconds)."""

    __tablename__ = "server_settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    reported_by: Mapped[str] = mapped_column(String(255))
    reported_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Authority(Base):
    """A CA certificate meshca trusts or signs with, and its encrypted private key if held."""

    __tablename__ = "authorities"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("authorities.id"))
    state: Mapped[str] = mapped_column(String(16), index=True)
    key_type: Mapped[str] = mapped_column(String(32))
    fingerprint_sha256: Mapped[str] = mapped_column(String(64))
    certificate_pem: Mapped[str] = mapped_column(Text)
    chain_pem: Mapped[str] = mapped_column(Text)
    encrypted_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    not_before: Mapped[datetime] = mapped_column(UtcDateTime)
    not_after: Mapped[datetime] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_by: Mapped[str] = mapped_column(String(255))
    # When this authority was last made the signer (the signer is the ACTIVE one with a key
    # activated last); NULL for authorities that never signed.
    activated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class CaEvent(Base):
    """One lifecycle step of the CA (init, prepare, activate, retire, revoke, automatic
    intermediate rotation), done or refused, with who asked and when."""

    __tablename__ = "ca_events"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    authority_id: Mapped[str | None] = mapped_column(String(32))
    role: Mapped[str | None] = mapped_column(String(16))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    bundle_sequence: Mapped[int] = mapped_column(BigInteger)
    detail: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_ca_events_at", "at"),)


class IssuedCert(Base):
    """One row per certificate the CA handed out."""

    __tablename__ = "issued_certs"

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    spiffe_id: Mapped[str] = mapped_column(String(2048))
    namespace: Mapped[str | None] = mapped_column(String(63))
    service_account: Mapped[str | None] = mapped_column(String(253))
    pod_name: Mapped[str | None] = mapped_column(String(253))
    pod_uid: Mapped[str | None] = mapped_column(String(64))
    issuer_key_id: Mapped[str] = mapped_column(String(32))
    not_before: Mapped[datetime] = mapped_column(UtcDateTime)
    not_after: Mapped[datetime] = mapped_column(UtcDateTime)
    cert_sha256: Mapped[str] = mapped_column(String(64))
    public_key_sha256: Mapped[str] = mapped_column(String(64))
    requested_ttl_seconds: Mapped[int | None] = mapped_column(BigInteger)
    requester: Mapped[str] = mapped_column(String(255))
    request_id: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_issued_certs_spiffe_id_issued_at", "spiffe_id", "issued_at"),
        Index("ix_issued_certs_ns_issued_at", "namespace", "issued_at"),
        Index("ix_issued_certs_ns_sa_issued_at", "namespace", "service_account", "issued_at"),
        Index("ix_issued_certs_issuer_issued_at", "issuer_key_id", "issued_at"),
        Index("ix_issued_certs_not_after_issuer", "not_after", "issuer_key_id"),
        Index("ix_issued_certs_issued_at", "issued_at"),
        # "Has this pod been issued a newer certificate?" (retiring an authority).
        Index("ix_issued_certs_pod_uid_issued_at", "pod_uid", "issued_at"),
    )


class DeniedRequest(Base):
    """One row per refused request, with the reason."""

    __tablename__ = "denied_requests"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    error_type: Mapped[str] = mapped_column(String(64))
    requester: Mapped[str] = mapped_column(String(255))
    spiffe_id: Mapped[str | None] = mapped_column(String(2048))
    namespace: Mapped[str | None] = mapped_column(String(63))
    service_account: Mapped[str | None] = mapped_column(String(253))
    pod_name: Mapped[str | None] = mapped_column(String(253))
    pod_uid: Mapped[str | None] = mapped_column(String(64))
    requested_ttl_seconds: Mapped[int | None] = mapped_column(BigInteger)
    denied_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_denied_requests_denied_at", "denied_at"),
        Index("ix_denied_requests_spiffe_id_denied_at", "spiffe_id", "denied_at"),
        Index("ix_denied_requests_ns_sa_denied_at", "namespace", "service_account", "denied_at"),
        Index("ix_denied_requests_request_id", "request_id"),
    )
