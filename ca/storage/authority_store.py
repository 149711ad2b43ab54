"""The CA's own state in the database: trust domain, authorities (with encrypted keys), and the
trust bundle built from them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from spiffe import TrustDomain
from sqlalchemy import Engine, Select, case, insert, inspect, select, update
from sqlalchemy.exc import IntegrityError

from ca.core.authority import SigningAuthority
from ca.core.bundle import TrustBundle
from ca.core.errors import ConfigurationError
from ca.core.kek import KeyEncryptionKey
from ca.core.keys import key_id, key_type_of, private_key_from_der, private_key_to_der
from ca.core.lifecycle import AuthorityRole, AuthorityState
from ca.storage.errors import database_errors
from ca.storage.models import Authority, CaState

_CA_STATE_ID = 1


def _pem(certs: Sequence[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass(frozen=True, slots=True)
class CaIdentity:
    """What the database says about this CA as a whole."""

    trust_domain: TrustDomain
    kek_id: str
    bundle_sequence: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewAuthority:
    """An authority to store: its certificate, the chain above it, and its key if held."""

    role: AuthorityRole
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    private_key: CertificateIssuerPrivateKeyTypes | None = field(repr=False)
    parent_id: str | None = None

    @property
    def id(self) -> str:
        return key_id(self.certificate.public_key())  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class AuthorityInfo:
    """A stored authority, without its key."""

    id: str
    role: AuthorityRole
    state: AuthorityState
    parent_id: str | None
    key_type: str
    fingerprint_sha256: str
    subject: str
    not_before: datetime
    not_after: datetime
    has_key: bool
    created_at: datetime
    created_by: str


class AuthorityStore:
    """CA state and authorities in the database; keys are encrypted under the KEK."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def identity(self) -> CaIdentity | None:
        """The CA's identity, or ``None`` when ``ca init`` has not run on this database."""
        with database_errors("reading the CA state"), self.engine.connect() as conn:
            if not inspect(conn).has_table(CaState.__tablename__):
                return None
            row = conn.execute(select(CaState).where(CaState.id == _CA_STATE_ID)).first()
        if row is None:
            return None
        return CaIdentity(
            TrustDomain(row.trust_domain), row.kek_id, row.bundle_sequence, row.created_at
        )

    def bundle_sequence(self) -> int | None:
        """The bundle sequence alone (a cheap query servers poll), ``None`` if uninitialised."""
        with database_errors("reading the bundle sequence"), self.engine.connect() as conn:
            return conn.execute(
                select(CaState.bundle_sequence).where(CaState.id == _CA_STATE_ID)
            ).scalar()

    def require_identity(self) -> CaIdentity:
        ident = self.identity()
        if ident is None:
            raise ConfigurationError(
                "not_initialised",
                "the CA is not initialised in this database; run `meshca ca init`",
            )
        return ident

    def initialise(
        self,
        trust_domain: TrustDomain,
        kek: KeyEncryptionKey,
        authorities: Sequence[NewAuthority],
        *,
        actor: str,
        now: datetime,
    ) -> None:
        """Store a new CA; refuse if this database already holds one."""
        state_row = {
            "id": _CA_STATE_ID,
            "trust_domain": trust_domain.name,
            "kek_id": kek.id,
            "bundle_sequence": 1,
            "created_at": now,
            "updated_at": now,
        }
        with database_errors("initialising the CA"):
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(CaState), [state_row])
                    conn.execute(
                        insert(Authority),
                        [_authority_row(new, kek, actor, now) for new in authorities],
                    )
            except IntegrityError as exc:
                raise ConfigurationError(
                    "already_initialised", "the CA is already initialised in this database"
                ) from exc

    def prepare(
        self,
        kek: KeyEncryptionKey,
        authorities: Sequence[NewAuthority],
        *,
        actor: str,
        now: datetime,
    ) -> int:
        """Add ``authorities`` in state PREPARED: trusted (in the bundle) but not signing yet.
        Bumps the bundle sequence in the same transaction; returns the new sequence."""
        ident = self.require_identity()
        if kek.id != ident.kek_id:
            raise ConfigurationError(
                "kek_mismatch", f"the CA keys are encrypted under KEK {ident.kek_id}, not {kek.id}"
            )
        rows = [
            {**_authority_row(new, kek, actor, now), "state": AuthorityState.PREPARED.value}
            for new in authorities
        ]
        with database_errors("preparing a CA authority"), self.engine.begin() as conn:
            conn.execute(insert(Authority), rows)
            return int(
                conn.execute(
                    update(CaState)
                    .where(CaState.id == _CA_STATE_ID)
                    .values(bundle_sequence=CaState.bundle_sequence + 1, updated_at=now)
                    .returning(CaState.bundle_sequence)
                ).scalar_one()
            )

    def trusted_issuers(self) -> list[x509.Certificate]:
        """Every CA certificate (root or intermediate) in a trusted state: what a client
        certificate of this CA may be signed by."""
        trusted = [s.value for s in AuthorityState if s.trusted]
        with database_errors("reading CA authorities"), self.engine.connect() as conn:
            pems = conn.execute(
                select(Authority.certificate_pem).where(Authority.state.in_(trusted))
            ).scalars()
            return [x509.load_pem_x509_certificate(pem.encode()) for pem in pems]

    def authorities(self) -> list[AuthorityInfo]:
        """Every stored authority, roots first, oldest first."""
        with database_errors("reading CA authorities"), self.engine.connect() as conn:
            rows = conn.execute(
                select(Authority).order_by(Authority.created_at, Authority.role.desc())
            ).all()
        infos = []
        for row in rows:
            cert = x509.load_pem_x509_certificate(row.certificate_pem.encode())
            infos.append(
                AuthorityInfo(
                    id=row.id,
                    role=AuthorityRole(row.role),
                    state=AuthorityState(row.state),
                    parent_id=row.parent_id,
                    key_type=row.key_type,
                    fingerprint_sha256=row.fingerprint_sha256,
                    subject=cert.subject.rfc4514_string(),
                    not_before=row.not_before,
                    not_after=row.not_after,
                    has_key=row.encrypted_key is not None,
                    created_at=row.created_at,
                    created_by=row.created_by,
                )
            )
        return infos

    def signing_authority(self, kek: KeyEncryptionKey) -> SigningAuthority:
        """The active authority that signs workload certificates, with its key decrypted.

        An active intermediate is preferred; a CA plugged in as a bare root signs with the root.
        """
        ident = self.require_identity()
        if kek.id != ident.kek_id:
            raise ConfigurationError(
                "kek_mismatch",
                f"the CA keys in this database are encrypted under KEK {ident.kek_id}, "
                f"but the KEK given has id {kek.id}",
            )
        with database_errors("loading the signing key"), self.engine.connect() as conn:
            row = conn.execute(_signer(select(Authority))).first()
        if row is None:
            raise ConfigurationError("no_signing_key", "no active CA authority holds a signing key")
        der = kek.decrypt(row.encrypted_key, row.id.encode())
        return SigningAuthority(
            x509.load_pem_x509_certificate(row.certificate_pem.encode()),
            private_key_from_der(der),
            tuple(x509.load_pem_x509_certificates(row.chain_pem.encode())) if row.chain_pem else (),
        )

    def bundle(self) -> TrustBundle:
        """Every trusted root (prepared or active) and the bundle sequence."""
        ident = self.require_identity()
        trusted = [s.value for s in AuthorityState if s.trusted]
        with database_errors("reading the trust bundle"), self.engine.connect() as conn:
            rows = conn.execute(
                select(Authority.certificate_pem, Authority.state, Authority.id)
                .where(Authority.role == AuthorityRole.ROOT.value)
                .where(Authority.state.in_(trusted))
                .order_by(Authority.created_at)
            ).all()
            signing_key_id = conn.execute(_signer(select(Authority.id))).scalar()
        roots = tuple(x509.load_pem_x509_certificate(r.certificate_pem.encode()) for r in rows)
        return TrustBundle(ident.trust_domain, ident.bundle_sequence, roots, signing_key_id)


def _signer(query: Select[Any]) -> Select[Any]:
    """Narrow ``query`` to the authority that signs workload certificates: active, holding a
    key, an intermediate before a root, the newest first."""
    intermediate_first = case((Authority.role == AuthorityRole.INTERMEDIATE.value, 0), else_=1)
    return (
        query.where(Authority.state == AuthorityState.ACTIVE.value)
        .where(Authority.encrypted_key.is_not(None))
        .order_by(intermediate_first, Authority.created_at.desc())
        .limit(1)
    )


def _authority_row(
    new: NewAuthority, kek: KeyEncryptionKey, actor: str, now: datetime
) -> dict[str, object]:
    public_key = new.certificate.public_key()
    key_type = key_type_of(public_key)
    encrypted = (
        kek.encrypt(private_key_to_der(new.private_key), new.id.encode())
        if new.private_key is not None
        else None
    )
    return {
        "id": new.id,
        "role": new.role.value,
        "parent_id": new.parent_id,
        "state": AuthorityState.ACTIVE.value,
        "key_type": key_type.value if key_type else "other",
        "fingerprint_sha256": _fingerprint(new.certificate),
        "certificate_pem": _pem([new.certificate]),
        "chain_pem": _pem(new.chain),
        "encrypted_key": encrypted,
        "not_before": new.certificate.not_valid_before_utc,
        "not_after": new.certificate.not_valid_after_utc,
        "created_at": now,
        "created_by": actor,
        "updated_at": now,
        "updated_by": actor,
    }
