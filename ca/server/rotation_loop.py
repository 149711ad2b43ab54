"""The automatic intermediate rotation, run by every serving process: every
``rotation_check_interval`` it asks the database whether a step is due (prepare the next
intermediate at ``intermediate_prepare_at`` of the signing one's life, activate it at
``intermediate_activate_at``, retire expired ones). The step itself is serialized in the
database, so with several replicas (or workers) exactly one of them makes it and all reload."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from ca.core.errors import MeshcaError
from ca.runtime import CaRuntime
from ca.server import metrics
from ca.storage.authority_store import StepOutcome

log = logging.getLogger(__name__)

#: Steps made in one check at most: retire expired intermediates, prepare, activate.
_STEPS_PER_CHECK = 3


def server_actor() -> str:
    """Who the audit log names for a step this process made on its own."""
    return f"meshca-server {socket.gethostname()} pid {os.getpid()}"


class RotationLoop:
    """Checks for and makes due intermediate rotation steps until cancelled."""

    def __init__(
        self,
        runtime: CaRuntime,
        interval: timedelta,
        on_step: Callable[[], Awaitable[None]],
    ) -> None:
        self._runtime = runtime
        self._interval = interval.total_seconds()
        self._on_step = on_step
        self._actor = server_actor()
        self._blocked: str | None = None

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self._interval)

    async def check(self) -> list[StepOutcome]:
        """Make every step due now; a database or key failure is logged and retried later."""
        made: list[StepOutcome] = []
        for _ in range(_STEPS_PER_CHECK):
            try:
                outcome = await asyncio.to_thread(
                    self._runtime.rotate_intermediate, actor=self._actor
                )
            except MeshcaError as error:
                log.warning(
                    "automatic intermediate rotation failed: %s",
                    error.message,
                    extra={"reason": error.reason},
                )
                break
            if outcome is None:
                break
            made.append(outcome)
            metrics.INTERMEDIATE_ROTATIONS.labels(outcome.action.value).inc()
            log.info(
                "intermediate rotation: %s",
                outcome.action.value,
                extra={
                    "bundle_sequence": outcome.sequence,
                    "authorities": ",".join(c.authority_id for c in outcome.changes),
                },
            )
        if made:
            await self._on_step()
        else:
            await self._report_blocked()
        return made

    async def _report_blocked(self) -> None:
        """Warn (once per reason) when no automatic step can save the signing intermediate."""
        try:
            lifecycle = await asyncio.to_thread(self._runtime.authorities.lifecycle)
        except MeshcaError:
            return
        reason = lifecycle.intermediate_rotation_blocked(
            datetime.now(UTC), self._runtime.intermediate_policy()
        )
        metrics.INTERMEDIATE_ROTATION_BLOCKED.set(0 if reason is None else 1)
        if reason is not None and reason != self._blocked:
            log.warning("automatic intermediate rotation cannot proceed: %s", reason)
        self._blocked = reason
