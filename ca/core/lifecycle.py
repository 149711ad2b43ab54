"""Roles and lifecycle states of CA authorities (roots and intermediates)."""

from __future__ import annotations

import enum


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
