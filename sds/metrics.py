"""The agent's Prometheus metrics, in a registry of its own (several agents can share a process
in tests and benchmarks without mixing their figures)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from sds.core.credentials import Credentials


class AgentMetrics:
    """Every metric the agent exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._not_after = 0.0
        self.seconds_to_expiry = Gauge(
            "meshca_agent_svid_seconds_to_expiry",
            "Seconds until the served X.509-SVID expires (0 when none is held)",
            registry=r,
        )
        self.seconds_to_expiry.set_function(self._seconds_left)
        self.rotations = Counter(
            "meshca_agent_svid_rotations",
            "X.509-SVIDs obtained from the CA, by how",
            ["via"],
            registry=r,
        )
        self.reissues = Counter(
            "meshca_agent_reissues",
            "Re-issues of the X.509-SVID before its renewal point that the trust bundle called "
            "for, by reason (revoked_or_untrusted: at once; signer_changed: within the window)",
            ["reason"],
            registry=r,
        )
        self.ca_failures = Counter(
            "meshca_agent_ca_call_failures",
            "Failed calls to the CA, by call and reason",
            ["call", "reason"],
            registry=r,
        )
        self.bundle_updates = Counter(
            "meshca_agent_bundle_updates", "Trust bundle changes received from the CA", registry=r
        )
        self.bundle_sequence = Gauge(
            "meshca_agent_bundle_sequence", "Sequence of the trust bundle held", registry=r
        )
        self.bundle_connected = Gauge(
            "meshca_agent_bundle_stream_connected",
            "1 while a WatchBundle stream to a CA is open",
            registry=r,
        )
        self.sds_streams = Gauge(
            "meshca_agent_sds_streams", "Open SDS streams, by API", ["api"], registry=r
        )
        self.sds_pushes = Counter(
            "meshca_agent_sds_responses", "SDS responses sent, by API", ["api"], registry=r
        )
        self.sds_nacks = Counter(
            "meshca_agent_sds_nacks", "SDS responses Envoy rejected (NACK)", ["api"], registry=r
        )
        self.sds_errors = Counter(
            "meshca_agent_sds_request_errors",
            "SDS requests answered with an error, by reason",
            ["reason"],
            registry=r,
        )
        self.workload_api_streams = Gauge(
            "meshca_agent_workload_api_streams", "Open SPIFFE Workload API streams", registry=r
        )

    def observe(self, credentials: Credentials) -> None:
        """Track the credentials held (a :class:`CredentialStore` listener)."""
        svid = credentials.svid
        self._not_after = svid.not_after.timestamp() if svid is not None else 0.0
        self.bundle_sequence.set(credentials.bundles.sequence)

    def _seconds_left(self) -> float:
        return max(0.0, self._not_after - time.time()) if self._not_after else 0.0
