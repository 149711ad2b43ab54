"""The lifecycle rules of CA authorities (``ca.core.lifecycle``) on plain values, no I/O: who
signs, and what ``root activate``, ``retire``, ``revoke`` and the automatic intermediate rotation
would change. Each case is a small snapshot of stored authorities and the plan (or refusal) an
admin would get for it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import pytest

from ca.core.errors import FailedPrecondition, InvalidRequest, MeshcaError
from ca.core.lifecycle import (
    AuthorityRole,
    AuthorityState,
    AuthorityView,
    IntermediatePolicy,
    Lifecycle,
    LifecycleAction,
    Plan,
    PrepareIntermediate,
    intermediate_ttl,
)

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
YEAR = timedelta(days=365)

ROOT = AuthorityRole.ROOT
INTERMEDIATE = AuthorityRole.INTERMEDIATE
PREPARED = AuthorityState.PREPARED
ACTIVE = AuthorityState.ACTIVE
RETIRED = AuthorityState.RETIRED
REVOKED = AuthorityState.REVOKED

# Ids look like the real ones (32 hex digits); the first letters tell the family apart:
# a... the original CA, b... the next root, c... a third.
A = "a0" + "0" * 30
A1 = "a1" + "0" * 30
A2 = "a2" + "0" * 30
A3 = "a3" + "0" * 30
A4 = "a4" + "0" * 30
B = "b0" + "0" * 30
B1 = "b1" + "0" * 30
B2 = "b2" + "0" * 30
B3 = "b3" + "0" * 30
C = "c0" + "0" * 30
C1 = "c1" + "0" * 30

INIT_AT = NOW - 100 * DAY


def root(
    id_: str,
    state: AuthorityState,
    *,
    key: bool = True,
    created: datetime = INIT_AT,
    activated: datetime | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> AuthorityView:
    return AuthorityView(
        id=id_,
        role=ROOT,
        state=state,
        parent_id=None,
        has_key=key,
        not_before=not_before or created,
        not_after=not_after or created + 10 * YEAR,
        created_at=created,
        activated_at=activated,
    )


def intermediate(
    id_: str,
    parent: str,
    state: AuthorityState,
    *,
    key: bool = True,
    created: datetime = INIT_AT,
    activated: datetime | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> AuthorityView:
    return AuthorityView(
        id=id_,
        role=INTERMEDIATE,
        state=state,
        parent_id=parent,
        has_key=key,
        not_before=not_before or created,
        not_after=not_after or created + YEAR,
        created_at=created,
        activated_at=activated,
    )


# --- snapshots an admin meets during a rotation ------------------------------------------------


def fresh() -> list[AuthorityView]:
    """Right after ``ca init``: a root and its intermediate, both activated at init."""
    return [
        root(A, ACTIVE, activated=INIT_AT),
        intermediate(A1, A, ACTIVE, activated=INIT_AT),
    ]


def prepared() -> list[AuthorityView]:
    """After ``root prepare``: the new root B and its intermediate are trusted, not signing."""
    return [
        *fresh(),
        root(B, PREPARED, created=NOW - DAY),
        intermediate(B1, B, PREPARED, created=NOW - DAY),
    ]


def rotated() -> list[AuthorityView]:
    """After ``root activate``: B1 signs; the old family A is still ACTIVE (trusted)."""
    return [
        *fresh(),
        root(B, ACTIVE, created=NOW - DAY),
        intermediate(B1, B, ACTIVE, created=NOW - DAY, activated=NOW - DAY / 2),
    ]


def lifecycle(authorities: Iterable[AuthorityView]) -> Lifecycle:
    return Lifecycle(authorities)


def changes(plan: Plan) -> list[tuple[str, AuthorityState, AuthorityState, bool]]:
    """(id, from, to, signs) of each transition of ``plan``."""
    return [(t.authority.id, t.authority.state, t.to_state, t.signs) for t in plan.transitions]


def applied(before: Lifecycle, plan: Plan, at: datetime = NOW) -> Lifecycle:
    """The snapshot once ``plan`` is stored (what ``AuthorityStore`` writes for it)."""
    moved = {t.authority.id: t for t in plan.transitions}
    after = []
    for a in before.authorities:
        t = moved.get(a.id)
        if t is None:
            after.append(a)
            continue
        after.append(
            dataclasses.replace(a, state=t.to_state, activated_at=at if t.signs else a.activated_at)
        )
    return Lifecycle(after)


def signer_id(lc: Lifecycle) -> str | None:
    signer = lc.signer()
    return signer.id if signer is not None else None


def refusal(call: Callable[[], object]) -> MeshcaError:
    with pytest.raises(MeshcaError) as info:
        call()
    return info.value


# --- who signs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorities", "expected"),
    [
        pytest.param(fresh(), A1, id="init: the intermediate before its root on a tie"),
        pytest.param(prepared(), A1, id="prepared authorities never sign"),
        pytest.param(rotated(), B1, id="the authority activated last signs"),
        pytest.param(
            [
                root(A, ACTIVE, activated=INIT_AT),
                intermediate(A1, A, ACTIVE, activated=NOW),
                root(B, ACTIVE, created=NOW - DAY),
                intermediate(B1, B, ACTIVE, created=NOW - DAY, activated=NOW - DAY / 2),
            ],
            A1,
            id="rollback: the older authority activated again signs",
        ),
        pytest.param(
            [
                *fresh(),
                root(B, ACTIVE, created=NOW - DAY),
                intermediate(B1, B, ACTIVE, key=False, created=NOW - DAY, activated=NOW),
            ],
            A1,
            id="an authority without its key never signs",
        ),
        pytest.param(
            [
                root(A, ACTIVE, activated=INIT_AT),
                intermediate(A1, A, RETIRED, activated=NOW),
                intermediate(A2, A, REVOKED, activated=NOW),
            ],
            A,
            id="retired and revoked authorities never sign",
        ),
        pytest.param(
            [root(A, ACTIVE, activated=INIT_AT)], A, id="a CA plugged in as a bare root signs"
        ),
        pytest.param(
            [root(A, ACTIVE, key=False, activated=INIT_AT), intermediate(A1, A, PREPARED)],
            None,
            id="nobody when no active authority holds a key",
        ),
        pytest.param(
            [
                root(A, ACTIVE, activated=INIT_AT),
                intermediate(A1, A, ACTIVE, activated=INIT_AT),
                intermediate(A2, A, ACTIVE, created=NOW - DAY, activated=NOW - DAY),
            ],
            A2,
            id="after intermediate rotation the new intermediate signs",
        ),
    ],
)
def test_signer(authorities: list[AuthorityView], expected: str | None) -> None:
    assert signer_id(lifecycle(authorities)) == expected


def test_signer_tie_break_does_not_depend_on_listing_order() -> None:
    for authorities in (fresh(), list(reversed(fresh()))):
        assert signer_id(lifecycle(authorities)) == A1


# --- find --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(A1, A1, id="full id"),
        pytest.param("b1", B1, id="unique prefix"),
        pytest.param("B1", B1, id="prefix in upper case"),
        pytest.param(f"  {B[:6]} ", B, id="prefix with surrounding blanks"),
    ],
)
def test_find_by_id_or_unique_prefix(given: str, expected: str) -> None:
    assert lifecycle(prepared()).find(given).id == expected


@pytest.mark.parametrize(
    ("given", "error", "reason"),
    [
        pytest.param("a", InvalidRequest, "ambiguous_authority", id="ambiguous prefix"),
        pytest.param("d", InvalidRequest, "unknown_authority", id="no such authority"),
        pytest.param("", InvalidRequest, "unknown_authority", id="empty"),
    ],
)
def test_find_refuses_ambiguous_and_unknown(
    given: str, error: type[MeshcaError], reason: str
) -> None:
    found = refusal(lambda: lifecycle(prepared()).find(given))
    assert isinstance(found, error)
    assert found.reason == reason
    if reason == "ambiguous_authority":
        assert "2 authorities" in found.message


# --- plan_activate -----------------------------------------------------------------------------


def test_activate_default_is_the_one_prepared_root_and_its_intermediate_signs() -> None:
    lc = lifecycle(prepared())
    plan = lc.plan_activate(None, NOW)

    assert plan.action is LifecycleAction.ACTIVATE
    assert plan.target.id == B
    assert changes(plan) == [(B, PREPARED, ACTIVE, False), (B1, PREPARED, ACTIVE, True)]
    assert plan.key_ids == (B1,)
    assert plan.changes_anything
    assert signer_id(applied(lc, plan)) == B1


def test_activate_a_root_picks_its_newest_usable_intermediate() -> None:
    lc = lifecycle(
        [
            *prepared(),
            intermediate(B2, B, PREPARED, created=NOW - DAY / 2),
            intermediate(B3, B, PREPARED, created=NOW - DAY / 4, key=False),
        ]
    )
    plan = lc.plan_activate(B, NOW)
    assert changes(plan) == [(B, PREPARED, ACTIVE, False), (B2, PREPARED, ACTIVE, True)]
    assert signer_id(applied(lc, plan)) == B2


def test_activate_an_intermediate_by_id_makes_that_one_sign() -> None:
    lc = lifecycle([*prepared(), intermediate(B2, B, PREPARED, created=NOW - DAY / 2)])
    plan = lc.plan_activate(B1[:4], NOW)
    assert plan.target.id == B1
    assert changes(plan) == [(B, PREPARED, ACTIVE, False), (B1, PREPARED, ACTIVE, True)]
    assert signer_id(applied(lc, plan)) == B1


def test_activate_a_prepared_intermediate_under_the_signing_root() -> None:
    lc = lifecycle([*fresh(), intermediate(A2, A, PREPARED, created=NOW - DAY)])
    plan = lc.plan_activate(A2, NOW)
    assert changes(plan) == [(A, ACTIVE, ACTIVE, False), (A2, PREPARED, ACTIVE, True)]
    assert signer_id(applied(lc, plan)) == A2


@pytest.mark.parametrize("target", [A, A1], ids=["by root", "by intermediate"])
def test_activating_the_older_active_root_again_is_a_rollback(target: str) -> None:
    lc = lifecycle(rotated())
    plan = lc.plan_activate(target, NOW)
    assert changes(plan) == [(A, ACTIVE, ACTIVE, False), (A1, ACTIVE, ACTIVE, True)]
    assert plan.changes_anything
    after = applied(lc, plan)
    assert signer_id(after) == A1
    # ... and the new root can be activated again afterwards (roll forward).
    again = after.plan_activate(B, NOW + DAY)
    assert signer_id(applied(after, again, NOW + DAY)) == B1


@pytest.mark.parametrize(
    ("authorities", "target"),
    [
        pytest.param(fresh(), A, id="the signing root"),
        pytest.param(fresh(), A1, id="the signing intermediate"),
        pytest.param(rotated(), B, id="the new root after activation"),
        pytest.param([root(A, ACTIVE, activated=INIT_AT)], A, id="a bare root that signs"),
    ],
)
def test_activating_what_already_signs_changes_nothing(
    authorities: list[AuthorityView], target: str
) -> None:
    lc = lifecycle(authorities)
    plan = lc.plan_activate(target, NOW)
    assert not plan.changes_anything
    assert not any(t.signs for t in plan.transitions)


def test_activate_default_refuses_when_no_root_is_prepared() -> None:
    found = refusal(lambda: lifecycle(fresh()).plan_activate(None, NOW))
    assert isinstance(found, FailedPrecondition)
    assert found.reason == "nothing_to_activate"
    assert "no prepared root" in found.message


def test_activate_default_refuses_when_several_roots_are_prepared() -> None:
    authorities = [
        *prepared(),
        root(C, PREPARED, created=NOW - DAY / 2),
        intermediate(C1, C, PREPARED),
    ]
    found = refusal(lambda: lifecycle(authorities).plan_activate(None, NOW))
    assert isinstance(found, InvalidRequest)
    assert found.reason == "ambiguous_authority"
    assert B in found.message
    assert C in found.message


def _expired_prepared() -> list[AuthorityView]:
    return [
        *fresh(),
        root(B, PREPARED, created=NOW - 2 * YEAR, not_after=NOW - DAY),
        intermediate(B1, B, PREPARED, created=NOW - 2 * YEAR, not_after=NOW - DAY),
    ]


def _not_yet_valid() -> list[AuthorityView]:
    return [
        *fresh(),
        root(B, PREPARED, created=NOW - DAY, not_before=NOW + DAY),
        intermediate(B1, B, PREPARED, created=NOW - DAY, not_before=NOW + DAY),
    ]


@pytest.mark.parametrize(
    ("authorities", "target", "error", "reason"),
    [
        pytest.param(_expired_prepared(), B, FailedPrecondition, "authority_expired", id="expired"),
        pytest.param(
            _not_yet_valid(), B, FailedPrecondition, "authority_expired", id="not yet valid"
        ),
        pytest.param(
            [*fresh()[:1], intermediate(A1, A, RETIRED), *prepared()[2:]],
            A1,
            FailedPrecondition,
            "out_of_service",
            id="retired intermediate",
        ),
        pytest.param(
            [
                *rotated(),
                root(C, RETIRED, created=NOW - 2 * DAY),
                intermediate(C1, C, RETIRED, created=NOW - 2 * DAY),
            ],
            C,
            FailedPrecondition,
            "out_of_service",
            id="retired root",
        ),
        pytest.param(
            [
                *rotated(),
                root(C, REVOKED, created=NOW - 2 * DAY),
                intermediate(C1, C, REVOKED, created=NOW - 2 * DAY),
            ],
            C1,
            FailedPrecondition,
            "out_of_service",
            id="revoked",
        ),
        pytest.param(
            [
                *rotated(),
                root(C, RETIRED, created=NOW - 2 * DAY),
                intermediate(C1, C, PREPARED, created=NOW - 2 * DAY),
            ],
            C1,
            FailedPrecondition,
            "out_of_service",
            id="intermediate under a retired root",
        ),
        pytest.param(
            [*fresh(), root(B, PREPARED, key=False, created=NOW - DAY)],
            B,
            FailedPrecondition,
            "no_signing_key",
            id="root without key and no intermediate",
        ),
        pytest.param(
            [
                *fresh(),
                root(B, PREPARED, key=False, created=NOW - DAY),
                intermediate(B1, B, PREPARED, created=NOW - 2 * YEAR, not_after=NOW - DAY),
            ],
            B,
            FailedPrecondition,
            "no_signing_key",
            id="root without key whose only intermediate expired",
        ),
        pytest.param(fresh(), "d", InvalidRequest, "unknown_authority", id="unknown id"),
    ],
)
def test_activate_refusals(
    authorities: list[AuthorityView], target: str, error: type[MeshcaError], reason: str
) -> None:
    found = refusal(lambda: lifecycle(authorities).plan_activate(target, NOW))
    assert isinstance(found, error)
    assert found.reason == reason


def test_activate_an_imported_root_without_key_signs_with_its_intermediate() -> None:
    lc = lifecycle(
        [
            *fresh(),
            root(B, PREPARED, key=False, created=NOW - DAY),
            intermediate(B1, B, PREPARED, created=NOW - DAY),
        ]
    )
    plan = lc.plan_activate(None, NOW)
    assert changes(plan) == [(B, PREPARED, ACTIVE, False), (B1, PREPARED, ACTIVE, True)]
    assert signer_id(applied(lc, plan)) == B1


def test_activate_a_prepared_bare_root_makes_the_root_sign() -> None:
    lc = lifecycle([*fresh(), root(B, PREPARED, created=NOW - DAY)])
    plan = lc.plan_activate(None, NOW)
    assert changes(plan) == [(B, PREPARED, ACTIVE, True)]
    assert signer_id(applied(lc, plan)) == B


def _imported_three_levels() -> list[AuthorityView]:
    """Istio plug-in CA material: root (no key) -> cluster intermediate (no key) -> the
    intermediate meshca signs with (key)."""
    return [
        *fresh(),
        root(B, PREPARED, key=False, created=NOW - DAY),
        intermediate(B1, B, PREPARED, key=False, created=NOW - DAY),
        intermediate(B2, B1, PREPARED, created=NOW - DAY),
    ]


def test_activate_the_root_of_a_three_level_import_signs_with_the_keyed_intermediate() -> None:
    lc = lifecycle(_imported_three_levels())
    plan = lc.plan_activate(B, NOW)
    assert signer_id(applied(lc, plan)) == B2
    assert [t.authority.id for t in plan.transitions if t.signs] == [B2]


def test_activating_an_intermediate_without_key_never_claims_it_signs() -> None:
    """Activating the middle (keyless) intermediate of an imported chain must either make the
    keyed intermediate below it sign, or be refused; it must never report a keyless signer."""
    lc = lifecycle(_imported_three_levels())
    outcome: Plan | FailedPrecondition
    try:
        outcome = lc.plan_activate(B1, NOW)
    except FailedPrecondition as refused:
        outcome = refused
    if isinstance(outcome, FailedPrecondition):
        assert outcome.reason == "no_signing_key"
        return
    signing = [t.authority for t in outcome.transitions if t.signs]
    assert all(a.has_key for a in signing)
    assert signer_id(applied(lc, outcome)) == B2


@pytest.mark.parametrize(
    ("authorities", "target"),
    [
        pytest.param(prepared(), None, id="default"),
        pytest.param(prepared(), B1, id="intermediate"),
        pytest.param(rotated(), A, id="rollback"),
        pytest.param(rotated(), B1, id="noop"),
        pytest.param([*fresh(), intermediate(A2, A, PREPARED, created=NOW - DAY)], A, id="newer"),
    ],
)
def test_after_any_activation_the_authority_marked_signs_is_the_signer(
    authorities: list[AuthorityView], target: str | None
) -> None:
    lc = lifecycle(authorities)
    plan = lc.plan_activate(target, NOW)
    marked = [t.authority.id for t in plan.transitions if t.signs]
    after = signer_id(applied(lc, plan))
    assert marked in ([], [after])
    if not marked:
        assert after == signer_id(lc)


# --- plan_retire -------------------------------------------------------------------------------


def test_retire_default_is_the_one_active_root_that_no_longer_signs() -> None:
    lc = lifecycle(rotated())
    plan = lc.plan_retire(None, NOW)
    assert plan.action is LifecycleAction.RETIRE
    assert plan.target.id == A
    assert changes(plan) == [(A, ACTIVE, RETIRED, False), (A1, ACTIVE, RETIRED, False)]
    assert set(plan.key_ids) == {A, A1}
    after = applied(lc, plan)
    assert signer_id(after) == B1


def test_retire_cascades_to_every_intermediate_below_the_root() -> None:
    lc = lifecycle(
        [
            *rotated(),
            intermediate(A2, A, PREPARED, created=INIT_AT + DAY),
            intermediate(A3, A1, ACTIVE, created=INIT_AT + DAY),
        ]
    )
    plan = lc.plan_retire(A, NOW)
    assert {t.authority.id for t in plan.transitions} == {A, A1, A2, A3}
    assert {t.to_state for t in plan.transitions} == {RETIRED}
    assert set(plan.key_ids) == {A, A1, A2, A3}


def test_retire_leaves_an_already_revoked_intermediate_revoked() -> None:
    authorities = [root(A, ACTIVE), intermediate(A1, A, REVOKED), *rotated()[2:]]
    plan = lifecycle(authorities).plan_retire(A, NOW)
    assert changes(plan) == [(A, ACTIVE, RETIRED, False)]


def test_retire_a_prepared_root_undoes_prepare() -> None:
    lc = lifecycle(prepared())
    plan = lc.plan_retire(B, NOW)
    assert changes(plan) == [(B, PREPARED, RETIRED, False), (B1, PREPARED, RETIRED, False)]
    assert signer_id(applied(lc, plan)) == A1


def test_retire_one_old_intermediate_under_the_signing_root() -> None:
    lc = lifecycle([*fresh(), intermediate(A2, A, ACTIVE, created=NOW - DAY, activated=NOW - DAY)])
    plan = lc.plan_retire(A1, NOW)
    assert changes(plan) == [(A1, ACTIVE, RETIRED, False)]
    assert plan.key_ids == (A1,)


@pytest.mark.parametrize(
    ("authorities", "target", "error", "reason"),
    [
        pytest.param(fresh(), A, FailedPrecondition, "authority_signing", id="signing root"),
        pytest.param(fresh(), A1, FailedPrecondition, "authority_signing", id="signer"),
        pytest.param(rotated(), B, FailedPrecondition, "authority_signing", id="new root"),
        pytest.param(fresh(), None, FailedPrecondition, "nothing_to_retire", id="default, nothing"),
        pytest.param(
            prepared(),
            None,
            FailedPrecondition,
            "nothing_to_retire",
            id="default never picks a prepared root",
        ),
        pytest.param(
            [
                *rotated(),
                root(C, ACTIVE, created=NOW - 2 * DAY),
                intermediate(C1, C, ACTIVE, created=NOW - 2 * DAY, activated=NOW - 2 * DAY),
            ],
            None,
            InvalidRequest,
            "ambiguous_authority",
            id="default, two candidates",
        ),
        pytest.param(
            [root(A, RETIRED), intermediate(A1, A, RETIRED), *rotated()[2:]],
            A,
            FailedPrecondition,
            "already_out_of_service",
            id="already retired",
        ),
        pytest.param(
            [root(A, REVOKED), intermediate(A1, A, REVOKED), *rotated()[2:]],
            A1,
            FailedPrecondition,
            "already_out_of_service",
            id="revoked",
        ),
    ],
)
def test_retire_refusals(
    authorities: list[AuthorityView], target: str | None, error: type[MeshcaError], reason: str
) -> None:
    found = refusal(lambda: lifecycle(authorities).plan_retire(target, NOW))
    assert isinstance(found, error)
    assert found.reason == reason


def test_retire_refusal_of_the_signing_family_names_the_signer_and_what_to_do() -> None:
    found = refusal(lambda: lifecycle(fresh()).plan_retire(A, NOW))
    assert A1 in found.message
    assert "prepare and activate another authority first" in found.message


# --- plan_revoke -------------------------------------------------------------------------------


def test_revoke_cascades_to_the_intermediates() -> None:
    lc = lifecycle(rotated())
    plan = lc.plan_revoke(A, NOW)
    assert plan.action is LifecycleAction.REVOKE
    assert changes(plan) == [(A, ACTIVE, REVOKED, False), (A1, ACTIVE, REVOKED, False)]
    assert set(plan.key_ids) == {A, A1}
    assert signer_id(applied(lc, plan)) == B1


def test_revoke_a_retired_root_after_a_late_compromise() -> None:
    authorities = [root(A, RETIRED), intermediate(A1, A, RETIRED), *rotated()[2:]]
    plan = lifecycle(authorities).plan_revoke(A, NOW)
    assert changes(plan) == [(A, RETIRED, REVOKED, False), (A1, RETIRED, REVOKED, False)]


def test_revoke_a_prepared_root() -> None:
    plan = lifecycle(prepared()).plan_revoke(B, NOW)
    assert changes(plan) == [(B, PREPARED, REVOKED, False), (B1, PREPARED, REVOKED, False)]


def test_revoke_a_single_old_intermediate_keeps_its_root() -> None:
    authorities = [*fresh(), intermediate(A2, A, ACTIVE, created=NOW - DAY, activated=NOW - DAY)]
    plan = lifecycle(authorities).plan_revoke(A1, NOW)
    assert changes(plan) == [(A1, ACTIVE, REVOKED, False)]


@pytest.mark.parametrize(
    ("authorities", "target", "reason"),
    [
        pytest.param(fresh(), A1, "authority_signing", id="the signer"),
        pytest.param(fresh(), A, "authority_signing", id="the signer's root"),
        pytest.param(rotated(), B, "authority_signing", id="the new signing root"),
        pytest.param(
            [root(A, REVOKED), intermediate(A1, A, REVOKED), *rotated()[2:]],
            A,
            "already_revoked",
            id="revoked twice",
        ),
    ],
)
def test_revoke_refusals(authorities: list[AuthorityView], target: str, reason: str) -> None:
    found = refusal(lambda: lifecycle(authorities).plan_revoke(target, NOW))
    assert isinstance(found, FailedPrecondition)
    assert found.reason == reason


# --- revoked_key_ids ---------------------------------------------------------------------------


def test_revoked_key_ids_are_the_unexpired_revoked_authorities_sorted() -> None:
    authorities = [
        root(C, REVOKED, created=NOW - 2 * YEAR, not_after=NOW + YEAR),
        intermediate(C1, C, REVOKED, created=NOW - 2 * YEAR, not_after=NOW - DAY),
        root(A, REVOKED),
        intermediate(A1, A, REVOKED),
        intermediate(A2, A, RETIRED),
        *rotated()[2:],
    ]
    assert lifecycle(authorities).revoked_key_ids(NOW) == [A, A1, C]
    assert lifecycle(authorities).revoked_key_ids(NOW + 20 * YEAR) == []
    assert lifecycle(rotated()).revoked_key_ids(NOW) == []


# --- automatic intermediate rotation -----------------------------------------------------------

LIFE = 30 * DAY
I_START = NOW - 200 * DAY  # the signing intermediate's NotBefore


def at(fraction: float) -> datetime:
    """The instant when ``fraction`` of the signing intermediate's lifetime has passed."""
    return I_START + LIFE * fraction


def signing_intermediate_ca(
    *, root_key: bool = True, successor: bool = False
) -> list[AuthorityView]:
    """Root A (long-lived) and the signing intermediate A1 (lifetime LIFE from I_START), with a
    prepared successor A2 made at half of A1's life when ``successor``."""
    authorities = [
        root(A, ACTIVE, key=root_key, created=I_START - DAY, activated=I_START - DAY),
        intermediate(A1, A, ACTIVE, created=I_START, activated=I_START, not_after=at(1)),
    ]
    if successor:
        authorities.append(intermediate(A2, A, PREPARED, created=at(0.5), not_after=at(1.5)))
    return authorities


@pytest.mark.parametrize(
    ("fraction", "successor", "expected"),
    [
        pytest.param(0.49, False, None, id="0.49 nothing yet"),
        pytest.param(0.5, False, "prepare", id="0.50 prepare"),
        pytest.param(0.83, False, "prepare", id="0.83 prepare (late, none yet)"),
        pytest.param(0.84, False, "prepare", id="0.84 prepare first (none to activate)"),
        pytest.param(0.5, True, None, id="0.50 already prepared"),
        pytest.param(0.83, True, None, id="0.83 prepared, not yet time"),
        pytest.param(0.84, True, "activate", id="0.84 activate"),
        pytest.param(0.99, True, "activate", id="0.99 activate"),
    ],
)
def test_intermediate_rotation_points(
    fraction: float, successor: bool, expected: str | None
) -> None:
    lc = lifecycle(signing_intermediate_ca(successor=successor))
    due = lc.plan_intermediate_rotation(at(fraction), IntermediatePolicy())
    if expected is None:
        assert due is None
    elif expected == "prepare":
        assert isinstance(due, PrepareIntermediate)
        assert due.root.id == A
        assert due.replaces.id == A1
    else:
        assert isinstance(due, Plan)
        assert due.action is LifecycleAction.ACTIVATE_INTERMEDIATE
        assert changes(due) == [(A2, PREPARED, ACTIVE, True)]
        assert due.key_ids == (A2,)
        assert signer_id(applied(lc, due, at(fraction))) == A2


def test_intermediate_rotation_follows_the_policy_points() -> None:
    policy = IntermediatePolicy(prepare_at=0.25, activate_at=0.5)
    plain = lifecycle(signing_intermediate_ca())
    assert plain.plan_intermediate_rotation(at(0.24), policy) is None
    assert isinstance(plain.plan_intermediate_rotation(at(0.25), policy), PrepareIntermediate)
    ready = lifecycle(
        [
            *signing_intermediate_ca(),
            intermediate(A2, A, PREPARED, created=at(0.25), not_after=at(1.25)),
        ]
    )
    assert ready.plan_intermediate_rotation(at(0.49), policy) is None
    assert isinstance(ready.plan_intermediate_rotation(at(0.5), policy), Plan)


def test_intermediate_rotation_needs_the_root_key_to_prepare() -> None:
    lc = lifecycle(signing_intermediate_ca(root_key=False))
    assert lc.plan_intermediate_rotation(at(0.6), IntermediatePolicy()) is None
    assert lc.plan_intermediate_rotation(at(0.9), IntermediatePolicy()) is None


def test_a_prepared_successor_is_activated_even_when_the_root_key_is_not_held() -> None:
    lc = lifecycle(signing_intermediate_ca(root_key=False, successor=True))
    due = lc.plan_intermediate_rotation(at(0.9), IntermediatePolicy())
    assert isinstance(due, Plan)
    assert changes(due) == [(A2, PREPARED, ACTIVE, True)]


def test_no_intermediate_rotation_when_a_bare_root_signs() -> None:
    lc = lifecycle([root(A, ACTIVE, activated=INIT_AT, not_after=NOW + DAY)])
    assert lc.plan_intermediate_rotation(NOW, IntermediatePolicy()) is None


def test_no_intermediate_rotation_when_nothing_signs() -> None:
    lc = lifecycle([root(A, ACTIVE, key=False), intermediate(A1, A, ACTIVE, key=False)])
    assert lc.plan_intermediate_rotation(NOW, IntermediatePolicy()) is None


def test_intermediate_rotation_never_activates_an_intermediate_of_another_root() -> None:
    """A root the admin prepared is theirs to activate; the automatic rotation stays under the
    signing root."""
    lc = lifecycle(
        [
            *signing_intermediate_ca(),
            root(B, PREPARED, created=at(0.4)),
            intermediate(B1, B, PREPARED, created=at(0.4), not_after=at(2)),
        ]
    )
    due = lc.plan_intermediate_rotation(at(0.9), IntermediatePolicy())
    assert isinstance(due, PrepareIntermediate)
    assert due.root.id == A


def _root_ends_with_the_signer(prepared_twins: int) -> list[AuthorityView]:
    """The root expires when the signing intermediate does (the intermediate was clamped to the
    root's end, as ``build_intermediate`` does when the root has less than ``intermediate_ttl``
    left), with ``prepared_twins`` intermediates made since, clamped the same way."""
    return [
        root(A, ACTIVE, created=I_START - DAY, activated=I_START - DAY, not_after=at(1)),
        intermediate(A1, A, ACTIVE, created=I_START, activated=I_START, not_after=at(1)),
        *[
            intermediate(f"a{n + 2}" + "0" * 30, A, PREPARED, created=at(0.5), not_after=at(1))
            for n in range(prepared_twins)
        ],
    ]


@pytest.mark.parametrize("prepared_twins", [0, 1, 3])
def test_no_endless_intermediate_preparation_when_the_root_ends_with_the_signer(
    prepared_twins: int,
) -> None:
    lc = lifecycle(_root_ends_with_the_signer(prepared_twins))
    for fraction in (0.6, 0.9):
        assert lc.plan_intermediate_rotation(at(fraction), IntermediatePolicy()) is None


# --- plan_retire_expired -----------------------------------------------------------------------


def test_expired_intermediates_that_do_not_sign_are_retired() -> None:
    lc = lifecycle(
        [
            root(A, ACTIVE, activated=INIT_AT),
            intermediate(A1, A, ACTIVE, activated=INIT_AT, not_after=NOW - DAY),
            intermediate(A2, A, ACTIVE, created=NOW - 10 * DAY, activated=NOW - 5 * DAY),
            intermediate(A3, A, PREPARED, created=INIT_AT, not_after=NOW),
            intermediate(A4, A, RETIRED, created=INIT_AT, not_after=NOW - DAY),
        ]
    )
    plan = lc.plan_retire_expired(NOW)
    assert plan is not None
    assert plan.action is LifecycleAction.RETIRE_EXPIRED
    assert changes(plan) == [(A1, ACTIVE, RETIRED, False), (A3, PREPARED, RETIRED, False)]
    assert signer_id(applied(lc, plan)) == A2


def test_the_signer_is_not_retired_even_when_expired() -> None:
    lc = lifecycle(
        [
            root(A, ACTIVE, activated=INIT_AT),
            intermediate(A1, A, ACTIVE, activated=INIT_AT, not_after=NOW - DAY),
        ]
    )
    assert lc.plan_retire_expired(NOW) is None


def test_nothing_to_retire_when_nothing_expired() -> None:
    assert lifecycle(rotated()).plan_retire_expired(NOW) is None


# --- IntermediatePolicy and lifetimes ----------------------------------------------------------


def test_intermediate_policy_defaults_are_spire_s() -> None:
    policy = IntermediatePolicy()
    assert policy.prepare_at == 0.5
    assert policy.activate_at == pytest.approx(5 / 6)


@pytest.mark.parametrize(
    ("prepare_at", "activate_at"),
    [
        pytest.param(0.0, 0.5, id="prepare at 0"),
        pytest.param(-0.1, 0.5, id="negative"),
        pytest.param(0.5, 0.5, id="same point"),
        pytest.param(0.6, 0.5, id="activate before prepare"),
        pytest.param(0.5, 1.0, id="activate at the end"),
        pytest.param(0.5, 1.2, id="activate after the end"),
    ],
)
def test_intermediate_policy_refuses_points_out_of_order(
    prepare_at: float, activate_at: float
) -> None:
    with pytest.raises(InvalidRequest) as info:
        IntermediatePolicy(prepare_at=prepare_at, activate_at=activate_at)
    assert info.value.reason == "invalid_rotation_policy"
    assert f"{prepare_at:g}" in info.value.message
    assert f"{activate_at:g}" in info.value.message


def test_an_intermediate_never_outlives_its_root() -> None:
    r = root(A, ACTIVE, created=NOW - YEAR, not_after=NOW + 30 * DAY)
    assert intermediate_ttl(r, YEAR, NOW) == 30 * DAY
    assert intermediate_ttl(r, DAY, NOW) == DAY


@pytest.mark.parametrize(
    ("moment", "elapsed"),
    [
        pytest.param(I_START - DAY, 0.0, id="before"),
        pytest.param(at(0.5), 0.5, id="half"),
        pytest.param(at(1) + DAY, 1.0, id="after"),
    ],
)
def test_elapsed_fraction_of_life(moment: datetime, elapsed: float) -> None:
    a1 = signing_intermediate_ca()[1]
    assert a1.elapsed(moment) == pytest.approx(elapsed)


# --- plan_reinstate: the undo of a retirement --------------------------------------------------


def retired_old_family() -> list[AuthorityView]:
    """After retiring A: B signs, A and its intermediates are out of the bundle."""
    return [
        root(A, RETIRED, activated=INIT_AT),
        intermediate(A1, A, RETIRED, activated=INIT_AT),
        intermediate(A2, A, RETIRED, created=INIT_AT - YEAR, not_after=NOW - DAY),  # expired
        root(B, ACTIVE, created=NOW - DAY),
        intermediate(B1, B, ACTIVE, created=NOW - DAY, activated=NOW - DAY / 2),
    ]


def test_reinstate_trusts_the_retired_family_again_without_its_expired_members() -> None:
    plan = lifecycle(retired_old_family()).plan_reinstate(A[:6], NOW)
    assert plan.action is LifecycleAction.REINSTATE
    assert [(t.authority.id, t.to_state, t.signs) for t in plan.transitions] == [
        (A, PREPARED, False),
        (A1, PREPARED, False),
    ]


def test_reinstating_an_intermediate_brings_its_retired_root_back_too() -> None:
    plan = lifecycle(retired_old_family()).plan_reinstate(A1, NOW)
    assert [t.authority.id for t in plan.transitions] == [A, A1]


@pytest.mark.parametrize(
    ("authorities", "target", "reason"),
    [
        pytest.param(rotated(), A, "not_retired", id="active"),
        pytest.param(
            [*retired_old_family()[3:], root(A, REVOKED), intermediate(A1, A, REVOKED)],
            A,
            "not_retired",
            id="revoked",
        ),
        pytest.param(
            [root(A, REVOKED), intermediate(A1, A, RETIRED), *retired_old_family()[3:]],
            A1,
            "authority_revoked",
            id="under-a-revoked-root",
        ),
        pytest.param(retired_old_family(), A2, "authority_expired", id="expired"),
    ],
)
def test_reinstate_refuses_what_must_stay_out(
    authorities: list[AuthorityView], target: str, reason: str
) -> None:
    with pytest.raises(FailedPrecondition) as info:
        lifecycle(authorities).plan_reinstate(target, NOW)
    assert info.value.reason == reason


# --- intermediate_rotation_blocked: when the admin must act ------------------------------------


@pytest.mark.parametrize(
    ("fraction", "root_key", "root_ends_with_signer", "blocked"),
    [
        pytest.param(0.4, False, True, None, id="not-due"),
        pytest.param(0.6, True, False, None, id="rotatable"),
        pytest.param(0.6, False, False, "is not held", id="root-key-missing"),
        pytest.param(0.6, True, True, "ends with its root", id="root-ends"),
    ],
)
def test_a_rotation_that_cannot_happen_says_why(
    fraction: float, root_key: bool, root_ends_with_signer: bool, blocked: str | None
) -> None:
    start = NOW - 100 * DAY
    end = start + 200 * DAY
    authorities = [
        root(
            A,
            ACTIVE,
            key=root_key,
            activated=start,
            not_after=end if root_ends_with_signer else None,
        ),
        intermediate(A1, A, ACTIVE, activated=start, not_before=start, not_after=end),
    ]
    when = start + (end - start) * fraction
    reason = lifecycle(authorities).intermediate_rotation_blocked(when, IntermediatePolicy())
    if blocked is None:
        assert reason is None
    else:
        assert reason is not None
        assert blocked in reason
        assert A1 in reason
