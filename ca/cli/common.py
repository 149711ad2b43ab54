"""What every command shares: global flags, settings loading, parameter types."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ca.cli.output import FORMATS
from ca.cli.timeparse import parse_time
from ca.core.durations import parse_duration

if TYPE_CHECKING:
    from ca.runtime import CaRuntime
    from ca.settings import Settings


@dataclass
class CliState:
    """Global flags, kept until a command adds its own and builds the settings."""

    config_file: Path | None = None
    flags: dict[str, Any] = field(default_factory=dict)

    def settings(self, **command_flags: Any) -> Settings:
        # Imported here: the CLI entry captures warnings before any third-party import.
        from ca.settings import load_settings  # noqa: PLC0415

        return load_settings(self.config_file, **{**self.flags, **command_flags})

    def runtime(self, *, create_database: bool = False, **command_flags: Any) -> CaRuntime:
        """The CA's parts; only ``db upgrade``, ``ca init`` and ``ca serve`` may create the
        SQLite file (``create_database``): a command that reads never leaves an empty one."""
        from ca.runtime import CaRuntime  # noqa: PLC0415 - keeps `meshca agent` free of storage

        return CaRuntime(self.settings(**command_flags), create_database=create_database)


pass_state = click.make_pass_decorator(CliState)


def _store_flag(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Keep a connection option given after the command name (it overrides one given before)."""
    if value is None or param.name is None:
        return
    state = ctx.find_object(CliState)
    assert state is not None
    if param.name == "config_file":
        state.config_file = value
    else:
        state.flags[param.name] = value


def connection_options(*, read_env: bool = False) -> list[click.Parameter]:
    """``--config``, ``--db`` and ``--kek-file``: accepted before the command name (by the
    ``meshca`` group, which also reads ``MESHCA_CONFIG``) and after it (by every command), so
    ``meshca audit certs --db URL`` works."""
    path = click.Path(path_type=Path, dir_okay=False)
    return [
        click.Option(
            ["--config", "config_file"],
            type=path,
            expose_value=False,
            callback=_store_flag,
            envvar="MESHCA_CONFIG" if read_env else None,
            help="TOML config file. Env: MESHCA_CONFIG.",
        ),
        click.Option(
            ["--db", "db_url"],
            expose_value=False,
            callback=_store_flag,
            help="Database URL. Env: MESHCA_DB_URL. [sqlite:///./meshca.db]",
        ),
        click.Option(
            ["--kek-file"],
            type=path,
            expose_value=False,
            callback=_store_flag,
            help="Key-encryption key file. Env: MESHCA_KEK_FILE. [meshca.kek]",
        ),
    ]


class MeshcaCommand(click.Command):
    """A command that also takes the connection options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(connection_options())


class MeshcaGroup(click.Group):
    """A command group whose commands take the connection options."""

    command_class = MeshcaCommand


class DurationType(click.ParamType[timedelta, Any]):
    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class TimeType(click.ParamType[datetime, Any]):
    name = "time"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_time(str(value), datetime.now(UTC))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = DurationType()
TIME = TimeType()

format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table for people, json (stable, documented) or csv for tools.",
)


def many_values(values: tuple[str, ...]) -> list[str] | None:
    """Repeated (or comma-separated) flag values; ``None`` when the flag was not given."""
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    return items or None


def service_log_level() -> str:
    """A long-running service (the CA server, the agent) logs at info unless ``--log-level``
    (or ``MESHCA_LOG_LEVEL``) says otherwise."""
    root = click.get_current_context().find_root()
    if root.get_parameter_source("log_level") == click.core.ParameterSource.DEFAULT:
        return "info"
    return str(root.params["log_level"])
