"""The Envoy secrets built from the agent's credentials: what each name carries, byte for byte
what Envoy will load (chain without root, PKCS#8 key, roots, the SPIFFE validator)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import TrustDomain

from sds.api import xds
from sds.core import secrets
from sds.core.credentials import Bundles, Credentials
from tests.agent.workload_ca import WorkloadCa


@pytest.fixture(scope="module")
def workload_ca() -> WorkloadCa:
    return WorkloadCa()


@pytest.fixture(scope="module")
def creds(workload_ca: WorkloadCa) -> Credentials:
    return workload_ca.credentials()


def one(name: str, creds: Credentials) -> Any:
    resolution = secrets.resolve([name], creds)
    assert resolution.complete, resolution
    secret = resolution.secrets[name]
    assert secret.name == name  # Envoy matches answers to the names it asked for
    return secret


def test_default_is_the_chain_without_root_and_the_pkcs8_key(creds: Credentials) -> None:
    secret = one(secrets.DEFAULT, creds)
    chain = x509.load_pem_x509_certificates(secret.tls_certificate.certificate_chain.inline_bytes)
    assert creds.svid is not None
    assert chain == list(creds.svid.chain)
    assert len(chain) == 2  # leaf and intermediate: the root comes from the bundle
    key_pem = secret.tls_certificate.private_key.inline_bytes
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    key = serialization.load_pem_private_key(key_pem, None)
    assert key.public_key() == chain[0].public_key()


def test_the_spiffe_id_is_an_alias_of_default(creds: Credentials) -> None:
    assert creds.svid is not None
    alias = one(str(creds.svid.spiffe_id), creds)
    default = one(secrets.DEFAULT, creds)
    assert alias.tls_certificate == default.tls_certificate


def test_rootca_carries_every_trusted_root(workload_ca: WorkloadCa, creds: Credentials) -> None:
    other = WorkloadCa()
    two_roots = dataclasses.replace(
        creds,
        bundles=Bundles(
            {workload_ca.trust_domain: (workload_ca.root.certificate, other.root.certificate)}
        ),
    )
    secret = one(secrets.ROOTCA, two_roots)
    roots = x509.load_pem_x509_certificates(secret.validation_context.trusted_ca.inline_bytes)
    assert roots == [workload_ca.root.certificate, other.root.certificate]


def test_the_trust_domain_name_is_an_alias_of_its_bundle(creds: Credentials) -> None:
    secret = one("spiffe://cluster.local", creds)
    assert secret.validation_context == one(secrets.ROOTCA, creds).validation_context


def _federated(workload_ca: WorkloadCa, creds: Credentials) -> tuple[Credentials, WorkloadCa]:
    foreign = WorkloadCa(TrustDomain("partner.example"))
    roots = dict(creds.bundles.roots)
    roots[foreign.trust_domain] = (foreign.root.certificate,)
    return dataclasses.replace(creds, bundles=Bundles(roots)), foreign


def test_all_carries_the_spiffe_validator_with_each_trust_domain(
    workload_ca: WorkloadCa, creds: Credentials
) -> None:
    federated, foreign = _federated(workload_ca, creds)
    secret = one(secrets.ALL, federated)
    validator = secret.validation_context.custom_validator_config
    assert validator.name == "envoy.tls.cert_validator.spiffe"
    config = xds.SpiffeValidatorConfig()
    assert validator.typed_config.Unpack(config)
    got = {
        td.name: x509.load_pem_x509_certificates(td.trust_bundle.inline_bytes)
        for td in config.trust_domains
    }
    assert got == {
        "cluster.local": [workload_ca.root.certificate],
        "partner.example": [foreign.root.certificate],
    }
    # and each trust domain's own alias has only its roots
    partner = one("spiffe://partner.example", federated)
    assert x509.load_pem_x509_certificates(partner.validation_context.trusted_ca.inline_bytes) == [
        foreign.root.certificate
    ]


def test_unknown_and_waiting_names_are_told_apart(workload_ca: WorkloadCa) -> None:
    waiting = workload_ca.credentials(with_svid=False)
    resolution = secrets.resolve(
        [secrets.DEFAULT, "spiffe://cluster.local/ns/x/sa/y", "spiffe://other.example", "nope"],
        waiting,
    )
    assert resolution.waiting == (secrets.DEFAULT, "spiffe://cluster.local/ns/x/sa/y")
    assert resolution.unknown == ("spiffe://other.example", "nope")
    held = secrets.resolve(["spiffe://cluster.local/ns/x/sa/y"], workload_ca.credentials())
    assert held.unknown == ("spiffe://cluster.local/ns/x/sa/y",)  # not this workload's ID


def test_versions_follow_content(creds: Credentials, workload_ca: WorkloadCa) -> None:
    a = one(secrets.DEFAULT, creds)
    assert secrets.version_of([a]) == secrets.version_of([one(secrets.DEFAULT, creds)])
    rotated = dataclasses.replace(creds, svid=workload_ca.svid())
    assert secrets.version_of([a]) != secrets.version_of([one(secrets.DEFAULT, rotated)])
