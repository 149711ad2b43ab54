"""Rate limits over real gRPC: a crash-looping pod exhausts its own budget, not its neighbours';
the process-wide budget refuses everyone past it. Each refusal is RESOURCE_EXHAUSTED, names its
reason and is in the ledger; nothing is issued for it."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from tests.factories import make_csr
from tests.server.conftest import Served, refused, spiffe_id

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def test_one_crash_looping_pod_cannot_starve_the_rest(
    sqlite_url: str, serve: Callable[..., Served]
) -> None:
    served = serve(sqlite_url, rate_limit_per_caller=1, rate_limit_per_caller_burst=2)
    looping = served.minter.mint("default", "web", pod_name="web-loop", pod_uid="uid-loop")
    # Another token of the same pod (a restarted container re-reads a fresh projected token):
    # the budget is the pod's, not the token's.
    looping_again = served.minter.mint("default", "web", pod_name="web-loop", pod_uid="uid-loop")

    started = time.monotonic()
    served.ca.create_certificate(make_csr(), looping)
    served.ca.create_certificate(make_csr(), looping_again)
    failure = refused(lambda: served.ca.create_certificate(make_csr(), looping))
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"three calls took {elapsed:.2f}s: the bucket refilled in between"

    assert failure.code == EXHAUSTED
    assert failure.reason == "rate_limited_caller"
    assert looping not in failure.details
    row = served.denied_row(failure.request_id)
    assert row.reason == "rate_limited_caller"
    assert (row.spiffe_id, row.pod_name, row.pod_uid) == (
        spiffe_id("default", "web"),
        "web-loop",
        "uid-loop",
    )
    assert row.error_type == "RateLimited"

    # the same service account in another pod is served at once
    neighbour = served.minter.mint("default", "web", pod_name="web-2", pod_uid="uid-2")
    assert len(served.ca.create_certificate(make_csr(), neighbour)) == 3

    rows = served.workload_rows()
    assert sorted(r.pod_uid or "" for r in rows) == ["uid-2", "uid-loop", "uid-loop"]


def test_global_budget_refuses_every_caller_past_it(
    sqlite_url: str, serve: Callable[..., Served]
) -> None:
    served = serve(
        sqlite_url,
        rate_limit_global=1,
        rate_limit_global_burst=2,
        rate_limit_per_caller=1000,
        rate_limit_per_caller_burst=1000,
    )

    started = time.monotonic()
    for pod in ("a", "b"):
        served.issue(pod_name=pod, pod_uid=f"uid-{pod}")
    token = served.minter.mint(pod_name="c", pod_uid="uid-c")
    failure = refused(lambda: served.ca.create_certificate(make_csr(), token))
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"three calls took {elapsed:.2f}s: the bucket refilled in between"

    assert failure.code == EXHAUSTED
    assert failure.reason == "rate_limited_global"
    row = served.denied_row(failure.request_id)
    assert row.reason == "rate_limited_global"
    # refused before authentication (floods are cheap to refuse): nobody is named
    assert row.spiffe_id is None
    assert len(served.workload_rows()) == 2
