"""The trust bundle: every root a workload should trust, in PEM or the SPIFFE bundle format."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from spiffe import TrustDomain

DEFAULT_REFRESH_HINT_SECONDS = 300


@dataclass(frozen=True, slots=True)
class TrustBundle:
    """The roots of one trust domain at one ``sequence`` number, the key that signs now, and the
    revoked authorities whose certificates agents must replace at once."""

    trust_domain: TrustDomain
    sequence: int
    roots: tuple[x509.Certificate, ...]
    signing_key_id: str | None
    revoked_key_ids: tuple[str, ...] = ()

    def pem(self) -> str:
        """All roots, concatenated PEM."""
        return "".join(r.public_bytes(serialization.Encoding.PEM).decode() for r in self.roots)

    def jwks(self, refresh_hint_seconds: int = DEFAULT_REFRESH_HINT_SECONDS) -> dict[str, Any]:
        """The SPIFFE trust domain bundle: a JWK Set with one ``x509-svid`` key per root."""
        return {
            "keys": [_x509_svid_jwk(root) for root in self.roots],
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": refresh_hint_seconds,
        }

    def jwks_json(self) -> str:
        return json.dumps(self.jwks(), indent=2, sort_keys=True) + "\n"


def _x509_svid_jwk(root: x509.Certificate) -> dict[str, Any]:
    public_key = root.public_key()
    jwk: dict[str, Any]
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        raise TypeError(f"unsupported root key type {type(public_key).__name__}")
    jwk["use"] = "x509-svid"
    jwk["x5c"] = [base64.b64encode(root.public_bytes(serialization.Encoding.DER)).decode()]
    return jwk
