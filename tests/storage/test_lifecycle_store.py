"""The CA's lifecycle steps (``AuthorityStore.activate/retire/revoke/rotate_intermediate``)
against real databases, SQLite and PostgreSQL: what each step changes (states, trust bundle,
signer, bundle sequence), what it records (``ca_events``, ``updated_by/at``), what it refuses
(certificates still in use, the signer), and that concurrent steps from several replicas or
admins are serialized."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from cryptography import x509

from ca.core.errors import FailedPrecondition, InvalidRequest, MeshcaError, Unavailable
from ca.core.kek import KeyEncryptionKey
from ca.core.keys import key_id
from ca.core.lifecycle import AuthorityRole, AuthorityState, LifecycleAction
from ca.core.records import CaEventRecord, IssuedRecord
from ca.issuance import utc_now
from ca.runtime import CaRuntime
from ca.settings import Settings
from ca.storage import migrate
from ca.storage.authority_store import AuthorityStore, EventQuery, NewAuthority, StepOutcome
from ca.storage.change_feed import CHANNEL, libpq_conninfo
from tests.factories import make_ca

T = TypeVar("T")

ADMIN = "admin@example.test"
SECOND = timedelta(seconds=1)
HOUR = timedelta(hours=1)
TD = "spiffe://cluster.local"
WEB = f"{TD}/ns/default/sa/web"
API = f"{TD}/ns/default/sa/api"
DB = f"{TD}/ns/data/sa/db"

PREPARED = AuthorityState.PREPARED
ACTIVE = AuthorityState.ACTIVE
RETIRED = AuthorityState.RETIRED
REVOKED = AuthorityState.REVOKED

# Generous: two cores shared with other test runs.
THREAD_TIMEOUT = 60.0


def new_runtime(db_url: str, kek_file: Path, **settings: object) -> CaRuntime:
    return CaRuntime(Settings(db_url=db_url, kek_file=kek_file, **settings))  # type: ignore[arg-type]


@pytest.fixture
def runtime(db_url: str, tmp_path: Path) -> Iterator[CaRuntime]:
    """An initialised CA: one active root and one active (signing) intermediate."""
    rt = new_runtime(db_url, tmp_path / "kek")
    migrate.upgrade(rt.engine)
    rt.initialise(from_dir=None, exist_ok=False, actor=ADMIN)
    yield rt
    rt.engine.dispose()


@pytest.fixture
def store(runtime: CaRuntime) -> AuthorityStore:
    return runtime.authorities


@dataclass(frozen=True)
class Family:
    """A root and its intermediate as stored: ids and the rows to prepare."""

    root: str
    intermediate: str
    rows: tuple[NewAuthority, ...]


def new_family() -> Family:
    root, intermediate = make_ca()
    rows = (
        NewAuthority(AuthorityRole.ROOT, root.certificate, (), root.private_key),
        NewAuthority(
            AuthorityRole.INTERMEDIATE,
            intermediate.certificate,
            (root.certificate,),
            intermediate.private_key,
            parent_id=root.key_id,
        ),
    )
    return Family(root.key_id, intermediate.key_id, rows)


def initial_family(store: AuthorityStore) -> Family:
    infos = {a.role: a.id for a in store.authorities()}
    return Family(infos[AuthorityRole.ROOT], infos[AuthorityRole.INTERMEDIATE], ())


def states(store: AuthorityStore) -> dict[str, AuthorityState]:
    return {a.id: a.state for a in store.authorities()}


def cert_id(cert: x509.Certificate) -> str:
    return key_id(cert.public_key())  # type: ignore[arg-type]


def bundle_root_ids(store: AuthorityStore) -> list[str]:
    return [cert_id(c) for c in store.bundle().roots]


def all_events(store: AuthorityStore) -> list[CaEventRecord]:
    """Every lifecycle event, oldest first."""
    return list(reversed(store.events(EventQuery(limit=10_000))))


def event_rows(
    events: list[CaEventRecord],
) -> list[tuple[str, str, str | None, str | None, str | None, int, str]]:
    """(action, outcome, authority, from, to, sequence, actor) of each event."""
    return [
        (
            e.action,
            e.outcome,
            e.authority_id,
            e.from_state,
            e.to_state,
            e.bundle_sequence,
            e.actor,
        )
        for e in events
    ]


def snapshot(store: AuthorityStore) -> tuple[object, ...]:
    """Everything a step could change, besides the audit log."""
    return (store.require_identity(), store.authorities(), store.bundle())


def issued(
    serial: int,
    issuer: str,
    *,
    spiffe_id: str = WEB,
    pod_uid: str | None,
    issued_at: datetime,
    ttl: timedelta = HOUR,
) -> IssuedRecord:
    hex_serial = format(serial, "032x")
    return IssuedRecord(
        serial=hex_serial,
        spiffe_id=spiffe_id,
        namespace="default",
        service_account=spiffe_id.rsplit("/", 1)[-1],
        pod_name=f"pod-{pod_uid}" if pod_uid else None,
        pod_uid=pod_uid,
        issuer_key_id=issuer,
        not_before=issued_at - timedelta(minutes=1),
        not_after=issued_at + ttl,
        cert_sha256=hex_serial * 2,
        public_key_sha256="f" * 64,
        requested_ttl_seconds=None,
        requester="test",
        request_id=f"req-{serial}",
        issued_at=issued_at,
    )


def rotate_to_new_family(runtime: CaRuntime, base: datetime) -> tuple[Family, Family]:
    """prepare + activate a new family (at ``base`` + 1s and + 2s): (old, new)."""
    store = runtime.authorities
    old = initial_family(store)
    new = new_family()
    store.prepare(runtime.kek(), new.rows, actor=ADMIN, now=base + SECOND)
    store.activate(None, actor=ADMIN, now=base + 2 * SECOND)
    return old, new


def run_together(calls: list[Callable[[], T]]) -> list[T | BaseException]:
    """Run ``calls`` in threads released at the same instant; each result or exception."""
    barrier = threading.Barrier(len(calls))

    def released(call: Callable[[], T]) -> T | BaseException:
        barrier.wait(timeout=THREAD_TIMEOUT)
        try:
            return call()
        except Exception as error:
            return error

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(released, call) for call in calls]
        return [f.result(timeout=THREAD_TIMEOUT) for f in futures]


# --- prepare -> activate -> retire -------------------------------------------------------------


def test_prepare_activate_retire_move_states_bundle_signer_sequence_and_audit(
    store: AuthorityStore, runtime: CaRuntime
) -> None:
    kek = runtime.kek()
    old = initial_family(store)
    init_info = {a.id: a for a in store.authorities()}
    new = new_family()
    base = utc_now()
    t1, t2, t3 = base + SECOND, base + 2 * SECOND, base + 3 * SECOND

    # prepare: trusted, not signing.
    prepared = store.prepare(kek, new.rows, actor="alice", now=t1)
    assert prepared.sequence == 2
    assert states(store) == {
        old.root: ACTIVE,
        old.intermediate: ACTIVE,
        new.root: PREPARED,
        new.intermediate: PREPARED,
    }
    assert bundle_root_ids(store) == [old.root, new.root]
    assert store.signing_authority(kek).key_id == old.intermediate
    assert store.bundle().signing_key_id == old.intermediate

    # activate: the new intermediate signs; both roots stay trusted.
    activated = store.activate(None, actor="bob", now=t2)
    assert activated is not None
    assert activated.action is LifecycleAction.ACTIVATE
    assert activated.sequence == 3
    assert [(c.authority_id, c.from_state, c.to_state, c.signs) for c in activated.changes] == [
        (new.root, PREPARED, ACTIVE, False),
        (new.intermediate, PREPARED, ACTIVE, True),
    ]
    assert states(store) == {
        old.root: ACTIVE,
        old.intermediate: ACTIVE,
        new.root: ACTIVE,
        new.intermediate: ACTIVE,
    }
    assert bundle_root_ids(store) == [old.root, new.root]
    signer = store.signing_authority(kek)
    assert signer.key_id == new.intermediate
    assert cert_id(signer.root) == new.root
    bundle = store.bundle()
    assert bundle.signing_key_id == new.intermediate
    assert bundle.sequence == 3

    # retire (default: the one active root that no longer signs): out of the bundle.
    retired = store.retire(None, actor="carol", now=t3)
    assert retired is not None
    assert retired.sequence == 4
    assert states(store) == {
        old.root: RETIRED,
        old.intermediate: RETIRED,
        new.root: ACTIVE,
        new.intermediate: ACTIVE,
    }
    assert bundle_root_ids(store) == [new.root]
    assert store.signing_authority(kek).key_id == new.intermediate
    assert store.bundle_sequence() == 4
    assert {cert_id(c) for c in store.trusted_issuers()} == {new.root, new.intermediate}

    # Who changed what, and when.
    info = {a.id: a for a in store.authorities()}
    assert (info[old.root].updated_by, info[old.root].updated_at) == ("carol", t3)
    assert (info[old.intermediate].updated_by, info[old.intermediate].updated_at) == ("carol", t3)
    assert (info[new.root].updated_by, info[new.root].updated_at) == ("bob", t2)
    assert (info[new.intermediate].updated_by, info[new.intermediate].updated_at) == ("bob", t2)
    assert info[new.intermediate].activated_at == t2
    assert info[new.root].activated_at is None  # the root is trusted; its intermediate signs
    assert info[new.root].created_by == "alice"
    assert info[old.root].created_by == ADMIN
    assert info[old.root].created_at == init_info[old.root].created_at

    assert event_rows(all_events(store)) == [
        ("init", "done", old.root, None, "active", 1, ADMIN),
        ("init", "done", old.intermediate, None, "active", 1, ADMIN),
        ("prepare", "done", new.root, None, "prepared", 2, "alice"),
        ("prepare", "done", new.intermediate, None, "prepared", 2, "alice"),
        ("activate", "done", new.root, "prepared", "active", 3, "bob"),
        ("activate", "done", new.intermediate, "prepared", "active", 3, "bob"),
        ("retire", "done", old.root, "active", "retired", 4, "carol"),
        ("retire", "done", old.intermediate, "active", "retired", 4, "carol"),
    ]
    events = all_events(store)
    assert [e.at for e in events[2:]] == [t1, t1, t2, t2, t3, t3]
    assert events[5].detail == "signs from now on"
    assert store.event_counts() == {
        ("init", "done"): 2,
        ("prepare", "done"): 2,
        ("activate", "done"): 2,
        ("retire", "done"): 2,
    }


def test_rollback_activates_the_old_root_again(store: AuthorityStore, runtime: CaRuntime) -> None:
    base = utc_now()
    old, new = rotate_to_new_family(runtime, base)
    assert store.signing_authority(runtime.kek()).key_id == new.intermediate

    rolled_back = store.activate(old.root[:8], actor="bob", now=base + 3 * SECOND)

    assert rolled_back is not None
    assert rolled_back.sequence == 4
    assert store.signing_authority(runtime.kek()).key_id == old.intermediate
    assert store.bundle().signing_key_id == old.intermediate
    assert bundle_root_ids(store) == [old.root, new.root]
    # ... and the old family can no longer be retired, the new one can (nothing in use).
    with pytest.raises(FailedPrecondition):
        store.retire(old.root, actor="bob", now=base + 4 * SECOND)
    assert store.retire(None, actor="bob", now=base + 5 * SECOND) is not None
    assert bundle_root_ids(store) == [old.root]


@pytest.mark.parametrize("target", ["root", "intermediate", "default after rotation"])
def test_activating_what_already_signs_bumps_nothing_and_records_nothing(
    store: AuthorityStore, runtime: CaRuntime, target: str
) -> None:
    base = utc_now()
    if target == "default after rotation":
        _old, new = rotate_to_new_family(runtime, base)
        authority: str = new.root
    else:
        family = initial_family(store)
        authority = family.root if target == "root" else family.intermediate
    before = snapshot(store)
    events_before = all_events(store)

    assert store.activate(authority, actor="bob", now=base + 5 * SECOND) is None

    assert snapshot(store) == before
    assert all_events(store) == events_before


@dataclass(frozen=True)
class RefusedCase:
    action: str
    reason: str
    target: Callable[[Family], str | None]
    step: Callable[[AuthorityStore, str | None, datetime], StepOutcome | None]


REFUSED = [
    RefusedCase(
        "retire",
        "authority_signing",
        lambda f: f.root,
        lambda s, target, now: s.retire(target, actor="mallory", now=now),
    ),
    RefusedCase(
        "retire",
        "nothing_to_retire",
        lambda f: None,
        lambda s, target, now: s.retire(target, actor="mallory", now=now),
    ),
    RefusedCase(
        "revoke",
        "authority_signing",
        lambda f: f.intermediate,
        lambda s, target, now: s.revoke(target or "", actor="mallory", now=now),
    ),
    RefusedCase(
        "activate",
        "nothing_to_activate",
        lambda f: None,
        lambda s, target, now: s.activate(target, actor="mallory", now=now),
    ),
    RefusedCase(
        "activate",
        "unknown_authority",
        lambda f: "ffff",
        lambda s, target, now: s.activate(target, actor="mallory", now=now),
    ),
]


@pytest.mark.parametrize("case", REFUSED, ids=[f"{c.action}-{c.reason}" for c in REFUSED])
def test_a_refused_step_records_a_refused_event_and_changes_nothing(
    store: AuthorityStore, case: RefusedCase
) -> None:
    target = case.target(initial_family(store))
    before = snapshot(store)
    events_before = all_events(store)
    now = utc_now() + SECOND

    with pytest.raises((FailedPrecondition, InvalidRequest)) as info:
        case.step(store, target, now)

    assert info.value.reason == case.reason
    assert snapshot(store) == before
    assert store.bundle_sequence() == 1
    events = all_events(store)
    assert events[: len(events_before)] == events_before
    (refused,) = events[len(events_before) :]
    assert (refused.action, refused.outcome, refused.authority_id) == (
        case.action,
        "refused",
        target,
    )
    assert (refused.actor, refused.at, refused.bundle_sequence) == ("mallory", now, 1)
    assert (refused.from_state, refused.to_state) == (None, None)
    assert refused.detail == f"{info.value.reason}: {info.value.message}"
    assert store.event_counts()[(case.action, "refused")] == 1


# --- retiring while certificates are in use ----------------------------------------------------


def test_retire_is_refused_while_certificates_are_in_use_until_each_pod_moved(
    store: AuthorityStore, runtime: CaRuntime
) -> None:
    base = utc_now()
    old, new = rotate_to_new_family(runtime, base)
    ledger = runtime.ledger
    issued_old = base + 3 * SECOND
    ledger.record(
        [
            issued(1, old.intermediate, spiffe_id=WEB, pod_uid="web-1", issued_at=issued_old),
            issued(2, old.intermediate, spiffe_id=API, pod_uid="api-1", issued_at=issued_old),
            issued(3, old.intermediate, spiffe_id=API, pod_uid="api-2", issued_at=issued_old),
        ]
    )
    before = snapshot(store)

    with pytest.raises(FailedPrecondition) as info:
        store.retire(None, actor="carol", now=base + 4 * SECOND)

    message = info.value.message
    assert info.value.reason == "authority_in_use"
    assert f"cannot retire {old.root}" in message
    assert "3 unexpired certificate(s)" in message
    assert "2 identities" in message
    assert f"{API} (2), {WEB} (1)" in message
    assert "--force" in message
    assert snapshot(store) == before
    refused = all_events(store)[-1]
    assert (refused.action, refused.outcome) == ("retire", "refused")
    assert refused.detail == f"authority_in_use: {message}"
    assert ledger.in_use_count([old.root, old.intermediate], base + 4 * SECOND) == 3

    # The web pod re-issues from the new authority: one identity left.
    moved = base + 5 * SECOND
    ledger.record([issued(4, new.intermediate, spiffe_id=WEB, pod_uid="web-1", issued_at=moved)])
    with pytest.raises(FailedPrecondition) as again:
        store.retire(old.root, actor="carol", now=base + 6 * SECOND)
    assert "2 unexpired certificate(s)" in again.value.message
    assert f"1 identity: {API} (2)." in again.value.message
    assert WEB not in again.value.message

    # Both api pods too: nothing of the old family is in use (though unexpired); retire works.
    ledger.record(
        [
            issued(5, new.intermediate, spiffe_id=API, pod_uid="api-1", issued_at=moved),
            issued(6, new.intermediate, spiffe_id=API, pod_uid="api-2", issued_at=moved),
        ]
    )
    outcome = store.retire(old.root, actor="carol", now=base + 7 * SECOND)
    assert outcome is not None
    assert states(store)[old.root] is RETIRED
    assert states(store)[old.intermediate] is RETIRED
    assert all_events(store)[-1].detail == ""


def test_retire_with_force_despite_certificates_in_use(
    store: AuthorityStore, runtime: CaRuntime
) -> None:
    base = utc_now()
    old, new = rotate_to_new_family(runtime, base)
    runtime.ledger.record(
        [
            issued(1, old.intermediate, spiffe_id=WEB, pod_uid="web-1", issued_at=base),
            issued(2, old.intermediate, spiffe_id=DB, pod_uid=None, issued_at=base),
        ]
    )

    outcome = store.retire(None, actor="carol", now=base + 3 * SECOND, force=True)

    assert outcome is not None
    assert outcome.sequence == 4
    assert bundle_root_ids(store) == [new.root]
    done = [e for e in all_events(store) if e.action == "retire"]
    assert [(e.authority_id, e.outcome) for e in done] == [
        (old.root, "done"),
        (old.intermediate, "done"),
    ]
    assert all(e.detail == "forced with 2 certificate(s) in use" for e in done)


def test_a_certificate_without_pod_keeps_blocking_until_it_expires(
    store: AuthorityStore, runtime: CaRuntime
) -> None:
    base = utc_now()
    old, new = rotate_to_new_family(runtime, base)
    # An admin's `ca sign`: no pod to tell whether it was replaced.
    offline = issued(1, old.intermediate, spiffe_id=DB, pod_uid=None, issued_at=base, ttl=HOUR)
    runtime.ledger.record([offline])
    # A newer certificate for the same identity from the new authority does not replace it.
    runtime.ledger.record(
        [issued(2, new.intermediate, spiffe_id=DB, pod_uid=None, issued_at=base + 3 * SECOND)]
    )

    for moment in (base + 4 * SECOND, offline.not_after - SECOND):
        with pytest.raises(FailedPrecondition) as info:
            store.retire(old.root, actor="carol", now=moment)
        assert f"1 identity: {DB} (1)" in info.value.message

    assert store.retire(old.root, actor="carol", now=offline.not_after + SECOND) is not None
    assert states(store)[old.root] is RETIRED


# --- revoke ------------------------------------------------------------------------------------


def test_revoke_distrusts_the_family_and_lists_it_as_revoked(
    store: AuthorityStore, runtime: CaRuntime
) -> None:
    base = utc_now()
    old, new = rotate_to_new_family(runtime, base)
    runtime.ledger.record(
        [issued(1, old.intermediate, spiffe_id=WEB, pod_uid="web-1", issued_at=base)]
    )

    # Compromise: no in-use check, no --force needed.
    outcome = store.revoke(old.root[:10], actor="security", now=base + 3 * SECOND)

    assert outcome is not None
    assert outcome.sequence == 4
    assert {(c.authority_id, c.to_state) for c in outcome.changes} == {
        (old.root, REVOKED),
        (old.intermediate, REVOKED),
    }
    bundle = store.bundle()
    assert bundle.revoked_key_ids == tuple(sorted([old.root, old.intermediate]))
    assert [cert_id(r) for r in bundle.roots] == [new.root]
    assert bundle.signing_key_id == new.intermediate
    assert {cert_id(c) for c in store.trusted_issuers()} == {new.root, new.intermediate}

    with pytest.raises(FailedPrecondition) as info:
        store.revoke(old.root, actor="security", now=base + 4 * SECOND)
    assert info.value.reason == "already_revoked"
    assert store.bundle_sequence() == 4


def test_revoke_after_retire_still_lists_the_revoked_ids(
    store: AuthorityStore, runtime: CaRuntime
) -> None:
    base = utc_now()
    old, _new = rotate_to_new_family(runtime, base)
    store.retire(None, actor="carol", now=base + 3 * SECOND)
    assert store.bundle().revoked_key_ids == ()

    store.revoke(old.intermediate, actor="security", now=base + 4 * SECOND)

    assert store.bundle().revoked_key_ids == (old.intermediate,)
    assert states(store)[old.root] is RETIRED


# --- bringing a retired root back --------------------------------------------------------------


def retired_family(runtime: CaRuntime, base: datetime) -> tuple[Family, Family]:
    """A family of ours that signed, was replaced by another and retired: (retired, signing)."""
    store, kek = runtime.authorities, runtime.kek()
    first, second = new_family(), new_family()
    store.prepare(kek, first.rows, actor="alice", now=base + SECOND)
    store.activate(first.root, actor="bob", now=base + 2 * SECOND)
    store.prepare(kek, second.rows, actor="alice", now=base + 3 * SECOND)
    store.activate(second.root, actor="bob", now=base + 4 * SECOND)
    store.retire(first.root, actor="carol", now=base + 5 * SECOND)
    return first, second


def test_a_retired_root_can_be_prepared_again_from_its_material(
    store: AuthorityStore, runtime: CaRuntime
) -> None:
    base = utc_now()
    first, _second = retired_family(runtime, base)

    outcome = store.prepare(runtime.kek(), first.rows, actor="alice", now=base + 6 * SECOND)

    assert {(c.authority_id, c.to_state) for c in outcome.changes} == {
        (first.root, PREPARED),
        (first.intermediate, PREPARED),
    }
    assert first.root in bundle_root_ids(store)
    store.activate(first.root, actor="bob", now=base + 7 * SECOND)
    assert store.signing_authority(runtime.kek()).key_id == first.intermediate


def test_a_revoked_root_is_never_trusted_again(store: AuthorityStore, runtime: CaRuntime) -> None:
    base = utc_now()
    first, _second = retired_family(runtime, base)
    store.revoke(first.root, actor="security", now=base + 6 * SECOND)
    before = snapshot(store)

    with pytest.raises(FailedPrecondition):
        store.prepare(runtime.kek(), first.rows, actor="alice", now=base + 7 * SECOND)

    assert snapshot(store) == before
    assert first.root not in bundle_root_ids(store)
    assert set(store.bundle().revoked_key_ids) == {first.root, first.intermediate}


# --- the ledger refuses certificates of an authority out of service ----------------------------


@pytest.mark.parametrize("state", [RETIRED, REVOKED, PREPARED])
def test_ledger_refuses_a_certificate_whose_issuer_is_not_active(
    store: AuthorityStore, runtime: CaRuntime, state: AuthorityState
) -> None:
    base = utc_now()
    old, new = rotate_to_new_family(runtime, base)
    if state is RETIRED:
        store.retire(None, actor="carol", now=base + 3 * SECOND)
        stale = old.intermediate
    elif state is REVOKED:
        store.revoke(old.root, actor="carol", now=base + 3 * SECOND)
        stale = old.intermediate
    else:
        waiting = new_family()
        store.prepare(runtime.kek(), waiting.rows, actor="alice", now=base + 3 * SECOND)
        stale = waiting.intermediate
    ledger = runtime.ledger
    good = issued(1, new.intermediate, pod_uid="web-1", issued_at=base + 4 * SECOND)
    bad = issued(2, stale, pod_uid="web-2", issued_at=base + 4 * SECOND)

    for batch in ([bad], [good, bad]):
        with pytest.raises(Unavailable) as info:
            ledger.record(batch)
        assert info.value.reason == "authority_out_of_service"
        assert stale in info.value.message
        assert f"is {state.value} now" in info.value.message
        assert ledger.count_issued() == 0

    ledger.record([good])
    assert ledger.count_issued() == 1


# --- automatic intermediate rotation -----------------------------------------------------------


@pytest.fixture
def short_lived(db_url: str, tmp_path: Path) -> Iterator[CaRuntime]:
    """A CA whose intermediates live one hour (the root ten years)."""
    rt = new_runtime(db_url, tmp_path / "kek", intermediate_ttl=HOUR)
    migrate.upgrade(rt.engine)
    rt.initialise(from_dir=None, exist_ok=False, actor=ADMIN)
    yield rt
    rt.engine.dispose()


def life_point(runtime: CaRuntime) -> Callable[[float], datetime]:
    """The instant at a fraction of the signing intermediate's lifetime (plus one second, as
    X.509 times are whole seconds)."""
    signer = runtime.authorities.signing_authority(runtime.kek())
    start, end = signer.not_before, signer.not_after

    def at(fraction: float) -> datetime:
        return start + (end - start) * fraction + SECOND

    return at


def test_rotate_intermediate_prepares_at_half_life_and_activates_at_five_sixths(
    short_lived: CaRuntime,
) -> None:
    rt = short_lived
    store = rt.authorities
    at = life_point(rt)
    first = initial_family(store)
    events_before = all_events(store)

    # Not due: read only, nothing bumped or recorded.
    assert rt.rotate_intermediate(actor="replica-1", now=at(0.49)) is None
    assert store.bundle_sequence() == 1
    assert all_events(store) == events_before

    prepared = rt.rotate_intermediate(actor="replica-1", now=at(0.5))
    assert prepared is not None
    assert prepared.action is LifecycleAction.PREPARE_INTERMEDIATE
    assert prepared.sequence == 2
    ((change),) = prepared.changes
    successor = change.authority_id
    assert (change.role, change.from_state, change.to_state) == (
        AuthorityRole.INTERMEDIATE,
        None,
        PREPARED,
    )
    info = {a.id: a for a in store.authorities()}
    assert info[successor].parent_id == first.root
    assert info[successor].has_key
    assert info[successor].not_after > info[first.intermediate].not_after
    assert info[successor].created_by == "replica-1"
    assert store.signing_authority(rt.kek()).key_id == first.intermediate
    assert bundle_root_ids(store) == [first.root]  # intermediates are not bundle roots
    event = all_events(store)[-1]
    assert (event.action, event.outcome, event.authority_id, event.actor) == (
        "prepare-intermediate",
        "done",
        successor,
        "replica-1",
    )
    assert event.detail == f"replaces {first.intermediate}"

    # Prepared already, not yet time to activate.
    for fraction in (0.6, 0.83):
        assert rt.rotate_intermediate(actor="replica-1", now=at(fraction)) is None
    assert store.bundle_sequence() == 2

    activated = rt.rotate_intermediate(actor="replica-2", now=at(0.84))
    assert activated is not None
    assert activated.action is LifecycleAction.ACTIVATE_INTERMEDIATE
    assert activated.sequence == 3
    assert [(c.authority_id, c.to_state, c.signs) for c in activated.changes] == [
        (successor, ACTIVE, True)
    ]
    signer = rt.authorities.signing_authority(rt.kek())
    assert signer.key_id == successor
    assert cert_id(signer.root) == first.root
    assert store.bundle().signing_key_id == successor
    # The old intermediate stays trusted while its certificates live.
    assert states(store)[first.intermediate] is ACTIVE
    assert rt.rotate_intermediate(actor="replica-2", now=at(0.9)) is None

    # Once it expired it is retired automatically.
    expired = rt.rotate_intermediate(actor="replica-1", now=at(1.0) + SECOND)
    assert expired is not None
    assert expired.action is LifecycleAction.RETIRE_EXPIRED
    assert [(c.authority_id, c.to_state) for c in expired.changes] == [
        (first.intermediate, RETIRED)
    ]
    assert store.signing_authority(rt.kek()).key_id == successor


def rotation_check(
    replica: CaRuntime, actor: str, now: datetime
) -> Callable[[], StepOutcome | None]:
    return lambda: replica.rotate_intermediate(actor=actor, now=now)


def test_replicas_rotating_at_once_prepare_and_activate_exactly_once(
    short_lived: CaRuntime,
) -> None:
    """Several replicas (each its own engine) run the rotation check at the same instant."""
    settings = short_lived.settings
    replicas = [CaRuntime(settings) for _ in range(3)]
    at = life_point(short_lived)
    store = short_lived.authorities
    try:
        prepared = run_together(
            [rotation_check(r, f"replica-{i}", at(0.6)) for i, r in enumerate(replicas)]
        )
        made = [o for o in prepared if isinstance(o, StepOutcome)]
        assert len(made) == 1, prepared
        assert all(o is None for o in prepared if o is not made[0])
        assert len(store.authorities()) == 3
        assert store.bundle_sequence() == 2

        activated = run_together(
            [rotation_check(r, f"replica-{i}", at(0.9)) for i, r in enumerate(replicas)]
        )
        made = [o for o in activated if isinstance(o, StepOutcome)]
        assert len(made) == 1, activated
        assert made[0].action is LifecycleAction.ACTIVATE_INTERMEDIATE
        assert store.bundle_sequence() == 3
        assert store.event_counts() == {
            ("init", "done"): 2,
            ("prepare-intermediate", "done"): 1,
            ("activate-intermediate", "done"): 1,
        }
    finally:
        for r in replicas:
            r.engine.dispose()


def test_rotation_prepares_at_most_once_when_the_root_ends_with_the_intermediate(
    db_url: str, tmp_path: Path
) -> None:
    rt = new_runtime(db_url, tmp_path / "kek", root_ttl=HOUR, intermediate_ttl=HOUR)
    try:
        migrate.upgrade(rt.engine)
        rt.initialise(from_dir=None, exist_ok=False, actor=ADMIN)
        at = life_point(rt)
        steps = [rt.rotate_intermediate(actor="replica-1", now=at(0.6 + i / 100)) for i in range(3)]
        assert sum(1 for s in steps if s is not None) <= 1
        assert rt.authorities.bundle_sequence() in (1, 2)
    finally:
        rt.engine.dispose()


# --- concurrent admin steps --------------------------------------------------------------------


def activation(
    store: AuthorityStore, authority: str, actor: str, now: datetime
) -> Callable[[], StepOutcome | None]:
    return lambda: store.activate(authority, actor=actor, now=now)


def preparation(
    store: AuthorityStore, kek: KeyEncryptionKey, family: Family, actor: str, now: datetime
) -> Callable[[], StepOutcome | None]:
    return lambda: store.prepare(kek, family.rows, actor=actor, now=now)


def test_racing_activate_and_prepare_keep_one_signer_and_distinct_sequences(
    store: AuthorityStore, runtime: CaRuntime
) -> None:
    kek = runtime.kek()
    base = utc_now()
    upcoming = new_family()
    store.prepare(kek, upcoming.rows, actor="alice", now=base + SECOND)
    rounds = 3
    for n in range(rounds):
        now = base + (n + 2) * SECOND
        following = new_family()
        results: list[StepOutcome | BaseException | None] = run_together(
            [
                activation(store, upcoming.root, "bob", now),
                preparation(store, kek, following, "alice", now),
            ]
        )
        assert all(isinstance(r, StepOutcome) for r in results), results
        assert store.signing_authority(kek).key_id == upcoming.intermediate
        assert store.bundle().signing_key_id == upcoming.intermediate
        upcoming = following

    done = [e for e in all_events(store) if e.outcome == "done" and e.action != "init"]
    # Every step has one sequence of its own, and the sequence counts the steps.
    per_step: dict[int, set[str]] = {}
    for e in done:
        per_step.setdefault(e.bundle_sequence, set()).add(e.action)
    assert all(len(actions) == 1 for actions in per_step.values()), per_step
    assert sorted(per_step) == list(range(2, 2 + 1 + 2 * rounds))
    assert store.bundle_sequence() == 1 + 1 + 2 * rounds
    active_with_key = [
        a for a in store.authorities() if a.state is ACTIVE and a.has_key and a.activated_at
    ]
    newest = max(a.activated_at for a in active_with_key if a.activated_at is not None)
    assert [a.id for a in active_with_key if a.activated_at == newest] == [
        store.signing_authority(kek).key_id
    ]


def test_racing_activations_are_serialized_and_leave_one_signer(
    store: AuthorityStore, runtime: CaRuntime
) -> None:
    base = utc_now()
    old, new = rotate_to_new_family(runtime, base)
    for n in range(3):
        now = base + (n + 3) * SECOND
        results = run_together(
            [activation(store, old.root, "bob", now), activation(store, new.root, "carol", now)]
        )
        assert not any(isinstance(r, BaseException) for r in results), results
        signer = store.signing_authority(runtime.kek()).key_id
        assert signer in (old.intermediate, new.intermediate)
        assert store.bundle().signing_key_id == signer
    steps = [e for e in all_events(store) if e.action == "activate" and e.outcome == "done"]
    signing_sequences = [e.bundle_sequence for e in steps if e.detail == "signs from now on"]
    assert len(signing_sequences) == len(set(signing_sequences))
    assert store.bundle_sequence() == max(e.bundle_sequence for e in steps)


def test_the_activation_committed_last_signs_whatever_the_admin_clock_says(
    store: AuthorityStore, runtime: CaRuntime
) -> None:
    base = utc_now()
    old, _new = rotate_to_new_family(runtime, base)  # new activated at base + 2s
    # Roll back from a workstation whose clock is one second behind the previous one's.
    outcome = store.activate(old.root, actor="bob", now=base + SECOND)
    assert outcome is not None
    assert [c.authority_id for c in outcome.changes if c.signs] == [old.intermediate]
    assert store.signing_authority(runtime.kek()).key_id == old.intermediate


# --- NOTIFY (PostgreSQL) -----------------------------------------------------------------------


@pytest.mark.postgres
def test_each_done_step_is_announced_with_its_sequence(postgres_url: str, tmp_path: Path) -> None:
    rt = new_runtime(postgres_url, tmp_path / "kek")
    try:
        migrate.upgrade(rt.engine)
        rt.initialise(from_dir=None, exist_ok=False, actor=ADMIN)
        store = rt.authorities
        family = initial_family(store)
        with psycopg.connect(libpq_conninfo(postgres_url), autocommit=True) as listener:
            listener.execute(f"LISTEN {CHANNEL}")
            base = utc_now()
            # A no-op announces nothing; a refused step announces the sequence it left unchanged
            # (replicas count refusals in their metrics) ...
            assert store.activate(family.root, actor="bob", now=base) is None
            with pytest.raises(MeshcaError):
                store.retire(family.root, actor="bob", now=base)
            payloads = [n.payload for n in listener.notifies(timeout=THREAD_TIMEOUT, stop_after=1)]
            assert payloads == [str(store.bundle_sequence())]
            # ... and the prepare announces its new one.
            outcome = store.prepare(rt.kek(), new_family().rows, actor="alice", now=base + SECOND)
            payloads = [n.payload for n in listener.notifies(timeout=THREAD_TIMEOUT, stop_after=1)]
            assert payloads == [str(outcome.sequence)]
            activated = store.activate(None, actor="bob", now=base + 2 * SECOND)
            assert activated is not None
            payloads = [n.payload for n in listener.notifies(timeout=THREAD_TIMEOUT, stop_after=1)]
            assert payloads == [str(activated.sequence)]
    finally:
        rt.engine.dispose()


def test_a_refusal_records_the_full_id_the_admin_abbreviated(
    store: AuthorityStore, runtime: CaRuntime
) -> None:
    base = utc_now()
    _old, new = rotate_to_new_family(runtime, base)
    with pytest.raises(FailedPrecondition):
        store.revoke(new.root[:8], actor="carol", now=base + 3 * SECOND)
    with pytest.raises(InvalidRequest):
        store.revoke("f" * 40, actor="carol", now=base + 3 * SECOND)
    refused = [e for e in all_events(store) if e.outcome == "refused"]
    assert sorted(e.authority_id or "" for e in refused) == sorted(["f" * 32, new.root])
