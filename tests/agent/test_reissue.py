"""When the trust bundle calls for re-issuing the X.509-SVID before its renewal point: at once
when its chain rests on a revoked or untrusted authority, at a random point of the bundle's window
when the CA signs with another authority, not at all otherwise. First the pure decision on real
certificates, then the agent acting on it against a real CA."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration

from ca.api.methods import TrustBundleMessage
from ca.core.authority import SigningAuthority, build_intermediate
from ca.core.csr_policy import TtlPolicy
from ca.core.issuer import Issuer
from ca.core.keys import KeyType, generate_private_key, key_id
from sds.bundle_watch import bundles_from_message
from sds.core.credentials import Bundles, Svid
from sds.core.reissue import Urgency, reissue_deadline, reissue_needed
from sds.credential_store import CredentialStore
from sds.svid_manager import SvidManager
from tests.agent.conftest import StartAgent
from tests.agent.harness import RunningAgent, agent_settings, running_agent, write_token
from tests.agent.workload_ca import WorkloadCa
from tests.factories import TRUST_DOMAIN
from tests.server.conftest import Served

NOW = datetime(2026, 3, 1, tzinfo=UTC)
LONG_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class World:
    """A CA (root and intermediate), an SVID from each of them, a second intermediate under the
    same root (the authority a rotation moves to), and an unrelated CA."""

    ca: WorkloadCa
    svid: Svid  # signed by the intermediate
    root_signed: Svid  # signed by the root itself: the chain is the leaf alone
    next_signer: SigningAuthority
    stranger: WorkloadCa

    @property
    def root_id(self) -> str:
        return self.ca.root.key_id

    @property
    def intermediate_id(self) -> str:
        return self.ca.intermediate.key_id

    def bundles(
        self, signer: str = "", *, revoked: tuple[str, ...] = (), with_stranger: bool = False
    ) -> Bundles:
        roots = [self.ca.root.certificate]
        if with_stranger:
            roots.append(self.stranger.root.certificate)
        return Bundles(
            {TRUST_DOMAIN: tuple(roots)},
            sequence=2,
            signing_key_id=signer,
            reissue_window=LONG_WINDOW,
            revoked_key_ids=frozenset(revoked),
        )


@pytest.fixture(scope="module")
def world() -> World:
    ca = WorkloadCa()
    root_only = WorkloadCa()  # the same CA, issuing from its root
    root_only.root, root_only.issuer = ca.root, Issuer(TRUST_DOMAIN, ca.root, TtlPolicy())
    next_signer = build_intermediate(
        TRUST_DOMAIN,
        generate_private_key(KeyType.EC_P256),
        ca.root,
        now=datetime.now(UTC),
        ttl=timedelta(days=1),
    )
    return World(ca, ca.svid(), root_only.svid(), next_signer, WorkloadCa())


Case = Callable[[World], tuple[Svid | None, Bundles]]


def case(name: str, build: Case, expected: Urgency | None) -> pytest.ParameterSet:
    return pytest.param(build, expected, id=name)


CASES = [
    case("same signer", lambda w: (w.svid, w.bundles(w.intermediate_id)), None),
    case("signer not named yet (--ca-root only)", lambda w: (w.svid, w.bundles()), None),
    case(
        "a new root trusted, same signer",
        lambda w: (w.svid, w.bundles(w.intermediate_id, with_stranger=True)),
        None,
    ),
    case("no SVID held", lambda w: (None, w.bundles(w.next_signer.key_id)), None),
    case(
        "another signer",
        lambda w: (w.svid, w.bundles(w.next_signer.key_id)),
        Urgency.WITHIN_WINDOW,
    ),
    case(
        "revoked intermediate in the chain",
        lambda w: (w.svid, w.bundles(w.next_signer.key_id, revoked=(w.intermediate_id,))),
        Urgency.NOW,
    ),
    case(
        "revoked root the chain rests on",
        lambda w: (w.svid, w.bundles(w.intermediate_id, revoked=(w.root_id,))),
        Urgency.NOW,
    ),
    case(
        "revoked authority not in the chain",
        lambda w: (w.svid, w.bundles(w.intermediate_id, revoked=(w.next_signer.key_id,))),
        None,
    ),
    case(
        "leaf does not chain to the roots",
        lambda w: (w.stranger.svid(), w.bundles(w.intermediate_id)),
        Urgency.NOW,
    ),
    case("root-signed leaf, same signer", lambda w: (w.root_signed, w.bundles(w.root_id)), None),
    case(
        "root-signed leaf, another signer",
        lambda w: (w.root_signed, w.bundles(w.intermediate_id)),
        Urgency.WITHIN_WINDOW,
    ),
    case(
        "root-signed leaf, root revoked",
        lambda w: (w.root_signed, w.bundles(w.root_id, revoked=(w.root_id,))),
        Urgency.NOW,
    ),
]


@pytest.mark.parametrize(("build", "expected"), CASES)
def test_the_decision(world: World, build: Case, expected: Urgency | None) -> None:
    svid, bundles = build(world)
    decision = reissue_needed(svid, bundles)
    assert (decision.urgency if decision is not None else None) is expected


def test_the_decision_says_which_authorities(world: World) -> None:
    """The log line must let an operator see why an SVID was re-issued."""
    revoked = reissue_needed(world.svid, world.bundles(revoked=(world.intermediate_id,)))
    assert revoked is not None
    assert revoked.reason == "revoked_or_untrusted"
    assert world.intermediate_id in revoked.detail
    moved = reissue_needed(world.svid, world.bundles(world.next_signer.key_id))
    assert moved is not None
    assert moved.reason == "signer_changed"
    assert world.intermediate_id in moved.detail
    assert world.next_signer.key_id in moved.detail


def test_the_deadline_is_within_the_window() -> None:
    window = timedelta(seconds=30)
    rng = random.Random(5)
    offsets = [reissue_deadline(NOW, window, rng) - NOW for _ in range(500)]
    assert all(timedelta(0) <= offset <= window for offset in offsets)
    # uniform: a fleet spreads over the whole window, not a corner of it
    assert min(offsets) < window * 0.05
    assert max(offsets) > window * 0.95


def test_a_zero_window_is_now() -> None:
    assert reissue_deadline(NOW, timedelta(0), random.Random(5)) == NOW


class FixedDraw(random.Random):
    """A random source whose every draw is ``value``, so that timings are exact."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_the_deadline_follows_the_draw() -> None:
    deadline = reissue_deadline(NOW, timedelta(seconds=30), FixedDraw(0.05))
    assert deadline == NOW + timedelta(seconds=1.5)


def message(ca: WorkloadCa, window: Duration | None, revoked: list[str]) -> TrustBundleMessage:
    out = TrustBundleMessage(
        trust_domain=TRUST_DOMAIN.name,
        sequence=3,
        root_certificates=[ca.bundles().pem().decode()],
        signing_key_id=ca.intermediate.key_id,
        revoked_key_ids=revoked,
    )
    if window is not None:
        out.reissue_window.CopyFrom(window)
    return out


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        (None, timedelta(0)),  # a CA from before the field
        (Duration(seconds=90, nanos=500_000_000), timedelta(seconds=90.5)),
        (Duration(seconds=-5), timedelta(0)),  # a confused CA: at once is the safe reading
    ],
)
def test_the_bundle_message_carries_window_and_revocations(
    world: World, window: Duration | None, expected: timedelta
) -> None:
    revoked = [world.root_id, world.intermediate_id]
    bundles = bundles_from_message(message(world.ca, window, revoked), world.ca.bundles())
    assert bundles.reissue_window == expected
    assert bundles.revoked_key_ids == set(revoked)
    assert bundles.signing_key_id == world.intermediate_id


# The agent acting on the decision, against a real CA.


def metric(agent: RunningAgent, name: str, **labels: str) -> float:
    return agent.agent.metrics.registry.get_sample_value(name, labels) or 0.0


def reissues(agent: RunningAgent, reason: str) -> float:
    return metric(agent, "meshca_agent_reissues_total", reason=reason)


def another_key_id() -> str:
    """The id of an authority the CA does not know: what a rotation names as the new signer."""
    return key_id(generate_private_key(KeyType.EC_P256).public_key())


def apply_bundle(agent: RunningAgent, new: Bundles) -> datetime | None:
    """Apply ``new`` as the bundle stream does (held, then handed to the SVID manager), in the
    agent's loop; the manager's next renewal once it has decided."""
    manager, store = agent.agent.manager, agent.agent.store
    assert manager is not None
    assert store is not None

    async def changed(manager: SvidManager, store: CredentialStore) -> datetime | None:
        old = store.current.bundles
        store.set_bundles(new)
        manager.bundle_changed(old, new)
        return manager.next_renewal

    return agent.call(changed(manager, store))


@contextmanager
def agent_drawing(served: Served, sockets: Path, value: float) -> Iterator[RunningAgent]:
    """A ready agent whose every random draw is ``value`` (jitter, backoff, re-issue point)."""
    token_file = write_token(served.minter, sockets, "default", "web")
    settings = agent_settings(served.ca, sockets, token_file)
    with running_agent(settings, rng=FixedDraw(value)) as agent:
        agent.wait_ready()
        yield agent


def test_a_new_signer_is_moved_to_at_the_drawn_point_of_the_window(
    sqlite_url: str, serve: Callable[..., Served], sockets: Path
) -> None:
    """30 s window, every draw 0.05: the re-issue is 1.5 s after the bundle, not at once (the
    SVID lives 24 hours). The CA keeps signing with the old authority, so the new SVID is
    re-issued again, no sooner than the next draw."""
    with agent_drawing(serve(sqlite_url), sockets, 0.05) as agent:
        held = agent.wait_until_bundle_synced()
        new = dataclasses.replace(
            held.bundles,
            sequence=held.bundles.sequence + 1,
            signing_key_id=another_key_id(),
            reissue_window=timedelta(seconds=30),
        )
        started, wall = time.monotonic(), datetime.now(UTC)
        due = apply_bundle(agent, new)
        assert due is not None
        assert wall + timedelta(seconds=1.5) <= due <= datetime.now(UTC) + timedelta(seconds=1.5)
        assert reissues(agent, "signer_changed") == 1
        renewed = agent.wait_new_svid(held, timeout=10)
        first = time.monotonic() - started
        assert 1.45 <= first < 1.5 + 5  # the margin: a loaded machine issuing one SVID
        again = agent.wait_new_svid(renewed, timeout=10)
        assert time.monotonic() - started - first >= 1.45
        assert again.svid is not None
        assert reissues(agent, "revoked_or_untrusted") == 0


def test_a_ca_still_on_the_old_signer_is_not_hammered(
    sqlite_url: str, serve: Callable[..., Served], start_agent: StartAgent
) -> None:
    """No window: the first re-issue is at once; the CA answers from the old authority again, so
    the agent repeats, but after a growing wait (at least half of 1 s, then of 2 s), not in a
    tight loop."""
    served = serve(sqlite_url)
    agent = start_agent(served)
    held = agent.wait_until_bundle_synced()
    new = dataclasses.replace(
        held.bundles,
        sequence=held.bundles.sequence + 1,
        signing_key_id=another_key_id(),
        reissue_window=timedelta(0),
    )
    apply_bundle(agent, new)
    arrivals: list[float] = []
    current = held
    for _ in range(3):
        current = agent.wait_new_svid(current, timeout=10)
        arrivals.append(time.monotonic())
    assert arrivals[1] - arrivals[0] >= 0.45
    assert arrivals[2] - arrivals[1] >= 0.95
    assert reissues(agent, "signer_changed") >= 3


def test_a_revoked_issuer_is_left_at_once_whatever_the_window(
    sqlite_url: str, serve: Callable[..., Served], start_agent: StartAgent
) -> None:
    served = serve(sqlite_url)
    agent = start_agent(served)
    held = agent.wait_until_bundle_synced()
    new = dataclasses.replace(
        held.bundles,
        sequence=held.bundles.sequence + 1,
        signing_key_id=another_key_id(),
        reissue_window=LONG_WINDOW,
        revoked_key_ids=frozenset({held.bundles.signing_key_id}),  # the SVID's issuer
    )
    started = time.monotonic()
    apply_bundle(agent, new)
    assert reissues(agent, "revoked_or_untrusted") == 1
    assert reissues(agent, "signer_changed") == 0
    renewed = agent.wait_new_svid(held, timeout=5)
    assert time.monotonic() - started < 5
    assert renewed.svid is not None


def test_a_bundle_naming_the_svids_own_issuer_changes_nothing(
    sqlite_url: str, serve: Callable[..., Served], start_agent: StartAgent
) -> None:
    """A new root prepared (sequence bumped, another authority revoked, a window announced) but
    the same signer: the SVID keeps its renewal point, drawn once when it was obtained."""
    served = serve(sqlite_url)
    agent = start_agent(served)
    held = agent.wait_until_bundle_synced()
    manager = agent.agent.manager
    assert manager is not None
    before = manager.next_renewal
    assert before is not None
    assert before > datetime.now(UTC) + timedelta(hours=6)  # 24 h SVID, half-way with jitter
    new = dataclasses.replace(
        held.bundles,
        sequence=held.bundles.sequence + 1,
        reissue_window=timedelta(seconds=1),
        revoked_key_ids=frozenset({another_key_id()}),
    )
    for _ in range(3):
        assert apply_bundle(agent, new) == before
    assert reissues(agent, "signer_changed") == 0
    assert reissues(agent, "revoked_or_untrusted") == 0
    assert agent.credentials.svid == held.svid


def test_a_bundle_back_on_the_svids_signer_cancels_a_pending_reissue(
    sqlite_url: str, serve: Callable[..., Served], sockets: Path
) -> None:
    """A signer change rolled back before the drawn point (half-way through a one-hour window):
    nothing is left to re-issue, the renewal point is the SVID's own again."""
    with agent_drawing(serve(sqlite_url), sockets, 0.5) as agent:
        held = agent.wait_until_bundle_synced()
        manager = agent.agent.manager
        assert manager is not None
        renewal_point = manager.next_renewal
        assert renewal_point is not None
        moved = dataclasses.replace(
            held.bundles, signing_key_id=another_key_id(), reissue_window=LONG_WINDOW
        )
        scheduled = apply_bundle(agent, moved)
        assert scheduled is not None
        assert scheduled - datetime.now(UTC) > LONG_WINDOW / 2 - timedelta(seconds=5)
        assert scheduled < renewal_point
        assert apply_bundle(agent, held.bundles) == renewal_point
        assert agent.credentials.svid == held.svid
