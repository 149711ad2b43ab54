"""How replicas learn at once that the CA changed: every lifecycle step sends a PostgreSQL
``NOTIFY`` on :data:`CHANNEL` in its own transaction (delivered when it commits), and each serving
process holds one connection that ``LISTEN``s.

SQLite has no notifications (and serves one replica); there, and as a safety net should a
notification be missed while the listening connection is re-established, servers also check the
bundle sequence every ``bundle_refresh_interval``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL, make_url

log = logging.getLogger(__name__)

CHANNEL = "meshca_ca_changes"

_RECONNECT_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)


def notify_change(conn: Connection, sequence: int) -> None:
    """Announce the bundle sequence ``sequence`` when ``conn``'s transaction commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {
                "channel": CHANNEL,
                "payload": str(sequence),
            },
        )


def supports_notifications(db_url: str) -> bool:
    return make_url(db_url).get_backend_name() == "postgresql"


def libpq_conninfo(db_url: str) -> str:
    """The SQLAlchemy URL ``postgresql+psycopg://...`` as a libpq URI psycopg accepts."""
    url: URL = make_url(db_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class ChangeListener:
    """``LISTEN`` on :data:`CHANNEL` and call ``on_change`` for every notification, and once
    after every (re)connection, since changes made while disconnected were not announced."""

    def __init__(self, db_url: str, on_change: Callable[[], Awaitable[None]]) -> None:
        self._conninfo = libpq_conninfo(db_url)
        self._on_change = on_change
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff."""
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.connected.set()
                    failures = 0
                    await self._on_change()
                    async for _notification in conn.notifies():
                        await self._on_change()
            except psycopg.Error as error:
                self.connected.clear()
                delay = _RECONNECT_SECONDS[min(failures, len(_RECONNECT_SECONDS) - 1)]
                failures += 1
                log.warning(
                    "CA change notifications interrupted (%s); reconnecting in %.1fs",
                    type(error).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
