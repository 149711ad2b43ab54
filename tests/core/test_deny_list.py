"""The deny list: exact SPIFFE IDs and ``/*`` path prefixes. A prefix denies what is under that
path segment and nothing that merely starts with the same letters; malformed entries are refused
when the list is built, not silently ignored."""

from __future__ import annotations

import pytest
from spiffe import SpiffeId

from ca.core.deny_list import DenyList
from ca.core.errors import InvalidRequest, PermissionDenied
from ca.core.identity import WorkloadIdentity

ENTRIES = [
    "spiffe://cluster.local/ns/quarantine/*",
    "spiffe://cluster.local/ns/a/*",
    "spiffe://cluster.local/ns/default/sa/legacy",
    "spiffe://evil.example/*",
]


def identity(spiffe_id: str) -> WorkloadIdentity:
    return WorkloadIdentity.from_spiffe_id(SpiffeId(spiffe_id))


def refusal(deny_list: DenyList, spiffe_id: str) -> PermissionDenied | None:
    try:
        deny_list.check(identity(spiffe_id))
    except PermissionDenied as error:
        return error
    return None


def is_denied(deny_list: DenyList, spiffe_id: str) -> bool:
    error = refusal(deny_list, spiffe_id)
    if error is None:
        return False
    assert error.reason == "identity_denied"
    assert spiffe_id in error.message
    return True


@pytest.mark.parametrize(
    ("spiffe_id", "denied"),
    [
        pytest.param("spiffe://cluster.local/ns/default/sa/legacy", True, id="exact-match"),
        pytest.param("spiffe://cluster.local/ns/default/sa/web", False, id="exact-sibling"),
        pytest.param(
            "spiffe://cluster.local/ns/default/sa/legacy2", False, id="exact-is-not-a-prefix"
        ),
        pytest.param(
            "spiffe://cluster.local/ns/default/sa/legacy/x", False, id="exact-is-not-a-subtree"
        ),
        pytest.param("spiffe://cluster.local/ns/quarantine/sa/x", True, id="prefix-sa"),
        pytest.param("spiffe://cluster.local/ns/quarantine/sa/x/y", True, id="prefix-deeper"),
        pytest.param("spiffe://cluster.local/ns/a/sa/x", True, id="short-prefix"),
        pytest.param("spiffe://cluster.local/ns/ab/sa/x", False, id="prefix-is-per-segment"),
        pytest.param("spiffe://cluster.local/ns/quarantined/sa/x", False, id="ns-name-prefix"),
        pytest.param(
            "spiffe://other.example/ns/quarantine/sa/x", False, id="same-path-other-domain"
        ),
        pytest.param(
            "spiffe://other.example/ns/default/sa/legacy", False, id="exact-path-other-domain"
        ),
        pytest.param("spiffe://evil.example/ns/default/sa/web", True, id="whole-trust-domain"),
        pytest.param("spiffe://evil.example/anything", True, id="whole-trust-domain-any-path"),
        pytest.param("spiffe://evil.example.org/ns/x/sa/y", False, id="domain-name-prefix"),
    ],
)
def test_check_denies_exactly_the_listed_identities(spiffe_id: str, denied: bool) -> None:
    assert is_denied(DenyList(ENTRIES), spiffe_id) is denied


def test_empty_list_denies_nobody() -> None:
    deny_list = DenyList()
    for spiffe_id in ("spiffe://cluster.local/ns/default/sa/web", "spiffe://evil.example/x"):
        assert not is_denied(deny_list, spiffe_id)


def test_entries_may_come_from_any_iterable() -> None:
    deny_list = DenyList(e for e in ["spiffe://cluster.local/ns/quarantine/*"])
    assert is_denied(deny_list, "spiffe://cluster.local/ns/quarantine/sa/x")
    assert is_denied(deny_list, "spiffe://cluster.local/ns/quarantine/sa/y")


def test_exact_entries_are_compared_in_normal_form() -> None:
    # The trust domain name is case-insensitive; identities are always in lower case.
    deny_list = DenyList(["spiffe://Cluster.Local/ns/default/sa/legacy"])
    assert is_denied(deny_list, "spiffe://cluster.local/ns/default/sa/legacy")


def test_prefix_entries_are_compared_in_normal_form() -> None:
    deny_list = DenyList(["spiffe://Cluster.Local/ns/quarantine/*"])
    assert is_denied(deny_list, "spiffe://cluster.local/ns/quarantine/sa/x")


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param("not-a-spiffe-id", id="not-a-uri"),
        pytest.param("", id="empty"),
        pytest.param("https://cluster.local/ns/a/sa/b", id="wrong-scheme"),
        pytest.param("spiffe://cluster.local/ns/*/sa/x", id="wildcard-mid-path"),
        pytest.param("spiffe://cluster.local/ns/a*", id="wildcard-without-slash"),
        pytest.param("spiffe://cluster.local/ns/a/", id="trailing-slash"),
        pytest.param("spiffe://cluster.local/ns/a//*", id="empty-segment-before-star"),
        pytest.param("/*", id="bare-star-prefix"),
        pytest.param("*", id="bare-star"),
        pytest.param("spiffe://cluster.local/ns/a b/*", id="space-in-prefix"),
    ],
)
def test_invalid_entry_is_refused_when_building_the_list(entry: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        DenyList(["spiffe://cluster.local/ns/ok/sa/ok", entry])
    assert info.value.reason == "invalid_spiffe_id"
