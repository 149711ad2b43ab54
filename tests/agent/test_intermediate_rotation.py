"""Automatic intermediate rotation with short lifetimes, end to end: the CA prepares the next
intermediate at half the signing one's life and activates it with a sixth left, with no operator
action, and an agent re-issues from it within the reissue window; the expired intermediate is
retired later. Real CA (in-process, real database), real agent over real gRPC."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from cryptography import x509

from ca.core.keys import key_id
from ca.runtime import CaRuntime
from ca.server import metrics
from ca.storage.authority_store import EventQuery
from tests.agent.conftest import StartAgent
from tests.server.conftest import Served, wait_until

INTERMEDIATE_TTL = timedelta(seconds=9)


def issuer_key_id(chain: tuple[x509.Certificate, ...]) -> str:
    return key_id(chain[1].public_key())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "database", ["sqlite_url", pytest.param("postgres_url", marks=pytest.mark.postgres)]
)
def test_the_signing_intermediate_is_replaced_before_it_expires_and_agents_follow(
    database: str,
    request: pytest.FixtureRequest,
    serve: Callable[..., Served],
    start_agent: StartAgent,
) -> None:
    served = serve(
        request.getfixturevalue(database),
        intermediate_ttl=INTERMEDIATE_TTL,
        rotation_check_interval=timedelta(milliseconds=100),
        reissue_window=timedelta(milliseconds=500),
    )
    runtime = CaRuntime(served.ca.settings)
    watch = served.ca.server.watch
    assert watch is not None
    first = watch.current.service.issuer.signer
    agent = start_agent(served, "shop", "cart")
    held = agent.credentials.svid
    assert held is not None
    assert issuer_key_id(held.chain) == first.key_id
    rotations_before = metrics.INTERMEDIATE_ROTATIONS.labels("activate-intermediate")._value.get()

    # Activation happens at 5/6 of 9 s (7.5 s); the prepared one exists from 4.5 s.
    wait_until(
        lambda: watch.current.service.issuer.signer.key_id != first.key_id,
        timeout=INTERMEDIATE_TTL.total_seconds() + 5,
        what="the CA to switch to a new intermediate",
    )
    second = watch.current.service.issuer.signer
    assert second.root == first.root, "the new intermediate hangs under the same root"
    assert second.not_after > first.not_after

    wait_until(
        lambda: (
            (svid := agent.credentials.svid) is not None
            and issuer_key_id(svid.chain) == second.key_id
        ),
        timeout=5,
        what="the agent to re-issue from the new intermediate",
    )

    events = runtime.authorities.events(EventQuery(limit=50))
    done = [(e.action, e.authority_id) for e in events if e.outcome == "done"]
    assert done.count(("prepare-intermediate", second.key_id)) == 1
    assert done.count(("activate-intermediate", second.key_id)) == 1
    assert all(e.actor.startswith("meshca-server ") for e in events if e.action != "init")
    assert (
        metrics.INTERMEDIATE_ROTATIONS.labels("activate-intermediate")._value.get()
        == rotations_before + 1
    )

    # Once expired, the old intermediate leaves the trusted set (for mTLS renewals too).
    wait_until(
        lambda: any(
            e.action == "retire-expired" and e.authority_id == first.key_id
            for e in runtime.authorities.events(EventQuery(limit=50))
        ),
        timeout=INTERMEDIATE_TTL.total_seconds(),
        what="the expired intermediate to be retired",
    )
    states = {a.id: a.state.value for a in runtime.authorities.authorities()}
    assert states[first.key_id] == "retired"
    assert states[second.key_id] == "active"
    runtime.engine.dispose()
