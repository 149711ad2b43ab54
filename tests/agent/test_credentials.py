"""The agent refuses to hold (and so to serve) an SVID that is not its own: the wrong key, the
wrong SPIFFE ID, or a chain that does not lead to the bundle."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ca.core.errors import InvalidRequest
from sds.core.credentials import Svid, chains_to, split_root
from tests.agent.workload_ca import WorkloadCa
from tests.factories import WEB_ID


@pytest.fixture(scope="module")
def workload_ca() -> WorkloadCa:
    return WorkloadCa()


def test_a_certificate_for_another_key_is_refused(workload_ca: WorkloadCa) -> None:
    svid = workload_ca.svid()
    with pytest.raises(InvalidRequest) as raised:
        Svid(svid.spiffe_id, svid.chain, ec.generate_private_key(ec.SECP256R1()))
    assert raised.value.reason == "key_mismatch"


def test_a_certificate_for_another_identity_is_refused(workload_ca: WorkloadCa) -> None:
    other = workload_ca.svid("spiffe://cluster.local/ns/default/sa/db")
    with pytest.raises(InvalidRequest) as raised:
        Svid(workload_ca.svid().spiffe_id, other.chain, other.key)
    assert raised.value.reason == "wrong_spiffe_id"
    assert "sa/db" in raised.value.message


def test_the_root_is_split_off_the_chain_the_ca_returns(workload_ca: WorkloadCa) -> None:
    svid = workload_ca.svid()
    root = workload_ca.root.certificate
    assert split_root((*svid.chain, root), [root]) == svid.chain
    assert split_root(svid.chain, [root]) == svid.chain


def test_chains_to_the_bundle_or_not(workload_ca: WorkloadCa) -> None:
    svid = workload_ca.svid(WEB_ID)
    assert chains_to(svid.chain, [workload_ca.root.certificate])
    assert not chains_to(svid.chain, [WorkloadCa().root.certificate])
    assert not chains_to(svid.chain[:1], [workload_ca.root.certificate])  # intermediate missing
    assert not chains_to((), [workload_ca.root.certificate])


def test_a_signer_change_is_a_new_signing_key_id_after_a_known_one(
    workload_ca: WorkloadCa,
) -> None:
    start = workload_ca.bundles()  # from --ca-root: the signer is not known yet
    first = dataclasses.replace(start, sequence=2, signing_key_id="a" * 32)
    prepared = dataclasses.replace(first, sequence=3)  # a new root trusted, same signer
    activated = dataclasses.replace(prepared, sequence=4, signing_key_id="b" * 32)
    assert not first.signer_changed_from(start)
    assert not prepared.signer_changed_from(first)
    assert activated.signer_changed_from(prepared)
