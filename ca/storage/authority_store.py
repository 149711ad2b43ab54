"""The CA's own state in the database: trust domain, authorities (with encrypted keys), and the
trust bundle built from them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from spiffe import TrustDomain
from sqlalchemy import Connection, Engine, Row, func, insert, inspect, select, update
from sqlalchemy.exc import IntegrityError

from ca.core.authority import SigningAuthority
from ca.core.bundle import TrustBundle
from ca.core.errors import (
    ConfigurationError,
    FailedPrecondition,
    InternalError,
    InvalidRequest,
    MeshcaError,
)
from ca.core.kek import KeyEncryptionKey
from ca.core.keys import key_id, key_type_of, private_key_from_der, private_key_to_der
from ca.core.lifecycle import (
    AuthorityRole,
    AuthorityState,
    AuthorityView,
    IntermediatePolicy,
    Lifecycle,
    LifecycleAction,
    Plan,
    PrepareIntermediate,
    Transition,
)
from ca.core.records import CaEventRecord
from ca.storage.change_feed import notify_change
from ca.storage.errors import database_errors, not_initialised
from ca.storage.ledger import in_use_statement
from ca.storage.models import Authority, CaEvent, CaState


def utc_now() -> datetime:
    return datetime.now(UTC)


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
    updated_at: datetime
    updated_by: str
    activated_at: datetime | None


class AuthorityStore:
    """CA state and authorities in the database; keys are encrypted under the KEK."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def identity(self) -> CaIdentity | None:
        """The CA's identity, or ``None`` when ``ca init`` has not run on this database."""
        with database_errors("reading the CA state"), self.engine.connect() as conn:
            return _identity(conn)

    def bundle_sequence(self) -> int | None:
        """The bundle sequence alone (a cheap query servers poll), ``None`` if uninitialised."""
        with database_errors("reading the bundle sequence"), self.engine.connect() as conn:
            return conn.execute(
                select(CaState.bundle_sequence).where(CaState.id == _CA_STATE_ID)
            ).scalar()

    def require_identity(self) -> CaIdentity:
        ident = self.identity()
        if ident is None:
            raise not_initialised()
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
                        [
                            {**_authority_row(new, kek, actor, now), "activated_at": now}
                            for new in authorities
                        ],
                    )
                    conn.execute(
                        insert(CaEvent),
                        [
                            {
                                "at": now,
                                "actor": actor,
                                "action": LifecycleAction.INIT.value,
                                "outcome": "done",
                                "authority_id": new.id,
                                "role": new.role.value,
                                "from_state": None,
                                "to_state": AuthorityState.ACTIVE.value,
                                "bundle_sequence": 1,
                                "detail": "imported" if new.private_key is None else "",
                            }
                            for new in authorities
                        ],
                    )
            except IntegrityError as exc:
                raise ConfigurationError(
                    "already_initialised", "the CA is already initialised in this database"
                ) from exc

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
                    updated_at=row.updated_at,
                    updated_by=row.updated_by,
                    activated_at=row.activated_at,
                )
            )
        return infos

    def signing_authority(self, kek: KeyEncryptionKey) -> SigningAuthority:
        """The authority that signs workload certificates (see :class:`Lifecycle`), with its
        key decrypted."""
        ident = self.require_identity()
        _require_kek(ident, kek)
        with database_errors("loading the signing key"), self.engine.connect() as conn:
            signer = Lifecycle(_views(conn)).signer()
            if signer is None:
                raise ConfigurationError(
                    "no_signing_key", "no active CA authority holds a signing key"
                )
            return _load_signing(conn, signer.id, kek)

    def bundle(self) -> TrustBundle:
        """Every trusted (prepared or active), unexpired root, the signer, the revoked
        authorities and the bundle sequence, read together."""
        trusted = [s.value for s in AuthorityState if s.trusted]
        now = utc_now()
        with database_errors("reading the trust bundle"), self.engine.connect() as conn:
            ident = _identity(conn)
            if ident is None:
                raise not_initialised()
            rows = conn.execute(
                select(Authority.certificate_pem)
                .where(Authority.role == AuthorityRole.ROOT.value)
                .where(Authority.state.in_(trusted))
                .where(Authority.not_after > now)
                .order_by(Authority.created_at)
            ).all()
            lifecycle = Lifecycle(_views(conn))
        signer = lifecycle.signer()
        roots = tuple(x509.load_pem_x509_certificate(r.certificate_pem.encode()) for r in rows)
        return TrustBundle(
            ident.trust_domain,
            ident.bundle_sequence,
            roots,
            signer.id if signer is not None else None,
            tuple(lifecycle.revoked_key_ids(now)),
        )

    def lifecycle(self) -> Lifecycle:
        """The lifecycle rules over the authorities as stored now (read only)."""
        with database_errors("reading CA authorities"), self.engine.connect() as conn:
            return Lifecycle(_views(conn))

    # --- lifecycle steps: each one transaction, serialized, audited, announced -------------

    def prepare(
        self,
        kek: KeyEncryptionKey,
        authorities: Sequence[NewAuthority],
        *,
        actor: str,
        now: datetime,
    ) -> StepOutcome:
        """Add ``authorities`` in state PREPARED: trusted (in the bundle) but not signing yet."""
        _require_kek(self.require_identity(), kek)

        def decide(lifecycle: Lifecycle, _conn: Connection) -> Step:
            # Importing an intermediate under a root already stored adds the intermediate only;
            # material of a retired authority trusts it again (the undo of a retirement).
            known = {a.id: a for a in lifecycle.authorities}
            revoked = [n.id for n in authorities if _state(known, n.id) is AuthorityState.REVOKED]
            if revoked:
                raise FailedPrecondition(
                    "authority_revoked",
                    f"authority {revoked[0]} was revoked; a revoked authority is never trusted "
                    "again",
                )
            fresh = tuple(new for new in authorities if new.id not in known)
            reinstated = tuple(
                Transition(known[n.id], AuthorityState.PREPARED)
                for n in authorities
                if _state(known, n.id) is AuthorityState.RETIRED
            )
            if not fresh and not reinstated:
                raise FailedPrecondition(
                    "already_stored", "every authority given is already stored in this CA"
                )
            return Step(LifecycleAction.PREPARE, reinstated, fresh)

        outcome = self._step(LifecycleAction.PREPARE, None, decide, actor=actor, now=now, kek=kek)
        assert outcome is not None
        return outcome

    def activate(self, authority: str | None, *, actor: str, now: datetime) -> StepOutcome | None:
        """Make ``authority`` (default: the one prepared root) sign from now on; ``None`` when
        it already does."""
        return self._step(
            LifecycleAction.ACTIVATE,
            authority,
            lambda lifecycle, _conn: Step.of(lifecycle.plan_activate(authority, now)),
            actor=actor,
            now=now,
        )

    def retire(
        self, authority: str | None, *, actor: str, now: datetime, force: bool = False
    ) -> StepOutcome | None:
        """Take ``authority`` (default: the one active root that no longer signs) and the
        authorities under it out of the bundle; refused while certificates they issued are
        still in use, unless ``force``."""

        def decide(lifecycle: Lifecycle, conn: Connection) -> Step:
            plan = lifecycle.plan_retire(authority, now)
            holders = [
                (spiffe_id, int(count))
                for spiffe_id, count in conn.execute(in_use_statement(plan.key_ids, now)).all()
            ]
            if holders and not force:
                raise FailedPrecondition("authority_in_use", in_use_message(plan, holders))
            detail = (
                f"forced with {sum(c for _, c in holders)} certificate(s) in use" if holders else ""
            )
            return Step.of(plan, detail)

        return self._step(LifecycleAction.RETIRE, authority, decide, actor=actor, now=now)

    def revoke(self, authority: str, *, actor: str, now: datetime) -> StepOutcome | None:
        """Distrust ``authority`` and the authorities under it at once."""
        return self._step(
            LifecycleAction.REVOKE,
            authority,
            lambda lifecycle, _conn: Step.of(lifecycle.plan_revoke(authority, now)),
            actor=actor,
            now=now,
        )

    def reinstate(self, authority: str, *, actor: str, now: datetime) -> StepOutcome | None:
        """Trust a retired authority again (PREPARED): the undo of ``retire``."""
        return self._step(
            LifecycleAction.REINSTATE,
            authority,
            lambda lifecycle, _conn: Step.of(lifecycle.plan_reinstate(authority, now)),
            actor=actor,
            now=now,
        )

    def rotate_intermediate(
        self,
        kek: KeyEncryptionKey,
        policy: IntermediatePolicy,
        build: Callable[[SigningAuthority], SigningAuthority],
        *,
        actor: str,
        now: datetime,
    ) -> StepOutcome | None:
        """The automatic intermediate rotation's next step, if one is due: retire expired
        intermediates, prepare the next one (``build`` makes it under the root), or activate
        it. Cheap (read only) when nothing is due; replicas racing do the step once."""
        lifecycle = self.lifecycle()
        if (
            lifecycle.plan_retire_expired(now) is None
            and lifecycle.plan_intermediate_rotation(now, policy) is None
        ):
            return None

        def decide(lifecycle: Lifecycle, conn: Connection) -> Step | None:
            expired = lifecycle.plan_retire_expired(now)
            if expired is not None:
                return Step.of(expired)
            due = lifecycle.plan_intermediate_rotation(now, policy)
            if isinstance(due, PrepareIntermediate):
                root = _load_signing(conn, due.root.id, kek)
                made = build(root)
                return Step(
                    LifecycleAction.PREPARE_INTERMEDIATE,
                    new=(
                        NewAuthority(
                            AuthorityRole.INTERMEDIATE,
                            made.certificate,
                            made.chain,
                            made.private_key,
                            due.root.id,
                        ),
                    ),
                    detail=f"replaces {due.replaces.id}",
                )
            return Step.of(due) if due is not None else None

        return self._step(
            LifecycleAction.ACTIVATE_INTERMEDIATE, None, decide, actor=actor, now=now, kek=kek
        )

    def events(self, query: EventQuery) -> list[CaEventRecord]:
        """Lifecycle events matching ``query``, newest first."""
        stmt = select(CaEvent).order_by(CaEvent.id.desc()).limit(query.limit)
        if query.since is not None:
            stmt = stmt.where(CaEvent.at >= query.since)
        if query.until is not None:
            stmt = stmt.where(CaEvent.at < query.until)
        if query.action is not None:
            stmt = stmt.where(CaEvent.action == query.action)
        if query.authority_id is not None:
            stmt = stmt.where(CaEvent.authority_id.startswith(query.authority_id))
        with database_errors("reading CA events"), self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [_event_record(row) for row in rows]

    def event_counts(self) -> dict[tuple[str, str], int]:
        """How many lifecycle events of each (action, outcome) the database holds."""
        with database_errors("counting CA events"), self.engine.connect() as conn:
            rows = conn.execute(
                select(CaEvent.action, CaEvent.outcome, func.count()).group_by(
                    CaEvent.action, CaEvent.outcome
                )
            ).all()
        return {(action, outcome): int(count) for action, outcome, count in rows}

    def _step(
        self,
        action: LifecycleAction,
        target: str | None,
        decide: Callable[[Lifecycle, Connection], Step | None],
        *,
        actor: str,
        now: datetime,
        kek: KeyEncryptionKey | None = None,
    ) -> StepOutcome | None:
        """Run one lifecycle step in one transaction.

        The transaction first bumps the bundle sequence: that takes the write lock (PostgreSQL:
        the ``ca_state`` row; SQLite: the database), so concurrent steps from other replicas or
        admins wait here and then decide on what the previous one committed. A step that
        changes nothing is rolled back; a refused one is recorded as such and re-raised.
        """
        try:
            with database_errors(f"{action}: changing the CA"), self.engine.connect() as conn:
                with conn.begin() as transaction:
                    sequence = _bump_sequence(conn, now)
                    step = decide(Lifecycle(_views(conn)), conn)
                    if step is None or not step.changes_anything:
                        transaction.rollback()
                        return None
                    outcome = _apply(conn, step, sequence, kek, actor=actor, now=now)
                    notify_change(conn, sequence)
                return outcome
        except (FailedPrecondition, InvalidRequest) as refusal:
            self._record_refusal(action, target, refusal, actor=actor, now=now)
            raise

    def _record_refusal(
        self,
        action: LifecycleAction,
        target: str | None,
        refusal: MeshcaError,
        *,
        actor: str,
        now: datetime,
    ) -> None:
        with database_errors("recording a refused CA change"), self.engine.begin() as conn:
            sequence = conn.execute(
                select(CaState.bundle_sequence).where(CaState.id == _CA_STATE_ID)
            ).scalar_one()
            notify_change(conn, sequence)  # replicas refresh their lifecycle metrics
            if target is not None:
                target = _resolved(Lifecycle(_views(conn)), target)
            conn.execute(
                insert(CaEvent),
                [
                    {
                        "at": now,
                        "actor": actor,
                        "action": action.value,
                        "outcome": "refused",
                        "authority_id": target,
                        "bundle_sequence": sequence,
                        "detail": f"{refusal.reason}: {refusal.message}",
                    }
                ],
            )


@dataclass(frozen=True, slots=True)
class Step:
    """What one lifecycle step writes: state changes and new (PREPARED) authorities."""

    action: LifecycleAction
    transitions: tuple[Transition, ...] = ()
    new: tuple[NewAuthority, ...] = ()
    detail: str = ""

    @classmethod
    def of(cls, plan: Plan, detail: str = "") -> Step:
        return cls(plan.action, plan.transitions, (), detail)

    @property
    def changes_anything(self) -> bool:
        return bool(self.new) or any(t.changes_anything for t in self.transitions)


@dataclass(frozen=True, slots=True)
class StepChange:
    """One authority's change in a step."""

    authority_id: str
    role: AuthorityRole
    from_state: AuthorityState | None
    to_state: AuthorityState
    signs: bool


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What a lifecycle step did, and the bundle sequence it produced."""

    action: LifecycleAction
    sequence: int
    changes: tuple[StepChange, ...]


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Filters of ``audit events``; ``None`` means no filter."""

    action: str | None = None
    authority_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100


def in_use_message(plan: Plan, holders: Sequence[tuple[str, int]]) -> str:
    """Why a retirement was refused: how many certificates, held by which identities."""
    total = sum(count for _, count in holders)
    shown = ", ".join(f"{spiffe_id} ({count})" for spiffe_id, count in holders[:10])
    more = f" and {len(holders) - 10} more" if len(holders) > 10 else ""
    return (
        f"cannot retire {plan.target.id}: {total} unexpired certificate(s) it issued are still "
        f"in use by {len(holders)} identit{'y' if len(holders) == 1 else 'ies'}: {shown}{more}. "
        "Wait until their agents re-issue from the active authority (meshca root status), "
        "or retire with --force"
    )


def _apply(
    conn: Connection,
    step: Step,
    sequence: int,
    kek: KeyEncryptionKey | None,
    *,
    actor: str,
    now: datetime,
) -> StepOutcome:
    changes: list[StepChange] = []
    # The activation committed last signs (Lifecycle.signer orders by activated_at): never
    # record one older than an activation already committed, whatever the caller's clock says.
    latest = conn.execute(select(func.max(Authority.activated_at))).scalar()
    activated_at = now if latest is None or now > latest else latest + timedelta(microseconds=1)
    if step.new:
        if kek is None:
            raise InternalError("kek_missing", "storing new authorities needs the KEK")
        conn.execute(
            insert(Authority),
            [
                {**_authority_row(new, kek, actor, now), "state": AuthorityState.PREPARED.value}
                for new in step.new
            ],
        )
        changes += [
            StepChange(new.id, new.role, None, AuthorityState.PREPARED, False) for new in step.new
        ]
    for transition in step.transitions:
        values: dict[str, object] = {
            "state": transition.to_state.value,
            "updated_at": now,
            "updated_by": actor,
        }
        if transition.signs:
            values["activated_at"] = activated_at
        conn.execute(
            update(Authority).where(Authority.id == transition.authority.id).values(**values)
        )
        changes.append(
            StepChange(
                transition.authority.id,
                transition.authority.role,
                transition.authority.state,
                transition.to_state,
                transition.signs,
            )
        )
    conn.execute(
        insert(CaEvent),
        [
            {
                "at": now,
                "actor": actor,
                "action": step.action.value,
                "outcome": "done",
                "authority_id": change.authority_id,
                "role": change.role.value,
                "from_state": change.from_state.value if change.from_state else None,
                "to_state": change.to_state.value,
                "bundle_sequence": sequence,
                "detail": _detail(step.detail, change.signs),
            }
            for change in changes
        ],
    )
    return StepOutcome(step.action, sequence, tuple(changes))


def _resolved(lifecycle: Lifecycle, id_or_prefix: str) -> str:
    """The full id ``id_or_prefix`` names, or the text itself (cut to an id's length) when it
    names none, for the audit record of a refusal."""
    try:
        return lifecycle.find(id_or_prefix).id
    except InvalidRequest:
        return id_or_prefix[:32]


def _state(known: dict[str, AuthorityView], authority_id: str) -> AuthorityState | None:
    found = known.get(authority_id)
    return found.state if found is not None else None


def _detail(detail: str, signs: bool) -> str:
    parts = [p for p in (detail, "signs from now on" if signs else "") if p]
    return "; ".join(parts)


def _bump_sequence(conn: Connection, now: datetime) -> int:
    sequence = conn.execute(
        update(CaState)
        .where(CaState.id == _CA_STATE_ID)
        .values(bundle_sequence=CaState.bundle_sequence + 1, updated_at=now)
        .returning(CaState.bundle_sequence)
    ).scalar()
    if sequence is None:
        raise not_initialised()
    return int(sequence)


def _views(conn: Connection) -> list[AuthorityView]:
    rows = conn.execute(
        select(
            Authority.id,
            Authority.role,
            Authority.state,
            Authority.parent_id,
            Authority.encrypted_key.is_not(None).label("has_key"),
            Authority.not_before,
            Authority.not_after,
            Authority.created_at,
            Authority.activated_at,
        ).order_by(Authority.created_at, Authority.role.desc())
    ).all()
    return [
        AuthorityView(
            id=row.id,
            role=AuthorityRole(row.role),
            state=AuthorityState(row.state),
            parent_id=row.parent_id,
            has_key=bool(row.has_key),
            not_before=row.not_before,
            not_after=row.not_after,
            created_at=row.created_at,
            activated_at=row.activated_at,
        )
        for row in rows
    ]


def _load_signing(conn: Connection, authority_id: str, kek: KeyEncryptionKey) -> SigningAuthority:
    row = conn.execute(select(Authority).where(Authority.id == authority_id)).one()
    if row.encrypted_key is None:
        raise ConfigurationError(
            "no_signing_key", f"authority {authority_id} does not hold its private key"
        )
    der = kek.decrypt(row.encrypted_key, row.id.encode())
    return SigningAuthority(
        x509.load_pem_x509_certificate(row.certificate_pem.encode()),
        private_key_from_der(der),
        tuple(x509.load_pem_x509_certificates(row.chain_pem.encode())) if row.chain_pem else (),
    )


def _identity(conn: Connection) -> CaIdentity | None:
    """The CA's identity; ``None`` before ``ca init`` (or before ``db upgrade``: no schema)."""
    if not inspect(conn).has_table(CaState.__tablename__):
        return None
    row = conn.execute(select(CaState).where(CaState.id == _CA_STATE_ID)).first()
    if row is None:
        return None
    return CaIdentity(
        TrustDomain(row.trust_domain), row.kek_id, row.bundle_sequence, row.created_at
    )


def _require_kek(ident: CaIdentity, kek: KeyEncryptionKey) -> None:
    if kek.id != ident.kek_id:
        raise ConfigurationError(
            "kek_mismatch",
            f"the CA keys in this database are encrypted under KEK {ident.kek_id}, "
            f"but the KEK given has id {kek.id}",
        )


def _event_record(row: Row[Any]) -> CaEventRecord:
    return CaEventRecord(
        id=row.id,
        at=row.at,
        actor=row.actor,
        action=row.action,
        outcome=row.outcome,
        authority_id=row.authority_id,
        role=row.role,
        from_state=row.from_state,
        to_state=row.to_state,
        bundle_sequence=row.bundle_sequence,
        detail=row.detail,
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
