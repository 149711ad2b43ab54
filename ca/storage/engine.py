"""Database engines: SQLite (embedded default, WAL, durable commits) and PostgreSQL.

Problems a user can fix are domain errors here, before anything is written: an SQLite file in
a missing or read-only directory, a database driver that is not installed
(:class:`ConfigurationError`), a server that cannot be reached (:class:`Unavailable`, naming
host, port and why). A command that only reads never creates an SQLite file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError

from ca.core.errors import ConfigurationError
from ca.storage.errors import connection_failed, not_initialised


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file(url: str | URL) -> Path | None:
    """The file of an SQLite database URL (absolute); ``None`` for another backend, an in-memory
    database or a ``file:`` URI."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") or parsed.query.get("uri") == "true":
        return None
    return Path(database).absolute()


def database_exists(url: str) -> bool:
    """Whether there is a database to read: an SQLite file exists (a server always may)."""
    path = sqlite_file(url)
    return path is None or path.exists()


def check_database_file(url: str, *, create: bool) -> None:
    """Refuse an SQLite file that is missing (when not to ``create`` it), or that could not be
    created: its directory is missing, not a directory, or not writable."""
    path = sqlite_file(url)
    if path is None:
        return
    if path.is_dir():
        raise ConfigurationError(
            "database_not_a_file", f"the SQLite database {path} is a directory, not a file"
        )
    if path.exists():
        return
    if not create:
        raise not_initialised(f"{path} does not exist")
    directory = path.parent
    if not directory.is_dir():
        raise ConfigurationError(
            "database_directory_missing",
            f"cannot create the SQLite database {path.name}: directory {directory} does not exist",
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigurationError(
            "database_directory_not_writable",
            f"cannot create the SQLite database {path.name}: directory {directory} is not "
            "writable by this user",
        )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (audit queries) run beside the writer; FULL makes every commit durable
    # before a certificate leaves the CA.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _connection_errors(context: ExceptionContext) -> None:
    """A server that cannot be reached (refused, unknown host, bad password) fails every
    statement as :class:`Unavailable` naming host, port and the reason."""
    if context.connection is None and context.engine is not None and not context.is_pre_ping:
        raise connection_failed(context.engine.url, context.original_exception)


def make_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``).

    Without ``create``, a missing SQLite file is not created: the CA is not initialised there.
    """
    check_database_file(url, create=create)
    safe = make_url(url).render_as_string(hide_password=True)
    try:
        if is_sqlite(url):
            engine = create_engine(url)
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    except (ArgumentError, ImportError) as exc:
        raise ConfigurationError(
            "database_driver_missing",
            f"cannot use the database {safe}: {exc}; meshca's drivers are sqlite:///PATH and "
            "postgresql+psycopg://USER@HOST:PORT/DATABASE",
        ) from None
    event.listen(engine, "handle_error", _connection_errors)
    return engine
