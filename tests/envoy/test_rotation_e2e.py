"""Root rotation end to end, as an admin drives it: a real CA on a fresh PostgreSQL database, one
real agent per workload, real Envoys talking mTLS, and every step through the real ``meshca``
CLI in a subprocess (``root prepare`` -> ``activate`` -> ``retire``, or ``revoke``).

What an operator relies on: the whole rotation happens under traffic with no failed request and
no Envoy restart; ``root retire`` refuses (and changes nothing) while old certificates are in
use, naming who holds them; ``root revoke`` makes every agent re-issue at once, whatever the
re-issue window; every step is in ``meshca audit events``.

Timing: the CA pushes bundle changes at once (PostgreSQL NOTIFY, with a 100 ms poll behind it);
SVIDs live an hour, so every new leaf seen here is a re-issue the bundle called for, not a
renewal. The re-issue window is 2 s where agents must move quickly, and an hour where the test
shows something happens regardless of it. Each ``meshca`` run costs ~1-3 s of interpreter
start-up on a loaded machine, so the tests make as few as they can.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import select

from ca.core.lifecycle import AuthorityRole
from ca.core.serials import normalise_serial as ledger_serial
from ca.storage.authority_store import AuthorityStore
from ca.storage.engine import make_engine
from ca.storage.ledger import Ledger, LedgerQuery
from ca.storage.models import Authority
from tests.agent.harness import socket_dir
from tests.cli.helpers import Meshca, Result, assert_error, in_parallel
from tests.envoy.harness import EnvoyPair, EnvoyProcess
from tests.envoy.test_mesh_e2e import (
    CA_OVERRIDES,
    Mesh,
    Traffic,
    Workload,
    mesh_pair,
    ok_request,
    serial_of,
    wait_until,
    workload,
)
from tests.server.harness import TokenMinter, running_ca, serving_settings

pytestmark = pytest.mark.postgres

ADMIN = "admin-cli"
SHORT_WINDOW = timedelta(seconds=2)
LONG_WINDOW = timedelta(hours=1)  # long enough that no agent re-issues by chance during a test
DEADLINE = 20.0  # for what the 2 s window, or an immediate push, should bring about
STEP_LINE = re.compile(
    r"^(?P<action>[\w-]+): (?P<role>root|intermediate) (?P<id>[0-9a-f]+) "
    r"(?P<before>\w+) -> (?P<after>\w+)(?P<signs> \(signs from now on\))?$"
)
REISSUES = "meshca_agent_reissues_total"
MIN_REQUESTS = 100  # per traffic loop, over the whole rotation


# --------------------------------------------------------------------------- the admin


@dataclass(frozen=True)
class Change:
    """One ``<action>: <role> <id> <before> -> <after>`` line of a lifecycle step's output."""

    action: str
    role: str
    id: str
    before: str
    after: str
    signs: bool


@dataclass(frozen=True)
class StepReport:
    """What a lifecycle step printed: its changes and the bundle sequence it produced."""

    changes: list[Change]
    sequence: int


class Admin:
    """The ``meshca`` CLI as an admin runs it against the CA's database and KEK."""

    def __init__(self, workdir: Path, db_url: str, kek_file: Path) -> None:
        self._meshca = Meshca(workdir)
        self._flags = ("--db", db_url, "--kek-file", str(kek_file))

    def __call__(self, *args: str, check: bool = True) -> Result:
        return self._meshca(*self._flags, *args, check=check)

    def step(self, *args: str) -> StepReport:
        """Run a lifecycle step that must succeed; what it reports."""
        result = self("root", *args)
        changes = [
            Change(
                match["action"],
                match["role"],
                match["id"],
                match["before"],
                match["after"],
                bool(match["signs"]),
            )
            for line in result.stdout.splitlines()
            if (match := STEP_LINE.match(line))
        ]
        sequence = re.search(r"^bundle sequence (\d+)$", result.stdout, re.M)
        assert changes, result.describe()
        assert sequence, result.describe()
        return StepReport(changes, int(sequence[1]))

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self("root", "status", "--format", "json").stdout)
        return data

    def events(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = json.loads(self("audit", "events", "--format", "json").stdout)
        return data

    def status_and_events(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """``root status`` and ``audit events`` side by side (each is mostly start-up time)."""
        status, events = in_parallel(
            lambda: self("root", "status", "--format", "json"),
            lambda: self("audit", "events", "--format", "json"),
        )
        return json.loads(status.stdout), json.loads(events.stdout)


def authority(status: dict[str, Any], authority_id: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = status["authorities"]
    (row,) = (row for row in rows if row["id"] == authority_id)
    return row


def in_use(admin: Admin, authority_id: str) -> int:
    value: int = authority(admin.status(), authority_id)["in_use"]
    return value


@dataclass(frozen=True)
class Generation:
    """One root and the intermediate under it that signs (ids and certificates)."""

    root_id: str
    intermediate_id: str
    root: x509.Certificate
    intermediate: x509.Certificate

    @property
    def root_serial(self) -> str:
        return serial_of(self.root)


def authority_certificates(db_url: str) -> dict[str, x509.Certificate]:
    """Every stored authority's certificate, by id (read from the CA's database)."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Authority.id, Authority.certificate_pem)).all()
    finally:
        engine.dispose()
    return {row.id: x509.load_pem_x509_certificate(row.certificate_pem.encode()) for row in rows}


def generation(db_url: str, root_id: str, intermediate_id: str) -> Generation:
    certs = authority_certificates(db_url)
    return Generation(root_id, intermediate_id, certs[root_id], certs[intermediate_id])


def signing_generation(db_url: str) -> Generation:
    """The generation that signs now (read from the CA's database)."""
    engine = make_engine(db_url)
    try:
        store = AuthorityStore(engine)
        signer_id = store.bundle().signing_key_id
        (signer,) = (info for info in store.authorities() if info.id == signer_id)
    finally:
        engine.dispose()
    assert signer.role is AuthorityRole.INTERMEDIATE, signer
    assert signer.parent_id is not None, signer
    return generation(db_url, signer.parent_id, signer.id)


def prepared_generation(db_url: str, report: StepReport) -> Generation:
    """The root and intermediate ``root prepare`` reported."""
    changes = report.changes
    assert {(c.action, c.before, c.after) for c in changes} == {("prepare", "new", "prepared")}
    (root,) = (c.id for c in changes if c.role == "root")
    (intermediate,) = (c.id for c in changes if c.role == "intermediate")
    return generation(db_url, root, intermediate)


def issuer_of(db_url: str, serial: str) -> str:
    """The issuing key id the ledger recorded for the certificate ``serial``."""
    engine = make_engine(db_url)
    try:
        (record,) = Ledger(engine).certs(LedgerQuery(serial=ledger_serial(serial)))
    finally:
        engine.dispose()
    return record.issuer_key_id


# --------------------------------------------------------------------------- the mesh


@dataclass
class Cluster:
    """The CA's admin and database, the workloads and their Envoy pairs."""

    admin: Admin
    db_url: str
    workloads: list[Workload]
    pairs: list[EnvoyPair]

    _issuers: dict[str, str] = field(default_factory=dict)

    def issuer(self, serial: str) -> str:
        """The issuing key id the ledger recorded for the certificate ``serial``."""
        if serial not in self._issuers:
            self._issuers[serial] = issuer_of(self.db_url, serial)
        return self._issuers[serial]

    @property
    def envoys(self) -> list[EnvoyProcess]:
        return [envoy for pair in self.pairs for envoy in (pair.a, pair.b)]

    def envoy_workloads(self) -> list[tuple[EnvoyProcess, Workload]]:
        """Each Envoy with the workload (agent) that feeds it."""
        return list(zip(self.envoys, self.workloads, strict=True))


def trusts(envoy: EnvoyProcess, serials: set[str], *, exactly: bool = False) -> bool:
    """Whether every TLS context of ``envoy`` trusts the roots ``serials`` (and only them)."""
    contexts = envoy.certs().contexts
    if not contexts:
        return False
    for context in contexts:
        trusted = {ca.serial for ca in context.ca_certs}
        if not (trusted == serials if exactly else serials <= trusted):
            return False
    return True


def presents(cluster: Cluster, envoy: EnvoyProcess, issued_by: Generation) -> bool:
    """Whether every TLS context of ``envoy`` presents a leaf that ``issued_by``'s intermediate
    issued (per the ledger: Envoy's ``/certs`` shows only the leaf of a chain)."""
    serials = envoy.leaf_serials()
    return bool(serials) and all(
        cluster.issuer(serial) == issued_by.intermediate_id for serial in serials
    )


def wait_all(
    envoys: Sequence[EnvoyProcess],
    probe: Callable[[EnvoyProcess], bool],
    what: str,
    timeout: float,
) -> None:
    """Wait (one deadline for all) until ``probe(envoy)`` holds for every Envoy."""
    deadline = time.monotonic() + timeout
    for envoy in envoys:
        envoy.wait_for(
            partial(probe, envoy),
            f"{envoy.config.node_id}: {what}",
            max(deadline - time.monotonic(), 0.1),
        )


def assert_leaf_from(cluster: Cluster, new: Generation) -> None:
    """Every Envoy presents its agent's current leaf, which the ledger says ``new``'s
    intermediate issued and whose chain verifies up to ``new``'s root."""
    for envoy, workload_ in cluster.envoy_workloads():
        credentials = workload_.agent.credentials
        assert credentials.svid is not None
        leaf, *intermediates = credentials.svid.chain
        assert intermediates == [new.intermediate]
        leaf.verify_directly_issued_by(new.intermediate)
        new.intermediate.verify_directly_issued_by(new.root)
        assert envoy.leaf_serials() == {workload_.serial}
        assert presents(cluster, envoy, new)


@dataclass(frozen=True)
class Topology:
    """How many Envoy pairs, and the CA's re-issue window."""

    pairs: int
    reissue_window: timedelta


def start_cluster(stack: ExitStack, tmp_path: Path, db_url: str, topology: Topology) -> Cluster:
    """A CA on ``db_url``, two workloads (agents, distinct SPIFFE IDs) per pair, their Envoys
    ready to serve; stopped when ``stack`` closes."""
    minter = TokenMinter()
    settings = serving_settings(
        tmp_path, db_url, minter, reissue_window=topology.reissue_window, **CA_OVERRIDES
    )
    ca = stack.enter_context(running_ca(settings))
    mesh = Mesh(ca, minter, stack.enter_context(socket_dir()))
    workloads = [
        stack.enter_context(workload(mesh, f"ns-{n}", f"sa-{n}")) for n in range(2 * topology.pairs)
    ]
    pairs = [
        stack.enter_context(
            mesh_pair(tmp_path / f"pair-{n}", workloads[2 * n], workloads[2 * n + 1])
        )
        for n in range(topology.pairs)
    ]
    admin = Admin(tmp_path, db_url, settings.kek_file)
    return Cluster(admin, db_url, workloads, pairs)


#: A short pause between rounds: dozens of requests a second through each pair (a full mTLS
#: handshake each) still find any moment the mesh cannot serve, and leave the two cores to the
#: CA, the agents and the admin's ``meshca`` runs.
PACE = 0.01


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def events_by(events: Sequence[dict[str, Any]], action: str, outcome: str) -> list[dict[str, Any]]:
    return [e for e in events if e["action"] == action and e["outcome"] == outcome]


# --------------------------------------------------------------------------- tests


def test_full_rotation_with_continuous_traffic_drops_nothing(
    postgres_url: str, tmp_path: Path, stack: ExitStack
) -> None:
    """Two Envoy pairs (four agents, four SPIFFE IDs) under continuous traffic, a new upstream
    connection and full handshake per request, through prepare -> activate -> retire: each step
    reaches every Envoy (both roots trusted; leaves from the new root; the old root gone), not
    one request fails, no Envoy restarts, and the audit trail has every step by the admin."""
    cluster = start_cluster(stack, tmp_path, postgres_url, Topology(2, SHORT_WINDOW))
    envoys, admin = cluster.envoys, cluster.admin
    pids = [envoy.pid for envoy in envoys]
    old = signing_generation(postgres_url)
    assert all(presents(cluster, envoy, old) for envoy in envoys)
    assert all(trusts(envoy, {old.root_serial}, exactly=True) for envoy in envoys)

    with ExitStack() as traffic:
        loops = [traffic.enter_context(Traffic(pair, pause=PACE)) for pair in cluster.pairs]

        # prepare: the new root is trusted everywhere before it signs anything.
        new = prepared_generation(postgres_url, admin.step("prepare"))
        both = {old.root_serial, new.root_serial}
        wait_all(envoys, lambda e: trusts(e, both, exactly=True), "trust both roots", DEADLINE)
        assert all(presents(cluster, envoy, old) for envoy in envoys)

        # activate: the new intermediate signs; every agent re-issues within the 2 s window.
        changes = admin.step("activate").changes
        assert {(c.id, c.after) for c in changes} == {
            (new.root_id, "active"),
            (new.intermediate_id, "active"),
        }
        assert [c.id for c in changes if c.signs] == [new.intermediate_id]
        wait_all(
            envoys,
            lambda e: presents(cluster, e, new),
            "a leaf from the new intermediate",
            DEADLINE,
        )
        wait_until(lambda: in_use(admin, old.root_id) == 0, "the old root's IN_USE to reach 0")

        # retire: the old root leaves every Envoy's trust.
        changes = admin.step("retire").changes
        assert {(c.id, c.before, c.after) for c in changes} == {
            (old.root_id, "active", "retired"),
            (old.intermediate_id, "active", "retired"),
        }
        wait_all(
            envoys,
            lambda e: trusts(e, {new.root_serial}, exactly=True),
            "trust the new root only",
            DEADLINE,
        )
        # Traffic goes on after the retirement too.
        after_retire = [loop.ok for loop in loops]
        wait_until(
            lambda: all(loop.ok >= ok + 20 for loop, ok in zip(loops, after_retire, strict=True)),
            "20 more requests through each pair after the retirement",
        )

    for n, loop in enumerate(loops):
        assert loop.failures == [], (n, len(loop.failures), loop.failures[:5])
        assert loop.ok > MIN_REQUESTS, (n, loop.ok)
    assert [envoy.pid for envoy in envoys] == pids, "an Envoy restarted"
    assert all(envoy.running for envoy in envoys)
    assert_leaf_from(cluster, new)
    for envoy in envoys:
        assert old.root_serial not in envoy.trusted_ca_serials()
    for workload_ in cluster.workloads:  # re-issued because the signer changed, not renewed
        assert workload_.metric(REISSUES, reason="signer_changed") >= 1
        assert workload_.metric(REISSUES, reason="revoked_or_untrusted") == 0
    for pair in cluster.pairs:
        ok_request(pair.a, "envoy-b")
        ok_request(pair.b, "envoy-a")

    status, events = admin.status_and_events()
    assert status["signing_key_id"] == new.intermediate_id
    assert status["trusted_root_ids"] == [new.root_id]
    assert authority(status, old.root_id)["state"] == "retired"
    for action, authority_id in (
        ("prepare", new.root_id),
        ("activate", new.intermediate_id),
        ("retire", old.root_id),
    ):
        done = [e for e in events_by(events, action, "done") if e["authority_id"] == authority_id]
        assert len(done) == 1, (action, events)
        assert done[0]["actor"] == ADMIN
    assert all(e["actor"] == ADMIN for e in events if e["action"] != "init")
    assert not [e for e in events if e["outcome"] != "done"], events


def test_retire_is_refused_while_old_certificates_are_in_use(
    postgres_url: str, tmp_path: Path, stack: ExitStack
) -> None:
    """With an hour's re-issue window, right after activate every agent still holds its
    old-root certificate: ``root retire`` exits 4 naming how many certificates and which SPIFFE
    IDs, changes nothing (same bundle sequence, old root still in every Envoy's trust) and is
    audited as refused. ``--force`` retires it; the agents then re-issue at once (their SVIDs no
    longer chain to a trusted root) and traffic flows again."""
    cluster = start_cluster(stack, tmp_path, postgres_url, Topology(1, LONG_WINDOW))
    envoys, admin = cluster.envoys, cluster.admin
    old = signing_generation(postgres_url)
    new = prepared_generation(postgres_url, admin.step("prepare"))
    sequence = admin.step("activate", new.root_id).sequence
    both = {old.root_serial, new.root_serial}
    wait_all(envoys, lambda e: trusts(e, both, exactly=True), "trust both roots", DEADLINE)
    wait_until(
        lambda: all(w.agent.credentials.bundles.sequence == sequence for w in cluster.workloads),
        f"every agent to hold bundle sequence {sequence} (the activation)",
    )
    assert all(presents(cluster, envoy, old) for envoy in envoys)

    refused = admin("root", "retire", old.root_id[:12], check=False)
    ids = [w.spiffe_id for w in cluster.workloads]
    assert_error(
        refused,
        4,
        f"cannot retire {old.root_id}",
        "2 unexpired certificate(s)",
        "in use by 2 identities",
        *(f"{spiffe_id} (1)" for spiffe_id in ids),
        "--force",
    )

    after, events = admin.status_and_events()
    assert after["bundle_sequence"] == sequence
    assert after["trusted_root_ids"] == [old.root_id, new.root_id]
    assert authority(after, old.root_id)["state"] == "active"
    assert authority(after, old.root_id)["in_use"] == 2
    assert all(trusts(envoy, both, exactly=True) for envoy in envoys)
    assert {w.agent.credentials.bundles.sequence for w in cluster.workloads} == {sequence}
    assert all(presents(cluster, envoy, old) for envoy in envoys)
    (refusal,) = events_by(events, "retire", "refused")
    assert refusal["actor"] == ADMIN
    assert old.root_id.startswith(refusal["authority_id"])  # as given: a prefix here
    assert "authority_in_use" in refusal["detail"]
    assert all(spiffe_id in refusal["detail"] for spiffe_id in ids)
    assert not events_by(events, "retire", "done")

    changes = admin.step("retire", old.root_id, "--force").changes
    assert {(c.id, c.after) for c in changes} == {
        (old.root_id, "retired"),
        (old.intermediate_id, "retired"),
    }
    wait_all(
        envoys,
        lambda e: trusts(e, {new.root_serial}, exactly=True) and presents(cluster, e, new),
        "trust the new root only and present a leaf from it",
        DEADLINE,
    )
    assert_leaf_from(cluster, new)
    for pair in cluster.pairs:
        ok_request(pair.a, "envoy-b")
        ok_request(pair.b, "envoy-a")
    (forced,) = [
        e for e in events_by(admin.events(), "retire", "done") if e["authority_id"] == old.root_id
    ]
    assert forced["actor"] == ADMIN
    assert "forced with 2 certificate(s) in use" in forced["detail"]


def test_revoke_forces_every_agent_to_reissue_at_once(
    postgres_url: str, tmp_path: Path, stack: ExitStack
) -> None:
    """With an hour's re-issue window, ``root revoke`` of the old root (a key compromise) makes
    every agent re-issue from the new authority within seconds; the old root leaves every
    Envoy's trust, and requests on fresh connections work again. Revoking the authority that
    signs is refused."""
    cluster = start_cluster(stack, tmp_path, postgres_url, Topology(1, LONG_WINDOW))
    envoys, admin = cluster.envoys, cluster.admin
    old = signing_generation(postgres_url)
    new = prepared_generation(postgres_url, admin.step("prepare"))
    admin.step("activate")
    wait_all(
        envoys,
        lambda e: trusts(e, {old.root_serial, new.root_serial}, exactly=True),
        "trust both roots",
        DEADLINE,
    )
    assert all(presents(cluster, envoy, old) for envoy in envoys)

    refused = admin("root", "revoke", new.intermediate_id, check=False)
    assert_error(refused, 4, f"cannot revoke {new.intermediate_id}", "signs certificates now")

    due = [_next_renewal(w) for w in cluster.workloads]
    started = time.monotonic()
    changes = admin.step("revoke", old.root_id).changes
    revoked_at = datetime.now(UTC) + timedelta(seconds=10)
    assert {(c.id, c.before, c.after) for c in changes} == {
        (old.root_id, "active", "revoked"),
        (old.intermediate_id, "active", "revoked"),
    }
    wait_all(
        envoys,
        lambda e: trusts(e, {new.root_serial}, exactly=True) and presents(cluster, e, new),
        "trust the new root only and present a leaf from it",
        DEADLINE,
    )
    elapsed = time.monotonic() - started
    window = LONG_WINDOW.total_seconds()
    assert elapsed < window / 100, f"re-issue took {elapsed:.1f}s (window {window:.0f}s)"
    assert_leaf_from(cluster, new)
    for pair in cluster.pairs:
        ok_request(pair.a, "envoy-b")
        ok_request(pair.b, "envoy-a")
    _assert_forced(cluster.workloads, due, revoked_at)

    status, events = admin.status_and_events()
    assert status["revoked_key_ids"] == sorted([old.root_id, old.intermediate_id])
    assert status["trusted_root_ids"] == [new.root_id]
    assert authority(status, old.root_id)["in_use"] == 0
    (revoked,) = [
        e for e in events_by(events, "revoke", "done") if e["authority_id"] == old.root_id
    ]
    assert revoked["actor"] == ADMIN
    (refusal,) = events_by(events, "revoke", "refused")
    assert refusal["authority_id"] == new.intermediate_id
    assert refusal["actor"] == ADMIN


def _next_renewal(workload_: Workload) -> datetime:
    """When the agent of ``workload_`` will re-issue unless the bundle forces it sooner."""
    manager = workload_.agent.agent.manager
    assert manager is not None
    due = manager.next_renewal
    assert due is not None, "the agent holds no SVID"
    return due


def _assert_forced(workloads: list[Workload], due: list[datetime], revoked_at: datetime) -> None:
    """At activate each agent drew a point of the hour's window to re-issue at (``due``); one
    whose point came before the revoke (and the seconds the change takes to reach it) moves by
    itself. Every other agent must have been forced by the revoke."""
    not_due = [w for w, at in zip(workloads, due, strict=True) if at > revoked_at]
    assert not_due, f"every agent's drawn point was before the revoke: {due}"
    for workload_ in not_due:
        assert workload_.metric(REISSUES, reason="revoked_or_untrusted") >= 1
