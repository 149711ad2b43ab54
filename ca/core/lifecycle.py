"""Roles and lifecycle states of CA authorities (roots and intermediates), and the rules that
move them: which authority signs, and what ``root activate``, ``retire``, ``revoke`` and the
automatic intermediate rotation change. No I/O: callers load the authorities, ask for a plan and
store it.

A root and the intermediates under it form a *family*. A family goes PREPARED (trusted, in the
bundle, not signing) -> ACTIVE (activated; the newest activation signs) -> RETIRED (out of the
bundle), or REVOKED at any point (out of the bundle, and agents holding its certificates re-issue
at once). Exactly one authority signs: the ACTIVE one holding a key that was activated last.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ca.core.errors import FailedPrecondition, InvalidRequest


class AuthorityRole(enum.StrEnum):
    ROOT = "root"
    INTERMEDIATE = "intermediate"


class AuthorityState(enum.StrEnum):
    """PREPARED (trusted, not signing) -> ACTIVE (signing) -> RETIRED, or REVOKED."""

    PREPARED = "prepared"
    ACTIVE = "active"
    RETIRED = "retired"
    REVOKED = "revoked"

    @property
    def trusted(self) -> bool:
        """Whether a root in this state belongs in the trust bundle."""
        return self in (AuthorityState.PREPARED, AuthorityState.ACTIVE)


class LifecycleAction(enum.StrEnum):
    """What an audit event of the CA's lifecycle records."""

    INIT = "init"
    PREPARE = "prepare"
    ACTIVATE = "activate"
    RETIRE = "retire"
    REVOKE = "revoke"
    REINSTATE = "reinstate"
    PREPARE_INTERMEDIATE = "prepare-intermediate"
    ACTIVATE_INTERMEDIATE = "activate-intermediate"
    RETIRE_EXPIRED = "retire-expired"


@dataclass(frozen=True, slots=True)
class AuthorityView:
    """What the lifecycle rules need to know of one stored authority."""

    id: str
    role: AuthorityRole
    state: AuthorityState
    parent_id: str | None
    has_key: bool
    not_before: datetime
    not_after: datetime
    created_at: datetime
    activated_at: datetime | None = None

    def valid_at(self, now: datetime) -> bool:
        return self.not_before <= now < self.not_after

    def elapsed(self, now: datetime) -> float:
        """The fraction of its lifetime that has passed at ``now`` (0 before, 1 after)."""
        lifetime = (self.not_after - self.not_before).total_seconds()
        if lifetime <= 0:
            return 1.0
        return min(max((now - self.not_before).total_seconds() / lifetime, 0.0), 1.0)


@dataclass(frozen=True, slots=True)
class Transition:
    """One authority moving to ``to_state``; ``signs`` makes it the signing authority."""

    authority: AuthorityView
    to_state: AuthorityState
    signs: bool = False

    @property
    def changes_anything(self) -> bool:
        return self.signs or self.to_state is not self.authority.state


@dataclass(frozen=True, slots=True)
class Plan:
    """What one lifecycle step changes. ``key_ids`` are the authorities whose issued
    certificates the step concerns (for ``retire``: those that must no longer be in use)."""

    action: LifecycleAction
    target: AuthorityView
    transitions: tuple[Transition, ...]
    key_ids: tuple[str, ...] = ()

    @property
    def changes_anything(self) -> bool:
        return any(t.changes_anything for t in self.transitions)


@dataclass(frozen=True, slots=True)
class IntermediatePolicy:
    """When the signing intermediate is replaced, as fractions of its lifetime (SPIRE's
    defaults: prepare the next at half its life, activate it with a sixth left)."""

    prepare_at: float = 0.5
    activate_at: float = 5 / 6

    def __post_init__(self) -> None:
        if not 0 < self.prepare_at < self.activate_at < 1:
            raise InvalidRequest(
                "invalid_rotation_policy",
                "intermediate rotation needs 0 < prepare point < activate point < 1, got "
                f"{self.prepare_at:g} and {self.activate_at:g}",
            )


@dataclass(frozen=True, slots=True)
class PrepareIntermediate:
    """The next intermediate is due: build one under ``root`` and store it PREPARED."""

    root: AuthorityView
    replaces: AuthorityView


_EPOCH = datetime.min


class Lifecycle:
    """The rules over one consistent snapshot of every stored authority."""

    def __init__(self, authorities: Iterable[AuthorityView]) -> None:
        self.authorities = tuple(authorities)
        self._by_id = {a.id: a for a in self.authorities}

    # --- reading ---------------------------------------------------------------------------

    def signer(self) -> AuthorityView | None:
        """The authority that signs: ACTIVE, holding a key, activated last (an intermediate
        before its root when both were activated together)."""
        candidates = [a for a in self.authorities if a.state is AuthorityState.ACTIVE and a.has_key]
        if not candidates:
            return None
        return max(
            candidates,
            key=lambda a: (
                (a.activated_at or _EPOCH.replace(tzinfo=a.created_at.tzinfo)),
                a.role is AuthorityRole.INTERMEDIATE,
                a.created_at,
            ),
        )

    def root_of(self, authority: AuthorityView) -> AuthorityView:
        """The root at the top of ``authority``'s chain (itself for a root)."""
        current = authority
        seen = {current.id}
        while current.parent_id is not None and current.parent_id in self._by_id:
            current = self._by_id[current.parent_id]
            if current.id in seen:
                break
            seen.add(current.id)
        return current

    def family(self, authority: AuthorityView) -> list[AuthorityView]:
        """``authority`` and every authority below it."""
        out = [authority]
        for child in self.authorities:
            if child.parent_id == authority.id and child.id != authority.id:
                out.extend(self.family(child))
        return out

    def find(self, id_or_prefix: str) -> AuthorityView:
        """The authority whose id is ``id_or_prefix`` or starts with it (unambiguously)."""
        wanted = id_or_prefix.strip().lower()
        if wanted in self._by_id:
            return self._by_id[wanted]
        matches = [a for a in self.authorities if a.id.startswith(wanted)] if wanted else []
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise InvalidRequest("unknown_authority", f"no CA authority has id {id_or_prefix!r}")
        raise InvalidRequest(
            "ambiguous_authority",
            f"{id_or_prefix!r} matches {len(matches)} authorities; give more of the id",
        )

    def revoked_key_ids(self, now: datetime) -> list[str]:
        """Revoked authorities whose certificates could still be presented (not yet expired)."""
        return sorted(
            a.id
            for a in self.authorities
            if a.state is AuthorityState.REVOKED and a.not_after > now
        )

    # --- planning --------------------------------------------------------------------------

    def plan_activate(self, id_or_prefix: str | None, now: datetime) -> Plan:
        """Make a prepared (or an earlier, still active) authority sign from now on: its root and
        the authority that will sign become ACTIVE."""
        target = (
            self.find(id_or_prefix)
            if id_or_prefix
            else self._only(
                [
                    a
                    for a in self.authorities
                    if a.role is AuthorityRole.ROOT and a.state is AuthorityState.PREPARED
                ],
                "prepared root",
                "activate",
            )
        )
        self._require_usable(target, now, "activate")
        root = self.root_of(target)
        self._require_usable(root, now, "activate")
        signer = self._signer_under(target, now)
        current = self.signer()
        already = current is not None and current.id == signer.id
        transitions = [
            Transition(a, AuthorityState.ACTIVE, signs=a.id == signer.id and not already)
            for a in self._path_down(root, signer)
        ]
        return Plan(LifecycleAction.ACTIVATE, target, tuple(transitions), (signer.id,))

    def plan_retire(self, id_or_prefix: str | None, now: datetime) -> Plan:
        """Take a root (with its intermediates) or a single intermediate out of service."""
        target = (
            self.find(id_or_prefix)
            if id_or_prefix
            else self._only(self._retirable_roots(), "active root that no longer signs", "retire")
        )
        if target.state in (AuthorityState.RETIRED, AuthorityState.REVOKED):
            raise FailedPrecondition(
                "already_out_of_service", f"authority {target.id} is already {target.state}"
            )
        family = self.family(target)
        self._require_not_signing(family, "retire")
        return Plan(
            LifecycleAction.RETIRE,
            target,
            tuple(self._out_of_service(family, AuthorityState.RETIRED)),
            tuple(a.id for a in family),
        )

    def plan_revoke(self, id_or_prefix: str, now: datetime) -> Plan:
        """Distrust a root (with its intermediates) or an intermediate at once (compromise)."""
        target = self.find(id_or_prefix)
        if target.state is AuthorityState.REVOKED:
            raise FailedPrecondition("already_revoked", f"authority {target.id} is already revoked")
        family = self.family(target)
        self._require_not_signing(family, "revoke")
        return Plan(
            LifecycleAction.REVOKE,
            target,
            tuple(self._out_of_service(family, AuthorityState.REVOKED)),
            tuple(a.id for a in family),
        )

    def plan_reinstate(self, id_or_prefix: str, now: datetime) -> Plan:
        """Undo a retirement: a retired root (with its unexpired retired intermediates) or
        intermediate is trusted again, PREPARED; activate it to make it sign."""
        target = self.find(id_or_prefix)
        if target.state is not AuthorityState.RETIRED:
            raise FailedPrecondition(
                "not_retired",
                f"authority {target.id} is {target.state}; only a retired one can be reinstated"
                + (
                    " (a revoked authority is never trusted again)"
                    if target.state is AuthorityState.REVOKED
                    else ""
                ),
            )
        self._require_usable_dates(target, now, "reinstate")
        root = self.root_of(target)
        if root.state is AuthorityState.REVOKED:
            raise FailedPrecondition(
                "authority_revoked", f"the root {root.id} above {target.id} was revoked"
            )
        family = [
            a
            for a in (*self._path_down(root, target)[:-1], *self.family(target))
            if a.state is AuthorityState.RETIRED and a.valid_at(now)
        ]
        return Plan(
            LifecycleAction.REINSTATE,
            target,
            tuple(Transition(a, AuthorityState.PREPARED) for a in family),
        )

    def plan_intermediate_rotation(
        self, now: datetime, policy: IntermediatePolicy
    ) -> Plan | PrepareIntermediate | None:
        """The next automatic step for the signing intermediate, if one is due: prepare its
        successor under the same root, or activate the prepared successor."""
        signer = self.signer()
        if signer is None or signer.role is not AuthorityRole.INTERMEDIATE:
            return None
        root = self.root_of(signer)
        if root.not_after <= signer.not_after:
            return None  # no successor could outlive it: the root itself needs rotating
        elapsed = signer.elapsed(now)
        successor = self._prepared_successor(root, signer, now)
        if successor is not None and elapsed >= policy.activate_at:
            return Plan(
                LifecycleAction.ACTIVATE_INTERMEDIATE,
                successor,
                (Transition(successor, AuthorityState.ACTIVE, signs=True),),
                (successor.id,),
            )
        if successor is None and elapsed >= policy.prepare_at and root.has_key:
            return PrepareIntermediate(root, signer)
        return None

    def intermediate_rotation_blocked(
        self, now: datetime, policy: IntermediatePolicy
    ) -> str | None:
        """Why the signing intermediate, due for replacement, cannot be replaced automatically
        (``None`` when it is not due or can be): the admin must act before it expires."""
        signer = self.signer()
        if signer is None or signer.role is not AuthorityRole.INTERMEDIATE:
            return None
        if signer.elapsed(now) < policy.prepare_at:
            return None
        root = self.root_of(signer)
        if root.not_after <= signer.not_after:
            return (
                f"the signing intermediate {signer.id} ends with its root {root.id} "
                f"({signer.not_after:%Y-%m-%dT%H:%M:%SZ}); rotate the root: meshca root prepare, "
                "then meshca root activate"
            )
        if not root.has_key and self._prepared_successor(root, signer, now) is None:
            return (
                f"the key of root {root.id} is not held (an imported CA), so nothing can replace "
                f"the signing intermediate {signer.id} (valid until "
                f"{signer.not_after:%Y-%m-%dT%H:%M:%SZ}); import one with meshca root prepare "
                "--from-dir, then meshca root activate"
            )
        return None

    def plan_retire_expired(self, now: datetime) -> Plan | None:
        """Intermediates that no longer sign and have expired leave the trusted set."""
        signer = self.signer()
        expired = [
            a
            for a in self.authorities
            if a.role is AuthorityRole.INTERMEDIATE
            and a.state in (AuthorityState.ACTIVE, AuthorityState.PREPARED)
            and a.not_after <= now
            and (signer is None or a.id != signer.id)
        ]
        if not expired:
            return None
        return Plan(
            LifecycleAction.RETIRE_EXPIRED,
            expired[0],
            tuple(Transition(a, AuthorityState.RETIRED) for a in expired),
        )

    # --- helpers ---------------------------------------------------------------------------

    def _signer_under(self, authority: AuthorityView, now: datetime) -> AuthorityView:
        """Who signs when ``authority`` is activated: an intermediate holding its key signs
        itself; otherwise (a root, or a keyless intermediate of an imported chain) the newest
        usable intermediate below it holding a key, or ``authority`` when it holds the only key.
        """
        if authority.role is AuthorityRole.INTERMEDIATE and authority.has_key:
            return authority
        usable = [
            a
            for a in self.family(authority)[1:]
            if a.has_key
            and a.valid_at(now)
            and a.state in (AuthorityState.PREPARED, AuthorityState.ACTIVE)
        ]
        if usable:
            return max(usable, key=lambda a: a.created_at)
        if authority.has_key:
            return authority
        raise FailedPrecondition(
            "no_signing_key",
            f"neither {authority.id} nor any usable intermediate under it holds a signing key",
        )

    def _path_down(self, root: AuthorityView, signer: AuthorityView) -> list[AuthorityView]:
        """The authorities from ``root`` down to ``signer``, both included."""
        path = [signer]
        while path[-1].id != root.id and path[-1].parent_id in self._by_id:
            path.append(self._by_id[path[-1].parent_id])
        return list(reversed(path))

    def _prepared_successor(
        self, root: AuthorityView, signer: AuthorityView, now: datetime
    ) -> AuthorityView | None:
        candidates = [
            a
            for a in self.family(root)[1:]
            if a.state is AuthorityState.PREPARED
            and a.has_key
            and a.valid_at(now)
            and a.not_after > signer.not_after
        ]
        return max(candidates, key=lambda a: a.created_at) if candidates else None

    def _retirable_roots(self) -> list[AuthorityView]:
        signer = self.signer()
        signing_root = self.root_of(signer) if signer is not None else None
        return [
            a
            for a in self.authorities
            if a.role is AuthorityRole.ROOT
            and a.state is AuthorityState.ACTIVE
            and (signing_root is None or a.id != signing_root.id)
        ]

    def _require_not_signing(self, family: Sequence[AuthorityView], verb: str) -> None:
        signer = self.signer()
        if signer is not None and any(a.id == signer.id for a in family):
            raise FailedPrecondition(
                "authority_signing",
                f"cannot {verb} {family[0].id}: {signer.id} under it signs certificates now; "
                "prepare and activate another authority first",
            )

    @staticmethod
    def _out_of_service(family: Sequence[AuthorityView], state: AuthorityState) -> list[Transition]:
        return [
            Transition(a, state)
            for a in family
            if a.state is not AuthorityState.REVOKED and a.state is not state
        ]

    @classmethod
    def _require_usable(cls, authority: AuthorityView, now: datetime, verb: str) -> None:
        if authority.state in (AuthorityState.RETIRED, AuthorityState.REVOKED):
            hint = (
                " (meshca root reinstate first)"
                if authority.state is AuthorityState.RETIRED
                else ""
            )
            raise FailedPrecondition(
                "out_of_service",
                f"cannot {verb} {authority.id}: it is {authority.state}{hint}",
            )
        cls._require_usable_dates(authority, now, verb)

    @staticmethod
    def _require_usable_dates(authority: AuthorityView, now: datetime, verb: str) -> None:
        if not authority.valid_at(now):
            raise FailedPrecondition(
                "authority_expired",
                f"cannot {verb} {authority.id}: it is not valid now (until "
                f"{authority.not_after:%Y-%m-%dT%H:%M:%SZ})",
            )

    @staticmethod
    def _only(candidates: list[AuthorityView], what: str, verb: str) -> AuthorityView:
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise FailedPrecondition(f"nothing_to_{verb}", f"there is no {what} to {verb}")
        ids = ", ".join(a.id for a in candidates)
        raise InvalidRequest(
            "ambiguous_authority", f"several authorities could be meant ({ids}); give an ID"
        )


def intermediate_ttl(root: AuthorityView, wanted: timedelta, now: datetime) -> timedelta:
    """An intermediate's lifetime under ``root``: ``wanted``, never past the root's end."""
    return min(wanted, root.not_after - now)
