"""What every command shares: global flags, settings loading, parameter types."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from ca.cli.output import FORMATS
from ca.cli.timeparse import parse_time
from ca.core.durations import parse_duration
from ca.runtime import CaRuntime
from ca.settings import Settings, load_settings


@dataclass
class CliState:
    """Global flags, kept until a command adds its own and builds the settings."""

    config_file: Path | None
    flags: dict[str, Any] = field(default_factory=dict)

    def settings(self, **command_flags: Any) -> Settings:
        return load_settings(self.config_file, **{**self.flags, **command_flags})

    def runtime(self, **command_flags: Any) -> CaRuntime:
        return CaRuntime(self.settings(**command_flags))


pass_state = click.make_pass_decorator(CliState)


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
