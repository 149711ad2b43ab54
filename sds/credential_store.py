"""The agent's current credentials, and a way to wait for the next change of them.

Everything that serves credentials (SDS streams, Workload API streams, readiness, metrics) reads
from here; the SVID manager and the bundle watch write to it. One asyncio loop owns it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from spiffe import TrustDomain

from sds.core.credentials import Bundles, Credentials, Svid

Listener = Callable[[Credentials], None]


class CredentialStore:
    """Holds the current :class:`Credentials`; every change bumps ``generation``."""

    def __init__(self, trust_domain: TrustDomain, bundles: Bundles) -> None:
        self._current = Credentials(trust_domain, bundles)
        self._changed = asyncio.Event()
        self._listeners: list[Listener] = []

    @property
    def current(self) -> Credentials:
        return self._current

    def trusted_roots_pem(self) -> bytes:
        """Every root trusted now, PEM: what the CA's TLS certificate is verified against."""
        return self._current.bundles.pem()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` (synchronously, on the loop) after every change."""
        self._listeners.append(listener)

    def set_svid(self, svid: Svid | None) -> None:
        self._publish(dataclasses.replace(self._current, svid=svid))

    def set_bundles(self, bundles: Bundles) -> None:
        self._publish(dataclasses.replace(self._current, bundles=bundles))

    async def wait_newer(self, generation: int) -> Credentials:
        """The credentials as soon as their generation is above ``generation``."""
        while self._current.generation <= generation:
            await self._changed.wait()
        return self._current

    def _publish(self, credentials: Credentials) -> None:
        self._current = dataclasses.replace(credentials, generation=self._current.generation + 1)
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        for listener in self._listeners:
            listener(self._current)
