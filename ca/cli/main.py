"""``meshca``: the admin command line. Every command reads one :class:`Settings` built from its
flags, ``MESHCA_*`` variables and the optional ``--config`` TOML file.

Errors are mapped to exit codes here, in one place: a one-line reason on stderr and
exit 2 usage, 3 configuration, 4 request refused, 5 database unavailable, 70 internal.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from ca.cli.common import CliState, connection_options
from ca.core.errors import (
    ConfigurationError,
    FailedPrecondition,
    InternalError,
    InvalidRequest,
    MeshcaError,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from ca.logs import capture_warnings, release_warnings

EXIT_CODES: dict[type[MeshcaError], int] = {
    ConfigurationError: 3,
    InvalidRequest: 4,
    FailedPrecondition: 4,
    PermissionDenied: 4,
    Unauthenticated: 4,
    RateLimited: 5,
    Unavailable: 5,
    InternalError: 70,
}


#: Each command's module, imported only when that command runs: `meshca agent` (one per pod)
#: starts without loading the CA's storage, server and migration code.
COMMANDS = {
    "agent": "ca.cli.agent_command:agent",
    "audit": "ca.cli.audit_commands:audit",
    "ca": "ca.cli.ca_commands:ca",
    "cert": "ca.cli.cert_commands:cert",
    "db": "ca.cli.db_commands:db",
    "dev": "ca.cli.dev_commands:dev",
    "root": "ca.cli.root_commands:root",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(
    cls=LazyGroup,
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


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point.

    Python warnings become log records before any command module (and the libraries it uses)
    is imported; they are logged once logging has its final form (the services switch to their
    ``--log-format``), or when the command ends. So a library's warning never reaches a
    terminal or a JSON log as raw text.
    """
    capture_warnings()
    try:
        return cli.main(args=argv, prog_name="meshca", standalone_mode=False, obj=CliState())
    except click.exceptions.Abort:
        click.echo("meshca: aborted", err=True)
        sys.exit(1)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors (exit 2) are one line like the rest
        click.echo(f"meshca: error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(exc.exit_code)
    except MeshcaError as exc:
        click.echo(f"meshca: error: {exc.message}", err=True)
        sys.exit(EXIT_CODES.get(type(exc), 1))
    finally:
        release_warnings()
