"""Several CA replicas on one PostgreSQL database, as an operator runs them: real
``meshca ca serve`` subprocesses (TLS, one worker each, their own ports), the admin CLI as a
subprocess, real agents and real gRPC clients.

What users rely on: a lifecycle step made anywhere reaches every replica at once (NOTIFY, not
polling); admins racing cannot corrupt the CA; a replica killed under load loses no certificate
and its clients carry on through the other; SQLite refuses a second replica; the automatic
intermediate rotation happens once although every replica checks."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from ca.api import methods
from ca.core.errors import FailedPrecondition, InvalidRequest
from ca.core.keys import key_id
from ca.core.lifecycle import LifecycleAction
from ca.core.records import CaEventRecord
from ca.storage.authority_store import AuthorityInfo, EventQuery
from sds.settings import AgentSettings
from tests.agent.harness import running_agent, socket_dir
from tests.replicas.harness import (
    READY_TIMEOUT,
    BundleStream,
    Deployment,
    LoadRun,
    metric,
    reported_changes,
    reported_sequence,
)
from tests.server.conftest import spiffe_id, uri_sans, wait_until

#: Polling once a minute: anything a replica learns within seconds it learnt from NOTIFY.
NO_POLLING = {"MESHCA_BUNDLE_REFRESH_INTERVAL": "60s"}

#: How soon after the admin command returns every replica's bundle stream carries the change.
NOTIFY_DEADLINE = 1.0

RELOADS = "meshca_ca_reloads_total"
ROTATIONS = "meshca_ca_intermediate_rotations_total"


def _kid(cert: x509.Certificate) -> str:
    return key_id(cert.public_key())  # type: ignore[arg-type]


def _root_ids(message: methods.TrustBundleMessage) -> set[str]:
    return {_kid(x509.load_pem_x509_certificate(pem.encode())) for pem in message.root_certificates}


def _roots_pem(message: methods.TrustBundleMessage) -> str:
    return "".join(message.root_certificates)


def _events(deployment: Deployment) -> list[CaEventRecord]:
    """Every lifecycle event, oldest first."""
    with deployment.runtime() as runtime:
        return runtime.authorities.events(EventQuery(limit=100_000))[::-1]


def _done(events: list[CaEventRecord], action: LifecycleAction) -> list[CaEventRecord]:
    return [e for e in events if e.action == action.value and e.outcome == "done"]


# --- 1. NOTIFY ------------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_step_through_the_cli_reaches_every_replica_within_a_second(
    deployment: Deployment,
) -> None:
    # Both replicas start together on the empty database (one migrates and creates the CA under
    # the start-up lock, the other then serves it). They poll once a minute only.
    replicas = deployment.start_ready("1", "2", env=NO_POLLING)
    root_pem = deployment.root_pem()
    token = deployment.token("default", "watcher")
    streams = [BundleStream(replica, root_pem, token) for replica in replicas]
    try:
        first = [stream.first().message for stream in streams]
        assert {m.sequence for m in first} == {1}
        (old_signer,) = {m.signing_key_id for m in first}
        (old_roots,) = {frozenset(_root_ids(m)) for m in first}
        notified_before = [r.metric(RELOADS, trigger="notify") for r in replicas]

        prepared = deployment.admin("root", "prepare")
        returned = time.monotonic()
        prepare_sequence = reported_sequence(prepared.stdout)
        assert prepare_sequence == 2, prepared.describe()
        changes = {c.role: c for c in reported_changes(prepared.stdout)}
        new_root, new_intermediate = changes["root"].id, changes["intermediate"].id
        assert changes["root"].after == changes["intermediate"].after == "prepared"
        (step,) = {e.at for e in _done(_events(deployment), LifecycleAction.PREPARE)}

        after_return, after_step = [], []
        for stream in streams:
            got = stream.wait_until(
                lambda m: m.sequence >= prepare_sequence,
                timeout=10 * NOTIFY_DEADLINE,
                what="the prepared root",
            )
            assert got.message.sequence == prepare_sequence
            assert _root_ids(got.message) == {*old_roots, new_root}
            assert got.message.signing_key_id == old_signer, "prepare must not change the signer"
            after_return.append(got.at - returned)
            after_step.append(got.wall - step.timestamp())
        print(
            "\nroot prepare reached the bundle streams of replicas 1 and 2 "
            f"{', '.join(f'{s * 1000:.0f}' for s in after_step)} ms after the step's timestamp, "
            f"{', '.join(f'{s * 1000:+.0f}' for s in after_return)} ms after the CLI returned "
            "(negative: before its process had exited)"
        )
        assert max(after_return) < NOTIFY_DEADLINE, after_return

        activated = deployment.admin("root", "activate")
        returned = time.monotonic()
        activate_sequence = reported_sequence(activated.stdout)
        assert activate_sequence == 3, activated.describe()
        assert [c.id for c in reported_changes(activated.stdout) if c.signs] == [new_intermediate]
        for stream in streams:
            got = stream.wait_until(
                lambda m: m.signing_key_id == new_intermediate,
                timeout=10 * NOTIFY_DEADLINE,
                what="the activated intermediate",
            )
            assert got.message.sequence == activate_sequence
            assert got.at - returned < NOTIFY_DEADLINE
            root_pem = _roots_pem(got.message)

        for replica in replicas:
            with replica.channel(root_pem) as channel:
                leaf, intermediate, root = deployment.create_certificate(channel, "shop", "cart")
            assert uri_sans(leaf) == [spiffe_id("shop", "cart")]
            assert (_kid(intermediate), _kid(root)) == (new_intermediate, new_root), (
                f"replica {replica.name} still signs from the old authority"
            )

        for replica, before in zip(replicas, notified_before, strict=True):
            metrics = replica.metrics()
            assert metric(metrics, RELOADS, trigger="notify") >= before + 2, replica.describe()
            assert metric(metrics, RELOADS, trigger="poll") == 0, "polling must not explain this"
    finally:
        for stream in streams:
            stream.close()


# --- 2. racing admins -----------------------------------------------------------------------


@dataclass(frozen=True)
class AdminRun:
    """What one racing admin asked for and what it got: the bundle sequence of its change, or
    that it changed nothing, or was refused."""

    who: str
    sequence: int | None = None
    refused: bool = False
    new_root: str | None = None


def _run_cli(command: tuple[str, ...], process: subprocess.Popen[str]) -> AdminRun:
    stdout, stderr = process.communicate(timeout=120)
    described = f"meshca {' '.join(command)} exited {process.returncode}\n{stdout}{stderr}"
    assert "Traceback" not in stderr, described
    if process.returncode == 4:
        # refused, saying why in one line: no prepared root left, or several (name one)
        (line,) = stderr.splitlines()
        assert line.startswith("meshca: error: "), described
        assert "to activate" in line or "give an ID" in line, described
        return AdminRun(described, refused=True)
    assert process.returncode == 0, described
    sequence = reported_sequence(stdout)
    if sequence is None:
        assert "nothing to do" in stdout, described
    roots = [c.id for c in reported_changes(stdout) if c.role == "root" and c.before == "new"]
    return AdminRun(described, sequence, new_root=roots[0] if roots else None)


@pytest.mark.postgres
def test_racing_admins_cannot_corrupt_the_state(deployment: Deployment) -> None:
    (replica,) = deployment.start_ready("1")
    with deployment.runtime() as runtime:
        prepared = runtime.prepare_root(from_dir=None, actor="test-admin")
    assert prepared.sequence == 2
    baseline = 2  # init, prepare
    (first_root,) = [c.authority_id for c in prepared.changes if c.role.value == "root"]

    # Round 1: admins at their terminals, all at once: three activate the prepared root, one
    # activates "the" prepared root (which one, if any, depends on who came first), two prepare
    # more roots.
    commands = [
        *[("root", "activate", first_root)] * 3,
        ("root", "activate"),
        *[("root", "prepare")] * 2,
    ]
    processes = [deployment.admin_process(*command) for command in commands]
    runs = [_run_cli(c, p) for c, p in zip(commands, processes, strict=True)]
    activations_of_first = [r for r in runs[:3] if r.sequence is not None]
    assert len(activations_of_first) + (runs[3].sequence is not None) >= 1
    new_roots = [run.new_root for run in runs[4:]]
    assert None not in new_roots, f"adding a root conflicts with nothing: {runs[4:]}"

    # Round 2: admins through the store, released together by a barrier so that their steps
    # really meet at the row lock: three activate each of the two new roots (the signer
    # ping-pongs), one activates without naming a root, two prepare.
    targets: list[str | None] = [*new_roots * 3, None]
    verbs = [*["activate"] * len(targets), "prepare", "prepare"]
    barrier = threading.Barrier(len(verbs))
    lock = threading.Lock()

    def admin(verb: str, target: str | None) -> None:
        with deployment.runtime() as runtime:
            runtime.authorities.require_identity()
            barrier.wait(30)
            try:
                outcome = (
                    runtime.prepare_root(from_dir=None, actor="racing-admin")
                    if verb == "prepare"
                    else runtime.authorities.activate(
                        target, actor="racing-admin", now=datetime.now(UTC)
                    )
                )
                run = AdminRun(f"{verb} {target}", outcome.sequence if outcome else None)
            except (FailedPrecondition, InvalidRequest) as refusal:
                run = AdminRun(f"{verb} {target}: {refusal}", refused=True)
        with lock:
            runs.append(run)

    threads = [
        threading.Thread(target=admin, args=(verb, target))
        for verb, target in zip(verbs, [*targets, None, None], strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(runs) == len(commands) + len(verbs), "an admin thread crashed"

    # The end state, as the CLI and the database tell it.
    status = json.loads(deployment.admin("root", "status", "--format", "json").stdout)
    events = _events(deployment)
    done = [e for e in events if e.outcome == "done"]
    steps: dict[int, list[CaEventRecord]] = defaultdict(list)
    for event in done:
        steps[event.bundle_sequence].append(event)
    sequences = [r.sequence for r in runs if r.sequence is not None]
    final = status["bundle_sequence"]

    # every change got a sequence of its own, none was lost or doubled, and the sequence counts
    # them: 1 (init) + 1 (the first prepare) + the changes the racing admins made
    assert len(sequences) == len(set(sequences)), f"two steps reported one sequence: {runs}"
    assert final == baseline + len(sequences)
    assert set(sequences) == set(range(baseline + 1, final + 1))
    assert sorted(steps) == list(range(1, final + 1)), sorted(steps)
    for sequence, records in steps.items():
        assert len({(e.action, e.actor, e.at) for e in records}) == 1, (
            f"bundle sequence {sequence} was given to two steps: {records}"
        )
    # every refusal was recorded as one
    assert sum(e.outcome == "refused" for e in events) == sum(r.refused for r in runs)

    # one signer, one an activation named, active, under an active root
    signing = [a for a in status["authorities"] if a["signing"] == "yes"]
    assert len(signing) == 1, status
    (signer,) = signing
    assert status["signing_key_id"] == signer["id"]
    activations = sorted(
        (e for e in done if e.detail.endswith("signs from now on")),
        key=lambda e: e.bundle_sequence,
    )
    assert signer["id"] in {e.authority_id for e in activations}
    assert signer["state"] == "active"
    by_id = {a["id"]: a for a in status["authorities"]}
    assert by_id[signer["parent_id"]]["state"] == "active"
    roots = [a for a in status["authorities"] if a["role"] == "root"]
    assert len(roots) == 2 + 2 + 2, "every prepare stored its root"
    assert sorted(status["trusted_root_ids"]) == sorted(a["id"] for a in roots)

    # and the replica serving through the race ends on the same state
    stream = BundleStream(replica, deployment.root_pem(), deployment.token())
    try:
        served = stream.wait_until(
            lambda m: m.sequence == final, timeout=10, what="the final bundle sequence"
        ).message
    finally:
        stream.close()
    assert served.signing_key_id == signer["id"]
    assert _root_ids(served) == set(status["trusted_root_ids"])
    print(
        f"\n{len(sequences)} changes made and {sum(r.refused for r in runs)} refused by "
        f"{len(commands)} CLI processes and {len(verbs)} threads; bundle sequence {final}"
    )

    # the activation committed last is the one that signs
    assert activations[-1].authority_id == signer["id"], (
        f"sequence {activations[-1].bundle_sequence} said {activations[-1].authority_id} signs "
        f"from now on, yet {signer['id']} signs"
    )


# --- 3. SIGKILL under load ------------------------------------------------------------------

LOAD_RATE = 30.0
BEFORE_KILL = 15
AFTER_KILL = 45


@pytest.mark.postgres
def test_sigkill_of_a_replica_under_load_loses_nothing(deployment: Deployment) -> None:
    one, two = deployment.start_ready("1", "2")
    root_pem = deployment.root_pem()
    with socket_dir() as sockets:
        (sockets / "ca-root.pem").write_text(root_pem)
        token_file = sockets / "agent.token"
        token_file.write_text(deployment.token("default", "agent"))
        settings = AgentSettings(
            ca_address=[one.address, two.address],
            ca_mtls_address=[one.mtls_address, two.mtls_address],
            ca_root=sockets / "ca-root.pem",
            token_file=token_file,
            sds_socket=sockets / "sds.sock",
            metrics_listen="127.0.0.1:0",
        )
        with running_agent(settings) as agent:
            agent.wait_ready()
            agent.wait_until_bundle_synced()

            load = LoadRun(deployment, [one, two], root_pem, LOAD_RATE)
            try:
                # SIGKILL once replica 1 has served a few, while it is answering one
                wait_until(
                    lambda: (
                        sum(c.served_by == "1" for c in load.calls) >= BEFORE_KILL
                        and load.in_flight("1") > 0
                    ),
                    timeout=60,
                    what=f"{BEFORE_KILL} certificates from replica 1 and a call in flight",
                    interval=0.001,
                )
                killed_at = time.monotonic()
                one.kill()
                wait_until(
                    lambda: sum(c.started > killed_at for c in load.calls) >= AFTER_KILL,
                    timeout=60,
                    what=f"{AFTER_KILL} calls after the kill",
                )
            finally:
                calls = load.stop()

            # every call got its certificate, those after the kill through replica 2
            assert all(c.serial is not None for c in calls), [c for c in calls if not c.serial]
            after = [c for c in calls if c.started > killed_at]
            assert len(after) >= AFTER_KILL
            assert {c.served_by for c in after} == {"2"}
            failures = [a for c in calls for a in c.attempts if a.code is not None]
            assert {a.replica for a in failures} <= {"1"}, failures
            in_flight = [a for a in failures if a.started <= killed_at]

            # the ledger holds every certificate a client received, each once
            received = [c.serial for c in calls]
            assert len(set(received)) == len(received), "a serial was handed out twice"
            ledger = json.loads(
                deployment.admin(
                    "audit", "certs", "--namespace", "load", "--limit", "100000",
                    "--format", "json",
                ).stdout
            )  # fmt: skip
            recorded = [row["serial"] for row in ledger]
            assert len(set(recorded)) == len(recorded), "a serial is in the ledger twice"
            missing = set(received) - set(recorded)
            assert not missing, f"{len(missing)} certificates handed out are not in the ledger"
            never_received = set(recorded) - set(received)
            print(
                f"\n{len(calls)} calls ({len(calls) - len(after)} before the kill, {len(after)} "
                f"after); {len(in_flight)} failed on replica 1 in flight at the kill "
                f"({Counter(a.code.name for a in in_flight if a.code)}), "
                f"{len(failures) - len(in_flight)} more were refused by it afterwards; "
                f"{len(never_received)} ledger rows never reached a client"
            )
            assert len(never_received) <= len(in_flight)

            # the agent given both replicas carries on with the survivor
            svid = agent.credentials.svid
            assert svid is not None
            assert svid.not_after > datetime.now(UTC)
            renewed = agent.renew_now().svid
            assert renewed is not None
            assert renewed.serial_hex != svid.serial_hex
            with deployment.runtime() as runtime:
                prepared = runtime.prepare_root(from_dir=None, actor="test-admin")
            (new_root,) = [c.authority_id for c in prepared.changes if c.role.value == "root"]
            wait_until(
                lambda: new_root in {_kid(r) for r in agent.credentials.bundles.all_roots()},
                timeout=30,
                what="the agent's bundle stream (now on replica 2) to bring the new root",
            )
    assert two.process.poll() is None, two.describe()
    assert two.http("/readyz")[0] == 200


# --- 4. SQLite ------------------------------------------------------------------------------


def test_a_second_replica_on_sqlite_is_refused(sqlite_deployment: Deployment) -> None:
    deployment = sqlite_deployment
    (first,) = deployment.start_ready("1")

    second = deployment.start("2")
    try:
        code = second.process.wait(READY_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a second replica on the SQLite file did not give up:\n{second.describe()}")
    assert code == 3, second.describe()
    lines = second.stderr.splitlines()
    assert len(lines) == 1, second.describe()
    assert lines[0].startswith("meshca: error: "), second.describe()
    assert "SQLite supports one replica" in lines[0]
    assert "PostgreSQL" in lines[0]
    assert f"pid {first.process.pid}" in lines[0], "the message names the replica holding it"

    # the first replica never noticed
    assert first.http("/readyz")[0] == 200
    root_pem = deployment.root_pem()
    with first.channel(root_pem) as channel:
        assert uri_sans(deployment.create_certificate(channel)[0]) == [spiffe_id("default", "web")]
    assert first.terminate() == 0, first.describe()

    # its lock went with it
    (third,) = deployment.start_ready("3")
    with third.channel(root_pem) as channel:
        leaf = deployment.create_certificate(channel)[0]
    assert uri_sans(leaf) == [spiffe_id("default", "web")]
    assert third.terminate() == 0, third.describe()


# --- 5. automatic intermediate rotation -----------------------------------------------------

#: The short-lived intermediate: prepared at half its life, activated with a sixth left (1.5 s,
#: more than seven checks of both replicas).
SHORT_INTERMEDIATE = timedelta(seconds=9)
ROTATION_ENV = {"MESHCA_ROTATION_CHECK_INTERVAL": "200ms"}


@pytest.mark.postgres
def test_automatic_intermediate_rotation_happens_once_across_replicas(
    deployment: Deployment,
) -> None:
    replicas = deployment.start_ready("1", "2", env=ROTATION_ENV)
    # An admin rotates the root with a short-lived intermediate, once both replicas check; from
    # then on they must replace that intermediate themselves before it expires.
    with deployment.runtime(intermediate_ttl=SHORT_INTERMEDIATE) as runtime:
        prepared = runtime.prepare_root(from_dir=None, actor="test-admin")
        ids = {c.role.value: c.authority_id for c in prepared.changes}
        runtime.authorities.activate(ids["root"], actor="test-admin", now=datetime.now(UTC))
        short = {a.id: a for a in runtime.authorities.authorities()}[ids["intermediate"]]
    root_id = ids["root"]
    life = (short.not_after - short.not_before).total_seconds()
    assert life == SHORT_INTERMEDIATE.total_seconds()

    def rotated() -> bool:
        return bool(_done(_events(deployment), LifecycleAction.ACTIVATE_INTERMEDIATE))

    remaining = (short.not_after - datetime.now(UTC)).total_seconds()
    wait_until(rotated, timeout=remaining, what="the automatic rotation", interval=0.2)
    events = _events(deployment)
    prepares = _done(events, LifecycleAction.PREPARE_INTERMEDIATE)
    activations = _done(events, LifecycleAction.ACTIVATE_INTERMEDIATE)
    assert len(prepares) == len(activations) == 1, [*prepares, *activations]
    (prepare,), (activation,) = prepares, activations
    successor = prepare.authority_id
    assert successor is not None
    assert activation.authority_id == successor
    assert prepare.detail.startswith(f"replaces {short.id}")
    assert prepare.bundle_sequence < activation.bundle_sequence
    # on time: not before its point in the short intermediate's life, and within that life
    assert prepare.at >= short.not_before + SHORT_INTERMEDIATE / 2
    assert activation.at >= short.not_before + SHORT_INTERMEDIATE * 5 / 6
    assert activation.at < short.not_after
    pids = {f"pid {r.process.pid}" for r in replicas}
    for event in (prepare, activation):
        assert event.actor.startswith("meshca-server ")
        assert any(event.actor.endswith(f" {pid}") for pid in pids), (event.actor, pids)
    print(
        f"\nintermediate rotated: prepared at {_fraction(prepare.at, short):.2f} and activated "
        f"at {_fraction(activation.at, short):.2f} of its life (by "
        f"{prepare.actor.split(' ', 2)[-1]}, {activation.actor.split(' ', 2)[-1]})"
    )

    # the successor chains to the same root
    with deployment.runtime() as runtime:
        stored = {a.id: a for a in runtime.authorities.authorities()}
        root_pem = runtime.authorities.bundle().pem()
    assert stored[successor].parent_id == root_id
    assert stored[successor].state.value == "active"
    roots = {_kid(r): r for r in x509.load_pem_x509_certificates(root_pem.encode())}

    # both replicas sign through it (each has reloaded: NOTIFY, or its own step)
    for replica in replicas:
        with replica.channel(root_pem) as channel:
            chain: list[x509.Certificate] = []

            def signs_with_successor() -> bool:
                nonlocal chain
                chain = deployment.create_certificate(channel, "shop", "cart")
                return _kid(chain[1]) == successor

            wait_until(
                signs_with_successor,
                timeout=10,
                what=f"replica {replica.name} to sign with the new intermediate",
                interval=0.1,
            )
        leaf, intermediate, root = chain
        assert _kid(root) == root_id
        leaf.verify_directly_issued_by(intermediate)
        intermediate.verify_directly_issued_by(roots[root_id])

    # both replicas check every 200 ms; between them they made each step once
    made = [
        (r.metric(ROTATIONS, action="prepare-intermediate"),
         r.metric(ROTATIONS, action="activate-intermediate"))
        for r in replicas
    ]  # fmt: skip
    assert sum(p for p, _ in made) == 1, made
    assert sum(a for _, a in made) == 1, made

    # once the short intermediate has expired, it leaves the trusted set, once
    wait_until(
        lambda: _done(_events(deployment), LifecycleAction.RETIRE_EXPIRED),
        timeout=(short.not_after - datetime.now(UTC)).total_seconds() + 10,
        what="the expired intermediate to be retired",
        interval=0.2,
    )
    retired = _done(_events(deployment), LifecycleAction.RETIRE_EXPIRED)
    assert [e.authority_id for e in retired] == [short.id]
    assert len(_done(_events(deployment), LifecycleAction.PREPARE_INTERMEDIATE)) == 1


def _fraction(at: datetime, authority: AuthorityInfo) -> float:
    return (at - authority.not_before) / (authority.not_after - authority.not_before)
