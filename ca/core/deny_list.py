"""Identities the CA refuses to serve, whatever their credentials say."""

from __future__ import annotations

from collections.abc import Iterable

from ca.core.errors import PermissionDenied
from ca.core.identity import WorkloadIdentity, parse_spiffe_id


class DenyList:
    """Exact SPIFFE IDs, and path prefixes written with a trailing ``/*``
    (``spiffe://cluster.local/ns/quarantine/*`` denies every service account there)."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self._exact: set[str] = set()
        self._prefixes: list[str] = []
        for entry in entries:
            if entry.endswith("/*"):
                self._prefixes.append(f"{parse_spiffe_id(entry[:-2])}/")
            else:
                self._exact.add(str(parse_spiffe_id(entry)))

    def check(self, identity: WorkloadIdentity) -> None:
        """Raise :class:`PermissionDenied` when ``identity`` is denied."""
        spiffe_id = str(identity.spiffe_id)
        if spiffe_id in self._exact or any(spiffe_id.startswith(p) for p in self._prefixes):
            raise PermissionDenied("identity_denied", f"{spiffe_id} is on the CA's deny list")
