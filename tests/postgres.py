"""The PostgreSQL server the tests (and benchmarks) use, and fresh databases on it.

``MESHCA_TEST_POSTGRES_URL`` names the server when set (CI sets it): the tests then run, and a
connection error fails them. Unset, the local server ``make postgres`` sets up is used
(``DEFAULT_POSTGRES_URL``) when it answers; when it does not, the tests skip, saying so. Whether
it answers is probed once per process, so a session of skipped tests waits at most once.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_ENV = "MESHCA_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CONNECT_TIMEOUT_SECONDS = 3
SKIP_POSTGRES = (
    f"PostgreSQL not reachable on 127.0.0.1:5432 (run `make postgres`, or set {POSTGRES_ENV})"
)


def postgres_base_url() -> str:
    """The server's URL: ``MESHCA_TEST_POSTGRES_URL`` when set, else the local default."""
    return os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES_URL


def postgres_unreachable(url: str) -> str | None:
    """Why the server at ``url`` cannot be used (first line of the error), or ``None``."""
    engine = create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS})
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    finally:
        engine.dispose()
    return None


@functools.cache
def _default_server_unreachable() -> str | None:
    return postgres_unreachable(DEFAULT_POSTGRES_URL)


def require_postgres() -> str:
    """The server's URL for a test; skips it only when the variable is unset and the local
    default server does not answer."""
    configured = os.environ.get(POSTGRES_ENV)
    if configured:
        return configured
    if _default_server_unreachable() is not None:
        pytest.skip(SKIP_POSTGRES)
    return DEFAULT_POSTGRES_URL


@contextmanager
def fresh_postgres_database(prefix: str = "meshca_test") -> Iterator[str]:
    """The URL of a newly created, empty database, dropped afterwards (see ``require_postgres``
    for when it skips; with ``MESHCA_TEST_POSTGRES_URL`` set, a connection error fails)."""
    base = require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
