"""The workload's side of issuance: a fresh private key, the SPIFFE ID its token stands for, and
a CSR naming that ID. The key is generated in memory and stays there."""

from __future__ import annotations

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from spiffe import SpiffeId, TrustDomain

from ca.core.errors import ConfigurationError, Unauthenticated
from ca.core.keys import KeyType, generate_private_key
from ca.core.sa_token import parse_service_account_username
from sds.core.credentials import WorkloadKey

#: Key types a workload may use (Envoy and every TLS stack here accept them).
WORKLOAD_KEY_TYPES = (KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048)


def generate_workload_key(key_type: KeyType) -> WorkloadKey:
    """A new private key of ``key_type``, in memory only."""
    if key_type not in WORKLOAD_KEY_TYPES:
        raise ConfigurationError(
            "unsupported_key_type",
            f"workload key type {key_type} is not supported; choose "
            + ", ".join(WORKLOAD_KEY_TYPES),
        )
    key = generate_private_key(key_type)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return key


def spiffe_id_for_token(token: str, trust_domain: TrustDomain) -> SpiffeId:
    """The SPIFFE ID the CA will map ``token`` to, read from its (unverified) ``sub`` claim.

    The agent only uses this to name itself in the CSR; the CA verifies the token and refuses a
    CSR naming anyone else. Raises :class:`ConfigurationError` for a token that is not a
    service-account JWT, with a message that never contains the token.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise ConfigurationError(
            "token_malformed", "the token file does not hold a JWT (service-account token)"
        ) from None
    try:
        namespace, service_account = parse_service_account_username(claims.get("sub"))
    except Unauthenticated as exc:
        raise ConfigurationError(exc.reason, exc.message) from None
    return SpiffeId(f"{trust_domain.as_spiffe_id()}/ns/{namespace}/sa/{service_account}")


def build_csr(key: WorkloadKey, spiffe_id: SpiffeId) -> bytes:
    """A PEM CSR with an empty subject and ``spiffe_id`` as its only SAN, signed by ``key``."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=True,
        )
        .sign(key, _hash_for(key))
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _hash_for(key: WorkloadKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()
