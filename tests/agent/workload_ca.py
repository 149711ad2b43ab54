"""In-memory credentials for the agent's core tests: a root and intermediate from meshca's own CA
code, SVIDs issued by them for fresh workload keys, and the :class:`Credentials` that hold them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import SpiffeId, TrustDomain

from ca.core.csr_policy import TtlPolicy
from ca.core.identity import WorkloadIdentity
from ca.core.issuer import IssuanceRequest, Issuer
from sds.core.credentials import Bundles, Credentials, Svid
from sds.core.workload_csr import build_csr
from tests.factories import TRUST_DOMAIN, WEB_ID, make_ca


class WorkloadCa:
    """Issues real X.509-SVIDs the way the CA service does."""

    def __init__(self, trust_domain: TrustDomain = TRUST_DOMAIN) -> None:
        self.trust_domain = trust_domain
        self.root, self.intermediate = make_ca(trust_domain=trust_domain)
        self.issuer = Issuer(trust_domain, self.intermediate, TtlPolicy())

    def svid(self, spiffe_id: str = WEB_ID, *, ttl: timedelta = timedelta(hours=1)) -> Svid:
        key = ec.generate_private_key(ec.SECP256R1())
        identity = WorkloadIdentity.from_spiffe_id(SpiffeId(spiffe_id))
        issued = self.issuer.issue(
            IssuanceRequest(
                csr=build_csr(key, identity.spiffe_id),
                caller=identity,
                requested_ttl=ttl,
                requester="test",
                request_id=uuid.uuid4().hex,
            ),
            datetime.now(UTC),
        )
        return Svid(identity.spiffe_id, (issued.certificate, *issued.chain[:-1]), key)

    def bundles(self, sequence: int = 1) -> Bundles:
        return Bundles({self.trust_domain: (self.root.certificate,)}, sequence)

    def credentials(self, *, with_svid: bool = True, generation: int = 1) -> Credentials:
        return Credentials(
            self.trust_domain,
            self.bundles(),
            self.svid() if with_svid else None,
            generation,
        )
