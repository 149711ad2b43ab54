"""Fresh PostgreSQL databases for tests, on the server MESHCA_TEST_POSTGRES_URL names."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_ENV = "MESHCA_TEST_POSTGRES_URL"
SKIP_POSTGRES = (
    f"{POSTGRES_ENV} is not set; set it (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test) "
    "to run the PostgreSQL tests (CI always does)"
)


@contextmanager
def fresh_postgres_database(prefix: str = "meshca_test") -> Iterator[str]:
    """The URL of a newly created, empty database, dropped afterwards.

    Skips only when MESHCA_TEST_POSTGRES_URL is unset; when it is set, a connection error fails.
    """
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(SKIP_POSTGRES)
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
