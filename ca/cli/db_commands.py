"""``meshca db``: schema migrations."""

from __future__ import annotations

import click

from ca.cli.common import CliState, MeshcaGroup, pass_state
from ca.storage import migrate
from ca.storage.engine import database_exists
from ca.storage.errors import database_errors


@click.group(cls=MeshcaGroup)
def db() -> None:
    """Database schema."""


@db.command()
@click.option("--revision", default="head", show_default=True)
@pass_state
def upgrade(state: CliState, revision: str) -> None:
    """Migrate the schema up (creates the SQLite file if needed)."""
    engine = state.runtime(create_database=True).engine
    with database_errors("migrating the schema"):
        migrate.upgrade(engine, revision)
        current = migrate.current_revision(engine)
    click.echo(f"database at revision {current}")


@db.command()
@click.argument("revision")
@pass_state
def downgrade(state: CliState, revision: str) -> None:
    """Migrate the schema down to REVISION ('base' drops every table)."""
    engine = state.runtime().engine
    with database_errors("migrating the schema"):
        migrate.downgrade(engine, revision)
        current = migrate.current_revision(engine)
    click.echo(f"database at revision {current}")


@db.command()
@pass_state
def current(state: CliState) -> None:
    """Print the schema revision ('none' before the first upgrade)."""
    runtime = state.runtime()
    if not database_exists(runtime.settings.db_url):
        click.echo("none")
        return
    with database_errors("reading the schema revision"):
        click.echo(migrate.current_revision(runtime.engine) or "none")
