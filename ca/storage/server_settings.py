"""Settings as the serving processes use them, recorded in the database so that the admin CLI
can say what the servers do instead of guessing from its own configuration.

Each ``meshca ca serve`` records its settings when it starts; the last one to start wins, and the
row says which server that was and when. Today this is the reissue window, which the servers send
to every agent with the trust bundle and ``meshca root activate`` reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, inspect, select
from sqlalchemy.dialects import postgresql, sqlite

from ca.storage.errors import database_errors
from ca.storage.models import ServerSetting

REISSUE_WINDOW = "reissue_window"


@dataclass(frozen=True, slots=True)
class ReportedWindow:
    """The reissue window a server reported, which server, and when."""

    window: timedelta
    reported_by: str
    reported_at: datetime


class ServerSettings:
    """Reads and writes the ``server_settings`` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record_reissue_window(self, window: timedelta, *, by: str, now: datetime) -> None:
        """``by`` (a server starting) sends agents ``window``; replaces any earlier report."""
        self._record(REISSUE_WINDOW, repr(window.total_seconds()), by=by, now=now)

    def reissue_window(self) -> ReportedWindow | None:
        """The reissue window the last server to start reported (``None``: none has, or the
        schema predates the table)."""
        t = ServerSetting.__table__.c
        query = select(t.value, t.reported_by, t.reported_at).where(t.name == REISSUE_WINDOW)
        with database_errors("reading the servers' settings"), self.engine.connect() as conn:
            if not inspect(conn).has_table(ServerSetting.__tablename__):
                return None
            row = conn.execute(query).first()
        if row is None:
            return None
        return ReportedWindow(timedelta(seconds=float(row.value)), row.reported_by, row.reported_at)

    def _record(self, name: str, value: str, *, by: str, now: datetime) -> None:
        values = {"name": name, "value": value, "reported_by": by, "reported_at": now}
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(ServerSetting).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=[ServerSetting.name],
            set_={k: statement.excluded[k] for k in ("value", "reported_by", "reported_at")},
        )
        with database_errors("recording the server's settings"), self.engine.begin() as conn:
            conn.execute(statement)
