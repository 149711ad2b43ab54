"""The agent's life against a real CA: it renews at the grace ratio, re-reads its token every
time, falls back to mTLS when the token is refused, fails over between CA addresses (for issuance
and for the bundle stream), and stops serving an SVID that expired while the CA was away."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.core.records import IssuedRecord
from tests.agent.conftest import StartAgent
from tests.agent.harness import RunningAgent, agent_settings, running_agent, write_token
from tests.processes import free_port
from tests.server.conftest import Served, wait_until
from tests.server.harness import prepare_new_root

SHORT = {"backdate": timedelta(0)}  # lifetimes exactly as requested, for short-TTL tests


def metric(agent: RunningAgent, name: str, **labels: str) -> float:
    return agent.agent.metrics.registry.get_sample_value(name, labels) or 0.0


def ledger_serials(rows: Iterable[IssuedRecord]) -> set[int]:
    """Serials as numbers: the ledger writes 32 hex digits, leading zeros included."""
    return {int(row.serial, 16) for row in rows}


def test_renews_at_the_grace_ratio_before_expiry(
    sqlite_url: str, serve: Callable[..., Served], start_agent: StartAgent
) -> None:
    served = serve(sqlite_url, **SHORT)
    agent = start_agent(served, ttl="4s", grace_ratio=0.5, rotation_jitter=0.05)
    seen = [agent.credentials]
    for _ in range(2):
        previous = seen[-1]
        assert previous.svid is not None
        current = agent.wait_new_svid(previous, timeout=10)
        renewed_at = datetime.now(UTC)
        svid = previous.svid
        lifetime = svid.not_after - svid.not_before
        # at 45-55% of the lifetime plus the time to get a certificate; never after expiry
        assert renewed_at >= svid.not_before + lifetime * 0.45
        assert renewed_at < svid.not_after
        seen.append(current)
    assert metric(agent, "meshca_agent_svid_rotations_total", via="token") == 3
    rows = served.workload_rows()
    assert ledger_serials(rows) >= {c.svid.leaf.serial_number for c in seen if c.svid}


def test_the_token_is_read_again_for_every_call(
    sqlite_url: str, serve: Callable[..., Served], start_agent: StartAgent
) -> None:
    served = serve(sqlite_url)
    agent = start_agent(served)
    # the kubelet rotates the projected token: same service account, new pod binding
    agent.settings.token_file.write_text(
        served.minter.mint("default", "web", pod_name="web-rotated", pod_uid="uid-2")
    )
    renewed = agent.renew_now()
    assert renewed.svid is not None
    serial = renewed.svid.leaf.serial_number
    row = next(r for r in served.workload_rows() if int(r.serial, 16) == serial)
    assert row.pod_name == "web-rotated"


def test_a_refused_token_falls_back_to_mtls_with_the_current_svid(
    sqlite_url: str, serve: Callable[..., Served], start_agent: StartAgent
) -> None:
    served = serve(sqlite_url)
    agent = start_agent(served)
    first = agent.credentials
    expired = served.minter.mint(
        "default", "web", exp=int((datetime.now(UTC) - timedelta(hours=1)).timestamp())
    )
    agent.settings.token_file.write_text(expired)
    renewed = agent.renew_now()
    assert renewed.svid is not None
    assert first.svid is not None
    assert renewed.svid.serial_hex != first.svid.serial_hex
    assert renewed.svid.spiffe_id == first.svid.spiffe_id
    assert metric(agent, "meshca_agent_svid_rotations_total", via="mtls") == 1
    assert (
        metric(
            agent,
            "meshca_agent_ca_call_failures_total",
            call="create_certificate",
            reason="ca_refused_token",
        )
        == 0
    )  # the fallback succeeded within the same attempt


def test_a_refused_token_without_mtls_keeps_the_agent_not_ready_and_retrying(
    sqlite_url: str, serve: Callable[..., Served], start_agent: StartAgent, sockets: Path
) -> None:
    served = serve(sqlite_url)
    forged = jwt.encode(
        {"sub": "system:serviceaccount:default:web", "iss": "x", "aud": "istio-ca"},
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
    )
    agent = start_agent(served, wait=False, ca_mtls_address=[], token=forged)
    wait_until(
        lambda: (
            metric(
                agent,
                "meshca_agent_ca_call_failures_total",
                call="create_certificate",
                reason="ca_refused_token",
            )
            >= 2
            or None
        ),
        timeout=10,
        what="two refused attempts",
    )
    ready, detail = agent.agent.readiness()
    assert not ready
    assert "token" in detail
    assert forged not in detail
    # the kubelet writes a valid token: the agent recovers without a restart
    agent.settings.token_file.write_text(served.minter.mint("default", "web"))
    agent.wait_ready(timeout=15)


def test_fails_over_to_the_next_ca_address(
    sqlite_url: str, serve: Callable[..., Served], start_agent: StartAgent
) -> None:
    served = serve(sqlite_url)
    dead = f"127.0.0.1:{free_port()}"
    agent = start_agent(served, ca_address=[dead, f"127.0.0.1:{served.ca.port}"])
    assert agent.credentials.svid is not None
    wait_until(
        lambda: metric(agent, "meshca_agent_bundle_stream_connected") == 1 or None,
        timeout=10,
        what="the bundle stream to open through the second address",
    )


def test_the_bundle_stream_fails_over_when_a_replica_stops(
    sqlite_url: str, serve: Callable[..., Served], start_agent: StartAgent
) -> None:
    first = serve(sqlite_url)
    second = serve(sqlite_url, kek_file=first.ca.settings.kek_file)
    agent = start_agent(
        first,
        ca_address=[f"127.0.0.1:{first.ca.port}", f"127.0.0.1:{second.ca.port}"],
        ca_mtls_address=[],
    )
    wait_until(
        lambda: metric(agent, "meshca_agent_bundle_stream_connected") == 1 or None,
        timeout=10,
        what="the bundle stream",
    )
    first.ca.stop()
    new_root = prepare_new_root(second.ca.settings)
    started = time.monotonic()
    wait_until(
        lambda: new_root in agent.credentials.bundles.all_roots() or None,
        timeout=10,
        what="the new root through the second replica",
    )
    assert time.monotonic() - started < 5
    # and issuance goes to the second replica too
    renewed = agent.renew_now()
    assert renewed.svid is not None
    assert renewed.svid.leaf.serial_number in ledger_serials(second.workload_rows())


def test_an_svid_that_expires_while_the_ca_is_away_is_no_longer_served(
    sqlite_url: str, serve: Callable[..., Served], start_agent: StartAgent
) -> None:
    served = serve(sqlite_url, **SHORT)
    agent = start_agent(served, ttl="3s", grace_ratio=0.9)
    svid = agent.credentials.svid
    assert svid is not None
    served.ca.stop()
    assert agent.agent.readiness()[0]  # still serving the cached SVID
    wait_until(
        lambda: agent.credentials.svid is None or None,
        timeout=10,
        what="the expired SVID to be dropped",
    )
    assert datetime.now(UTC) >= svid.not_after
    ready, detail = agent.agent.readiness()
    assert not ready
    assert "CA 127.0.0.1" in detail


def test_a_new_signing_authority_in_the_bundle_triggers_renewal(
    sqlite_url: str, serve: Callable[..., Served], start_agent: StartAgent
) -> None:
    """Without a re-issue window (a CA that announces none), at once: the SVID lives 24 hours.
    Windows, revocations and their timing are in test_reissue.py."""
    served = serve(sqlite_url)
    agent = start_agent(served)
    manager = agent.agent.manager
    assert manager is not None
    held = agent.wait_until_bundle_synced()
    # what the bundle stream reports when the CA activates another authority
    new_signer = dataclasses.replace(
        held.bundles,
        sequence=held.bundles.sequence + 1,
        signing_key_id="0" * 32,
        reissue_window=timedelta(0),
    )
    agent.loop.call_soon_threadsafe(manager.bundle_changed, held.bundles, new_signer)
    renewed = agent.wait_new_svid(held, timeout=5)
    assert renewed.svid is not None
    assert metric(agent, "meshca_agent_reissues_total", reason="signer_changed") >= 1


def test_failures_back_off_even_when_a_renewal_was_asked_for(
    sqlite_url: str, serve: Callable[..., Served], start_agent: StartAgent
) -> None:
    """A request to renew (a new signer) while the CA is unreachable must not defeat backoff."""
    served = serve(sqlite_url)
    agent = start_agent(
        served, wait=False, ca_address=[f"127.0.0.1:{free_port()}"], ca_mtls_address=[]
    )
    manager = agent.agent.manager
    assert manager is not None

    def failures() -> float:
        return metric(
            agent,
            "meshca_agent_ca_call_failures_total",
            call="create_certificate",
            reason="ca_unavailable",
        )

    wait_until(lambda: failures() >= 1 or None, timeout=10, what="a first failure")
    agent.loop.call_soon_threadsafe(manager.renew_soon)
    started, counted = time.monotonic(), failures()
    wait_until(lambda: failures() >= counted + 4 or None, timeout=20, what="four more failures")
    # backoff ceilings from 0.2 s doubling, each delay at least half its ceiling: 4 more
    # attempts take at least 0.1 + 0.2 + 0.4 = 0.7 s after the one renew_soon cut short
    assert time.monotonic() - started >= 0.7


@pytest.mark.parametrize(
    ("key_type", "algorithm", "size"),
    [
        ("ec-p256", ec.EllipticCurvePrivateKey, 256),
        ("ec-p384", ec.EllipticCurvePrivateKey, 384),
        ("rsa-2048", rsa.RSAPrivateKey, 2048),
    ],
)
def test_every_workload_key_type_is_issued(
    sqlite_url: str,
    serve: Callable[..., Served],
    start_agent: StartAgent,
    key_type: str,
    algorithm: type,
    size: int,
) -> None:
    served = serve(sqlite_url)
    agent = start_agent(served, key_type=key_type)
    svid = agent.credentials.svid
    assert svid is not None
    assert isinstance(svid.key, algorithm)
    assert svid.key.key_size == size
    assert svid.leaf.public_key() == svid.key.public_key()


def test_the_first_svid_is_requested_even_when_every_clock_reading_is_later(
    sqlite_url: str, serve: Callable[..., Served], sockets: Path
) -> None:
    """A clock read twice never gives the same time on a busy machine: the agent must not wait
    for "now" to come (it once could, forever, holding no SVID and recording no error)."""
    served = serve(sqlite_url)
    ticks = iter(range(1, 10**9))

    def strictly_later() -> datetime:
        return datetime.now(UTC) + timedelta(microseconds=next(ticks))

    token = write_token(served.minter, sockets, "default", "ticking")
    settings = agent_settings(served.ca, sockets, token, name="ticking")
    with running_agent(settings, clock=strictly_later) as agent:
        agent.wait_ready(timeout=10)
        assert agent.credentials.svid is not None
