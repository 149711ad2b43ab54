"""Alembic environment for meshca. Run through ``meshca db upgrade`` (which hands over its
engine), or with the ``alembic`` command and ``MESHCA_DB_URL`` set."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, Engine

from ca.settings import DEFAULT_DB_URL
from ca.storage.engine import make_engine
from ca.storage.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    engine: Engine | None = config.attributes.get("engine")
    if engine is None:
        engine = make_engine(os.environ.get("MESHCA_DB_URL", DEFAULT_DB_URL))
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch operations rebuild a table (copy, drop the old one, rename); dropping
            # `authorities` with foreign keys enforced trips every intermediate's parent_id.
            # SQLite ignores this pragma inside a transaction: set it before one begins.
            _pragma(connection, "foreign_keys=OFF")
        try:
            with connection.begin():
                context.configure(
                    connection=connection,
                    target_metadata=target_metadata,
                    render_as_batch=sqlite,
                    compare_type=True,
                )
                context.run_migrations()
        finally:
            if sqlite:
                _pragma(connection, "foreign_keys=ON")


def _pragma(connection: Connection, pragma: str) -> None:
    connection.exec_driver_sql(f"PRAGMA {pragma}")
    connection.commit()


if context.is_offline_mode():
    raise SystemExit("meshca migrations run online only: set MESHCA_DB_URL and run upgrade")
run_migrations()
