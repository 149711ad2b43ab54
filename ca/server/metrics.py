"""The CA server's Prometheus metrics.

With ``--workers N`` each worker process writes its samples to ``PROMETHEUS_MULTIPROC_DIR`` and
the supervisor serves their sum (prometheus-client's multiprocess mode); gauges say how their
per-process values combine.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from ca.core.lifecycle import LifecycleAction
from ca.server.status import STATUS_CODES

CSR_REQUESTS = Counter(
    "meshca_csr_requests",
    "CreateCertificate requests by result (issued, or the gRPC status of the refusal)",
    ["result"],
)
AUTH_FAILURES = Counter(
    "meshca_auth_failures",
    "Callers refused authentication, by reason",
    ["reason"],
)
REFUSALS = Counter(
    "meshca_refusals",
    "Refused CreateCertificate requests by reason (authentication, policy, rate limit, ...)",
    ["reason"],
)
ISSUANCE_LATENCY = Histogram(
    "meshca_issuance_latency_seconds",
    "Time from receiving CreateCertificate to answering it with a certificate",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
BUNDLE_WATCHERS = Gauge(
    "meshca_bundle_watchers",
    "Open WatchBundle streams",
    multiprocess_mode="livesum",
)
BUNDLE_SEQUENCE = Gauge(
    "meshca_bundle_sequence",
    "Sequence number of the trust bundle this server pushes",
    multiprocess_mode="max",
)
CA_EXPIRY = Gauge(
    "meshca_ca_certificate_expiry_timestamp_seconds",
    "NotAfter (Unix time) of the signing authority's certificates",
    ["role", "key_id"],
    multiprocess_mode="max",
)
SERVER_CERT_EXPIRY = Gauge(
    "meshca_server_certificate_expiry_timestamp_seconds",
    "NotAfter (Unix time) of the server's own TLS certificate",
    multiprocess_mode="min",
)
AUTHORITIES = Gauge(
    "meshca_ca_authorities",
    "CA authorities (roots and intermediates) by role and lifecycle state",
    ["role", "state"],
    multiprocess_mode="livemax",
)
SIGNING_AUTHORITY = Gauge(
    "meshca_ca_signing_authority",
    "1 for the key id of the authority that signs workload certificates, 0 for the others",
    ["key_id"],
    multiprocess_mode="livemax",
)
LIFECYCLE_STEPS = Gauge(
    "meshca_ca_lifecycle_steps",
    "Lifecycle steps recorded in the database (by every replica and the CLI), by action and "
    "outcome (done, refused); rises like a counter",
    ["action", "outcome"],
    multiprocess_mode="livemax",
)
INTERMEDIATE_ROTATIONS = Counter(
    "meshca_ca_intermediate_rotations",
    "Automatic intermediate rotation steps this server made, by action",
    ["action"],
)
INTERMEDIATE_ROTATION_BLOCKED = Gauge(
    "meshca_ca_intermediate_rotation_blocked",
    "1 when the signing intermediate is due for replacement but cannot be replaced "
    "automatically (its root ends with it, or the root's key is not held): rotate the root",
    multiprocess_mode="livemax",
)
CA_RELOADS = Counter(
    "meshca_ca_reloads",
    "Times this server reloaded the CA after a change, by how it learned of it",
    ["trigger"],
)

#: How a server learns of a CA change (``CA_RELOADS``'s ``trigger``).
RELOAD_TRIGGERS = ("notify", "poll", "rotation")
#: The automatic intermediate rotation's steps (``INTERMEDIATE_ROTATIONS``'s ``action``).
INTERMEDIATE_ROTATION_ACTIONS = (
    LifecycleAction.PREPARE_INTERMEDIATE,
    LifecycleAction.ACTIVATE_INTERMEDIATE,
    LifecycleAction.RETIRE_EXPIRED,
)


def _zero_known_label_values() -> None:
    """Export every label value known in advance as 0 from the start. With ``--workers N`` a
    labelled metric is exported only once one of its children exists, so without this a fresh
    server would not show ``meshca_ca_reloads_total`` (say) until its first reload. Refusal
    reasons are open-ended: ``meshca_refusals_total`` and ``meshca_auth_failures_total`` appear
    with the first refusal."""
    for result in ("issued", *sorted({code.name for code in STATUS_CODES.values()})):
        CSR_REQUESTS.labels(result)
    for trigger in RELOAD_TRIGGERS:
        CA_RELOADS.labels(trigger)
    for action in INTERMEDIATE_ROTATION_ACTIONS:
        INTERMEDIATE_ROTATIONS.labels(action.value)


_zero_known_label_values()
