"""``meshca audit``: what was issued to whom, when, by which CA key, and what was refused.

JSON output is a list of objects whose keys are the ledger's field names (see README);
timestamps are UTC ISO 8601 with a ``Z``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from ca.cli.common import DURATION, TIME, CliState, MeshcaGroup, format_option, pass_state
from ca.cli.output import as_dicts, iso, render
from ca.core.lifecycle import LifecycleAction
from ca.core.records import CaEventRecord, DeniedRecord, IssuedRecord
from ca.core.serials import parse_serial
from ca.storage.authority_store import EventQuery
from ca.storage.ledger import Ledger, LedgerQuery

CERT_COLUMNS = ["serial", "spiffe_id", "issuer_key_id", "issued_at", "not_after", "requester"]
DENIED_COLUMNS = ["denied_at", "reason", "spiffe_id", "requester", "message"]
CERT_FIELDS = [f.name for f in dataclasses.fields(IssuedRecord)]
DENIED_FIELDS = [f.name for f in dataclasses.fields(DeniedRecord)]
EVENT_COLUMNS = [
    "at",
    "action",
    "outcome",
    "authority_id",
    "from_state",
    "to_state",
    "actor",
    "detail",
]
EVENT_FIELDS = [f.name for f in dataclasses.fields(CaEventRecord)]


class SerialType(click.ParamType[str, Any]):
    """A certificate serial in any hex spelling (``0x``, colons, either case), canonical."""

    name = "serial"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return parse_serial(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SERIAL = SerialType()


def check_time_range(filters: dict[str, Any]) -> None:
    """``--since`` must come before ``--until``: a range that holds no instant is a mistake,
    not an empty answer."""
    since, until = filters.get("since"), filters.get("until")
    if since is not None and until is not None and since >= until:
        raise click.UsageError(f"--since {iso(since)} is not before --until {iso(until)}")


def _ledger(state: CliState) -> Ledger:
    """The ledger of an initialised CA; otherwise refuse, pointing to ``meshca ca init``."""
    runtime = state.runtime()
    runtime.authorities.require_identity()
    return runtime.ledger


@click.group(cls=MeshcaGroup)
def audit() -> None:
    """Query and prune the issuance ledger."""


def ledger_filters(func: Callable[..., Any]) -> Callable[..., Any]:
    """The filters ``audit certs`` and ``audit denied`` share."""
    options = [
        click.option("--spiffe-id", help="Exact SPIFFE ID."),
        click.option("--namespace", help="Kubernetes namespace."),
        click.option("--service-account", help="Kubernetes service account."),
        click.option(
            "--since", type=TIME, help="From this time (ISO 8601, or a duration ago: 2h)."
        ),
        click.option("--until", type=TIME, help="Before this time (ISO 8601, or a duration ago)."),
        click.option("--limit", type=click.IntRange(1), default=100, show_default=True),
        format_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


@audit.command()
@ledger_filters
@click.option("--serial", type=SERIAL, help="Serial number in hex.")
@click.option("--issuer", "issuer_key_id", help="Issuing CA key id.")
@click.option("--active", is_flag=True, help="Only certificates valid now.")
@click.option(
    "--expiring-within", type=DURATION, help="Only valid certificates expiring within this."
)
@pass_state
def certs(
    state: CliState,
    /,
    fmt: str,
    expiring_within: timedelta | None,
    active: bool,
    **filters: Any,
) -> None:
    """Issued certificates, newest first."""
    check_time_range(filters)
    now = datetime.now(UTC)
    query = LedgerQuery(
        **filters,
        active_at=now if active or expiring_within is not None else None,
        expiring_before=now + expiring_within if expiring_within is not None else None,
    )
    records = _ledger(state).certs(query)
    click.echo(render(as_dicts(records), fmt, CERT_COLUMNS, CERT_FIELDS), nl=False)


@audit.command()
@ledger_filters
@pass_state
def denied(state: CliState, /, fmt: str, **filters: Any) -> None:
    """Refused requests and why, newest first."""
    check_time_range(filters)
    records = _ledger(state).denied(LedgerQuery(**filters))
    click.echo(render(as_dicts(records), fmt, DENIED_COLUMNS, DENIED_FIELDS), nl=False)


@audit.command()
@click.argument("serial", type=SERIAL)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@pass_state
def show(state: CliState, serial: str, fmt: str) -> None:
    """Everything the ledger knows about one certificate (exit 4 when it holds none)."""
    record = _ledger(state).require_cert(serial)
    (row,) = as_dicts([record])
    if fmt == "json":
        click.echo(json.dumps(row, indent=2, sort_keys=True))
        return
    width = max(len(k) for k in row)
    for key, value in row.items():
        click.echo(f"{key.ljust(width)}  {'-' if value is None else value}")


@audit.command()
@click.option("--action", type=click.Choice([a.value for a in LifecycleAction]))
@click.option("--authority", "authority_id", help="Authority id (or its first characters).")
@click.option("--since", type=TIME, help="From this time (ISO 8601, or a duration ago: 2h).")
@click.option("--until", type=TIME, help="Before this time (ISO 8601, or a duration ago).")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@format_option
@pass_state
def events(state: CliState, /, fmt: str, **filters: Any) -> None:
    """The CA's lifecycle steps (init, prepare, activate, retire, revoke, automatic intermediate
    rotation), done or refused, with who and when; newest first."""
    check_time_range(filters)
    runtime = state.runtime()
    runtime.authorities.require_identity()
    records = runtime.authorities.events(EventQuery(**filters))
    click.echo(render(as_dicts(records), fmt, EVENT_COLUMNS, EVENT_FIELDS), nl=False)


@audit.command()
@click.option(
    "--expired-before",
    type=DURATION,
    required=True,
    help="Delete rows of certificates that expired at least this long ago (e.g. 30d).",
)
@pass_state
def prune(state: CliState, expired_before: timedelta) -> None:
    """Delete ledger rows of long-expired certificates."""
    cutoff = datetime.now(UTC) - expired_before
    deleted = _ledger(state).prune(cutoff)
    click.echo(f"deleted {deleted} certificate row(s) that expired before {iso(cutoff)}")
