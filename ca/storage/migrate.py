"""Schema migrations through Alembic, run programmatically (``meshca db upgrade``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import Engine

from ca.core.errors import ConfigurationError, InvalidRequest
from ca.core.text import printable

# The Alembic scripts ship inside this package (package data of the wheel), next to this file.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def migrations_dir() -> Path:
    """Where the Alembic scripts are: ``ca/storage/migrations/``, beside this module."""
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise ConfigurationError(
            "migrations_missing",
            f"no Alembic migrations at {MIGRATIONS_DIR}: the meshca installation is incomplete",
        )
    return MIGRATIONS_DIR


def _config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["engine"] = engine
    return cfg


@contextmanager
def _revision_errors() -> Iterator[None]:
    """A revision Alembic cannot go to (unknown, or the wrong way) is a refused request."""
    try:
        yield
    except CommandError as exc:
        raise InvalidRequest("bad_revision", printable(str(exc))) from None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision``."""
    with _revision_errors():
        command.upgrade(_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema down to ``revision`` (``base`` drops every table)."""
    with _revision_errors():
        command.downgrade(_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or ``None`` before the first migration."""
    with engine.connect() as conn:
        rev: str | None = MigrationContext.configure(conn).get_current_revision()
        return rev
