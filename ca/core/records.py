"""What the ledger records: one row per issued certificate and one per refused request."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

#: The requester the ledger names for a CA server's own TLS certificate. A server replaces it
#: the moment the CA changes, so it never holds an old authority in use.
SERVER_REQUESTER = "meshca-server"


@dataclass(frozen=True, slots=True)
class IssuedRecord:
    """An issued certificate, as auditors query it."""

    serial: str
    spiffe_id: str
    namespace: str | None
    service_account: str | None
    pod_name: str | None
    pod_uid: str | None
    issuer_key_id: str
    not_before: datetime
    not_after: datetime
    cert_sha256: str
    public_key_sha256: str
    requested_ttl_seconds: int | None
    requester: str
    request_id: str
    issued_at: datetime


@dataclass(frozen=True, slots=True)
class DeniedRecord:
    """A refused request: who asked, for what, and why it was refused."""

    request_id: str
    reason: str
    message: str
    error_type: str
    requester: str
    spiffe_id: str | None
    namespace: str | None
    service_account: str | None
    pod_name: str | None
    pod_uid: str | None
    requested_ttl_seconds: int | None
    denied_at: datetime


@dataclass(frozen=True, slots=True)
class CaEventRecord:
    """One lifecycle step of the CA, done or refused: who, when, which authority, from which
    state to which, and the bundle sequence it produced (or found, when refused)."""

    id: int
    at: datetime
    actor: str
    action: str
    outcome: str
    authority_id: str | None
    role: str | None
    from_state: str | None
    to_state: str | None
    bundle_sequence: int
    detail: str


def ttl_seconds(ttl: timedelta | None) -> int | None:
    """A requested TTL as whole seconds for the ledger (``None`` when none was asked for)."""
    return None if ttl is None else int(ttl.total_seconds())
