"""The agent refuses to hold (and so to serve) an SVID that is not its own: the wrong key, the
wrong SPIFFE ID, or a chain that does not lead to the bundle."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ca.core.errors import InvalidRequest
from sds.core.credentials import Svid, anchor_of, chains_to, split_root
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


def test_the_anchor_is_the_root_the_chain_rests_on(workload_ca: WorkloadCa) -> None:
    svid = workload_ca.svid(WEB_ID)
    root = workload_ca.root.certificate
    stranger = WorkloadCa().root.certificate
    assert anchor_of(svid.chain, [stranger, root]) == root
    assert anchor_of(svid.chain, [stranger]) is None
    assert anchor_of(svid.chain[:1], [root]) is None  # intermediate missing
    assert anchor_of((), [root]) is None


def test_a_negative_reissue_window_is_refused(workload_ca: WorkloadCa) -> None:
    with pytest.raises(InvalidRequest) as raised:
        dataclasses.replace(workload_ca.bundles(), reissue_window=timedelta(seconds=-1))
    assert raised.value.reason == "negative_reissue_window"
