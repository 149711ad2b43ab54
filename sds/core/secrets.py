"""The Envoy secrets the agent serves, built from its credentials.

Names follow SPIRE's agent, so Envoy configurations written for SPIRE work unchanged:

- ``default``, or the workload's SPIFFE ID: ``tls_certificate`` with the chain (leaf first, no
  root) and the PKCS#8 key, both inline PEM bytes;
- ``ROOTCA``: ``validation_context.trusted_ca`` with every trusted root;
- ``spiffe://<trust-domain>``: the same for that one trust domain;
- ``ALL``: a ``validation_context`` carrying Envoy's SPIFFE certificate validator with each trust
  domain and its bundle, so Envoy checks a peer's trust domain and not only its chain.

A secret is always named as it was asked for: Envoy matches answers to names.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2

from sds.api import xds
from sds.core.credentials import Credentials

DEFAULT = "default"
ROOTCA = "ROOTCA"
ALL = "ALL"


class Kind(enum.Enum):
    """What a resource name stands for."""

    CERTIFICATE = "certificate"
    TRUST = "trust"
    TRUST_DOMAIN = "trust domain"
    ALL_TRUST_DOMAINS = "all trust domains"


@dataclass(frozen=True, slots=True)
class Resolution:
    """The answer for a set of names: the secrets that can be served now, the names that exist
    but cannot be served yet (no SVID yet), and the names that do not exist."""

    secrets: dict[str, Any]
    waiting: tuple[str, ...]
    unknown: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.waiting and not self.unknown


def kind_of(name: str, credentials: Credentials) -> Kind | None:
    """What ``name`` stands for for this workload, or ``None`` when the agent does not serve it."""
    if name == DEFAULT:
        return Kind.CERTIFICATE
    if name == ROOTCA:
        return Kind.TRUST
    if name == ALL:
        return Kind.ALL_TRUST_DOMAINS
    if credentials.svid is not None and name == str(credentials.svid.spiffe_id):
        return Kind.CERTIFICATE
    if any(name == str(td.as_spiffe_id()) for td in credentials.bundles.roots):
        return Kind.TRUST_DOMAIN
    return None


def resolve(names: Iterable[str], credentials: Credentials) -> Resolution:
    """The secrets for ``names`` (deduplicated, in order)."""
    secrets: dict[str, Any] = {}
    waiting: list[str] = []
    unknown: list[str] = []
    for name in dict.fromkeys(names):
        kind = kind_of(name, credentials)
        if kind is None:
            (waiting if _may_be_own_id(name, credentials) else unknown).append(name)
            continue
        secret = _build(name, kind, credentials)
        if secret is None:
            waiting.append(name)
        else:
            secrets[name] = secret
    return Resolution(secrets, tuple(waiting), tuple(unknown))


def _may_be_own_id(name: str, credentials: Credentials) -> bool:
    """Until the SVID is held, a SPIFFE ID in the agent's trust domain may be the workload's."""
    own_prefix = f"{credentials.trust_domain.as_spiffe_id()}/"
    return credentials.svid is None and name.startswith(own_prefix)


def version_of(secrets: Sequence[Any]) -> str:
    """A version for a set of secrets: the same content always gets the same version."""
    digest = hashlib.sha256()
    for secret in sorted(secrets, key=lambda s: str(s.name)):
        digest.update(secret.SerializeToString(deterministic=True))
    return digest.hexdigest()[:16]


def pack(secret: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(secret)
    return packed


def _build(name: str, kind: Kind, credentials: Credentials) -> Any | None:
    match kind:
        case Kind.CERTIFICATE:
            svid = credentials.svid
            if svid is None:
                return None
            return xds.Secret(
                name=name,
                tls_certificate=xds.TlsCertificate(
                    certificate_chain=xds.DataSource(inline_bytes=svid.chain_pem()),
                    private_key=xds.DataSource(inline_bytes=svid.key_pkcs8_pem()),
                ),
            )
        case Kind.TRUST:
            return _trusted_ca(name, credentials.bundles.pem())
        case Kind.TRUST_DOMAIN:
            (trust_domain,) = (
                td for td in credentials.bundles.roots if str(td.as_spiffe_id()) == name
            )
            return _trusted_ca(name, credentials.bundles.pem(trust_domain))
        case Kind.ALL_TRUST_DOMAINS:
            return _spiffe_validator(name, credentials)


def _trusted_ca(name: str, pem: bytes) -> Any:
    return xds.Secret(
        name=name,
        validation_context=xds.CertificateValidationContext(
            trusted_ca=xds.DataSource(inline_bytes=pem)
        ),
    )


def _spiffe_validator(name: str, credentials: Credentials) -> Any:
    bundles = credentials.bundles
    config = xds.SpiffeValidatorConfig(
        trust_domains=[
            xds.SpiffeValidatorConfig.TrustDomain(
                name=trust_domain.name,
                trust_bundle=xds.DataSource(inline_bytes=bundles.pem(trust_domain)),
            )
            for trust_domain in sorted(bundles.roots, key=lambda td: td.name)
        ]
    )
    return xds.Secret(
        name=name,
        validation_context=xds.CertificateValidationContext(
            custom_validator_config=xds.TypedExtensionConfig(
                name=xds.SPIFFE_VALIDATOR, typed_config=pack(config)
            )
        ),
    )
