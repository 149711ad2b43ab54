"""``meshca``: the admin command line. Every command reads one :class:`Settings` built from its
flags, ``MESHCA_*`` variables and the optional ``--config`` TOML file.

Errors are mapped to exit codes here, in one place: a one-line reason on stderr and
exit 2 usage, 3 configuration, 4 request refused, 5 database unavailable, 70 internal.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from ca.cli.agent_command import agent
from ca.cli.audit_commands import audit
from ca.cli.ca_commands import ca
from ca.cli.common import CliState, connection_options
from ca.cli.db_commands import db
from ca.cli.dev_commands import dev
from ca.cli.root_commands import root
from ca.core.errors import (
    ConfigurationError,
    InternalError,
    InvalidRequest,
    MeshcaError,
    PermissionDenied,
    Unavailable,
)

EXIT_CODES: dict[type[MeshcaError], int] = {
    ConfigurationError: 3,
    InvalidRequest: 4,
    PermissionDenied: 4,
    Unavailable: 5,
    InternalError: 70,
}


@click.group(
    params=connection_options(read_env=True),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    envvar="MESHCA_LOG_LEVEL",
    show_default=True,
)
@click.version_option(package_name="meshca")
def cli(log_level: str) -> None:
    """meshca: a SPIFFE certificate authority for service meshes."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )


cli.add_command(ca)
cli.add_command(root)
cli.add_command(audit)
cli.add_command(db)
cli.add_command(dev)
cli.add_command(agent)


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    try:
        return cli.main(args=argv, prog_name="meshca", standalone_mode=False, obj=CliState())
    except click.exceptions.Abort:
        click.echo("meshca: aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MeshcaError as exc:
        click.echo(f"meshca: error: {exc.message}", err=True)
        sys.exit(EXIT_CODES.get(type(exc), 1))
