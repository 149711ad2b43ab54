"""``meshca db``: schema migrations."""

from __future__ import annotations

import click

from ca.cli.common import CliState, MeshcaGroup, pass_state
from ca.storage import migrate


@click.group(cls=MeshcaGroup)
def db() -> None:
    """Database schema."""


@db.command()
@click.option("--revision", default="head", show_default=True)
@pass_state
def upgrade(state: CliState, revision: str) -> None:
    """Migrate the schema up (creates the SQLite file if needed)."""
    engine = state.runtime().engine
    migrate.upgrade(engine, revision)
    click.echo(f"database at revision {migrate.current_revision(engine)}")


@db.command()
@click.argument("revision")
@pass_state
def downgrade(state: CliState, revision: str) -> None:
    """Migrate the schema down to REVISION ('base' drops every table)."""
    engine = state.runtime().engine
    migrate.downgrade(engine, revision)
    click.echo(f"database at revision {migrate.current_revision(engine)}")


@db.command()
@pass_state
def current(state: CliState) -> None:
    """Print the schema revision."""
    click.echo(migrate.current_revision(state.runtime().engine) or "none")
