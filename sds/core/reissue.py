"""Whether the trust bundle calls for re-issuing the X.509-SVID before its renewal point.

Two reasons, with different urgency. An SVID that rests on a revoked authority, or no longer
chains to the trusted roots, is useless (or soon will be) to every peer: re-issue at once. An SVID
signed by an authority other than the one the CA now signs with is still valid, but the fleet
must move over before the old authority is retired: re-issue at a random point of the bundle's
window, so the whole fleet does not hit the CA in the same second.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from ca.core.keys import key_id
from sds.core.credentials import Bundles, Svid, anchor_of


class Urgency(enum.Enum):
    """How soon to re-issue; the value is the reason label of the agent's metric."""

    NOW = "revoked_or_untrusted"
    WITHIN_WINDOW = "signer_changed"


@dataclass(frozen=True, slots=True)
class Reissue:
    """A decision to re-issue, with the reason in words for the log."""

    urgency: Urgency
    detail: str

    @property
    def reason(self) -> str:
        return self.urgency.value


def reissue_needed(svid: Svid | None, bundles: Bundles) -> Reissue | None:
    """Whether ``svid`` must be re-issued given ``bundles`` (``None``: keep it until its normal
    renewal point; also when there is no SVID, which is being obtained anyway)."""
    if svid is None:
        return None
    root = anchor_of(svid.chain, bundles.all_roots())
    if root is None:
        return Reissue(Urgency.NOW, "the X.509-SVID no longer chains to a trusted root")
    authorities = (*svid.chain[1:], root)
    revoked = sorted({key_id_of(cert) for cert in authorities} & bundles.revoked_key_ids)
    if revoked:
        return Reissue(
            Urgency.NOW, f"the X.509-SVID's chain has revoked authorities {', '.join(revoked)}"
        )
    issuer = key_id_of(authorities[0])
    if bundles.signing_key_id and issuer != bundles.signing_key_id:
        return Reissue(
            Urgency.WITHIN_WINDOW,
            f"the X.509-SVID is signed by {issuer}, the CA now signs with {bundles.signing_key_id}",
        )
    return None


def reissue_deadline(now: datetime, window: timedelta, rng: random.Random) -> datetime:
    """A uniformly random moment of ``[now, now + window]``: each agent of a fleet draws its own,
    which spreads their re-issues over the window (a zero window: ``now``)."""
    if window <= timedelta(0):
        return now
    return now + window * rng.random()


def key_id_of(cert: x509.Certificate) -> str:
    """The key id of a CA certificate, as the CA names its authorities in the bundle."""
    # Every key a CA certificate can hold is an issuer key type (X25519/X448 cannot sign).
    return key_id(cert.public_key())  # type: ignore[arg-type]
