"""Alembic environment for meshca. Run through ``meshca db upgrade`` (which hands over its
engine), or with the ``alembic`` command and ``MESHCA_DB_URL`` set."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Engine

from ca.settings import DEFAULT_DB_URL
from ca.storage.engine import make_engine
from ca.storage.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    engine: Engine | None = config.attributes.get("engine")
    if engine is None:
        engine = make_engine(os.environ.get("MESHCA_DB_URL", DEFAULT_DB_URL))
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("meshca migrations run online only: set MESHCA_DB_URL and run upgrade")
run_migrations()
