"""Who may serve a database: several replicas share PostgreSQL, but an SQLite file belongs to
one ``meshca ca serve`` (with its workers) at a time; and replicas starting together on an empty
PostgreSQL must not both migrate and create a CA."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from ca.core.errors import ConfigurationError
from ca.storage.engine import check_database_file

# pg_advisory_lock key: "meshca" in ASCII, so other applications' keys are unlikely to clash.
_SETUP_LOCK_KEY = 0x6D65736863610001


class SqliteServeLock:
    """An exclusive lock on ``<database>.serve-lock`` held for the life of the process."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".serve-lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`ConfigurationError` naming the process holding it."""
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigurationError(
                "sqlite_single_replica",
                f"the SQLite database {self.path.with_suffix('')} is already served by "
                f"{holder}; SQLite supports one replica (use --workers N for more processes, "
                "or PostgreSQL, --db postgresql+psycopg://..., for several replicas)",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"meshca ca serve pid {os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def serve_lock(db_url: str) -> SqliteServeLock | None:
    """The lock a server must hold on ``db_url``: one for an SQLite file, none otherwise.
    The server creates the file: its directory must exist and be writable."""
    check_database_file(db_url, create=True)
    url = make_url(db_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return SqliteServeLock(Path(url.database).resolve())


@contextmanager
def setup_lock(engine: Engine) -> Iterator[None]:
    """Serialize start-up work (migrations, creating the CA) across replicas: a PostgreSQL
    session advisory lock; SQLite's serve lock already excludes a second replica."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _SETUP_LOCK_KEY})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _SETUP_LOCK_KEY})
            conn.commit()
