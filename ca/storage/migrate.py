"""Schema migrations through Alembic, run programmatically (``meshca db upgrade``)."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from ca.core.errors import ConfigurationError

# migrations/ sits beside the ca/ package in the source tree (it is not a package of the wheel).
_DEFAULT_DIR = Path(__file__).resolve().parents[2] / "migrations"


def migrations_dir() -> Path:
    """Where the Alembic scripts are: ``MESHCA_MIGRATIONS_DIR`` or the source tree's folder."""
    path = Path(os.environ.get("MESHCA_MIGRATIONS_DIR", _DEFAULT_DIR))
    if not (path / "env.py").is_file():
        raise ConfigurationError(
            "migrations_missing",
            f"no Alembic migrations at {path}; set MESHCA_MIGRATIONS_DIR to the migrations/ folder",
        )
    return path


def _config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision``."""
    command.upgrade(_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema down to ``revision`` (``base`` drops every table)."""
    command.downgrade(_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or ``None`` before the first migration."""
    with engine.connect() as conn:
        rev: str | None = MigrationContext.configure(conn).get_current_revision()
        return rev
