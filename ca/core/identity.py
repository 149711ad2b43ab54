"""Workload identities: SPIFFE IDs (through the ``spiffe`` package) and the Kubernetes mapping
``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from spiffe import SpiffeId, TrustDomain
from spiffe.errors import PySpiffeError

from ca.core.errors import InvalidRequest, PermissionDenied

# DNS-1123 label (namespaces) and subdomain (service accounts), as Kubernetes validates them.
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_K8S_PATH = re.compile(r"/ns/([^/]+)/sa/([^/]+)")


def parse_trust_domain(name: str) -> TrustDomain:
    """Parse a trust domain name (``cluster.local``) or ID (``spiffe://cluster.local``)."""
    try:
        return TrustDomain(name)
    except PySpiffeError as exc:
        raise InvalidRequest(
            "invalid_trust_domain", f"invalid trust domain {name!r}: {exc}"
        ) from exc


def parse_spiffe_id(text: str) -> SpiffeId:
    """Parse a SPIFFE ID, raising :class:`InvalidRequest` with the reason when malformed."""
    try:
        return SpiffeId(text)
    except PySpiffeError as exc:
        raise InvalidRequest("invalid_spiffe_id", f"invalid SPIFFE ID {text!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class WorkloadIdentity:
    """Who a certificate is for: a SPIFFE ID plus the Kubernetes facts known about it."""

    spiffe_id: SpiffeId
    namespace: str | None = None
    service_account: str | None = None
    pod_name: str | None = None
    pod_uid: str | None = None

    @classmethod
    def for_service_account(
        cls,
        trust_domain: TrustDomain,
        namespace: str,
        service_account: str,
        *,
        pod_name: str | None = None,
        pod_uid: str | None = None,
    ) -> WorkloadIdentity:
        """The identity of a Kubernetes service account in ``trust_domain``."""
        if len(namespace) > 63 or not _DNS1123_LABEL.fullmatch(namespace):
            raise InvalidRequest("invalid_namespace", f"invalid Kubernetes namespace {namespace!r}")
        if len(service_account) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(service_account):
            raise InvalidRequest(
                "invalid_service_account",
                f"invalid Kubernetes service account name {service_account!r}",
            )
        spiffe_id = SpiffeId(f"{trust_domain.as_spiffe_id()}/ns/{namespace}/sa/{service_account}")
        return cls(spiffe_id, namespace, service_account, pod_name, pod_uid)

    @classmethod
    def from_spiffe_id(cls, spiffe_id: SpiffeId) -> WorkloadIdentity:
        """An identity from a bare SPIFFE ID; namespace and service account are filled in when
        the path follows the Kubernetes mapping."""
        match = _K8S_PATH.fullmatch(spiffe_id.path)
        if match:
            return cls(spiffe_id, match.group(1), match.group(2))
        return cls(spiffe_id)

    def require_trust_domain(self, trust_domain: TrustDomain) -> None:
        """Refuse an identity outside ``trust_domain``."""
        if self.spiffe_id.trust_domain != trust_domain:
            raise PermissionDenied(
                "foreign_trust_domain",
                f"SPIFFE ID {self.spiffe_id} is not in trust domain {trust_domain.name}",
            )
        if not self.spiffe_id.path:
            raise InvalidRequest(
                "invalid_spiffe_id",
                f"SPIFFE ID {self.spiffe_id} has no path; a workload SVID needs one",
            )
