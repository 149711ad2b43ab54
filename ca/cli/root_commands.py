"""``meshca root``: the trust bundle, and rotating the CA with no dropped connection.

prepare (new root trusted, not signing) -> activate (it signs; agents re-issue within the reissue
window) -> retire (old root out of the bundle once nothing uses it); revoke on compromise. Each
step is one serialized database transaction, recorded in ``meshca audit events`` and announced
to every serving replica at once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ca.cli.common import DURATION, CliState, MeshcaGroup, pass_state
from ca.cli.output import iso, table
from ca.core.durations import format_duration
from ca.core.keys import CA_KEY_TYPES

if TYPE_CHECKING:
    from ca.runtime import CaRuntime
    from ca.storage.authority_store import StepOutcome

ADMIN_ACTOR = "admin-cli"

STATUS_COLUMNS = [
    "id",
    "role",
    "state",
    "signing",
    "key_type",
    "not_after",
    "active_certs",
    "in_use",
    "updated_by",
    "updated_at",
]


@click.group(cls=MeshcaGroup)
def root() -> None:
    """Trusted roots, the trust bundle, and CA rotation."""


@root.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["pem", "jwks"]),
    default="pem",
    show_default=True,
    help="pem: every trusted root; jwks: the SPIFFE bundle format (JWK Set).",
)
@pass_state
def bundle(state: CliState, fmt: str) -> None:
    """Print the trust bundle (every trusted root)."""
    trust_bundle = state.runtime().authorities.bundle()
    click.echo(trust_bundle.pem() if fmt == "pem" else trust_bundle.jwks_json(), nl=False)


@root.command()
@click.option(
    "--key-type",
    type=click.Choice([k.value for k in CA_KEY_TYPES]),
    help="Key type of the new root and intermediate. [the CA's key_type, ec-p256]",
)
@click.option("--ttl", "root_ttl", type=DURATION, help="Lifetime of the new root. [root_ttl, 10y]")
@click.option("--intermediate-ttl", type=DURATION, help="Lifetime of its intermediate. [1y]")
@click.option(
    "--from-dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Import CA material (Istio's cacerts layout) instead of generating it.",
)
@pass_state
def prepare(
    state: CliState,
    key_type: str | None,
    root_ttl: timedelta | None,
    intermediate_ttl: timedelta | None,
    from_dir: Path | None,
) -> None:
    """Add a new root (and intermediate), trusted but not signing yet.

    Every agent, and so every Envoy, receives the bundle with both roots before the new key
    signs anything. Undo: `meshca root retire ID` (nothing was issued from it).
    """
    runtime = state.runtime(key_type=key_type, root_ttl=root_ttl, intermediate_ttl=intermediate_ttl)
    outcome = runtime.prepare_root(from_dir=from_dir, actor=ADMIN_ACTOR)
    _report(outcome)
    click.echo(
        "next: check every replica and agent has this bundle sequence, then `meshca root activate`"
    )


@root.command()
@click.argument("authority_id", required=False)
@pass_state
def activate(state: CliState, authority_id: str | None) -> None:
    """Make a prepared authority (default: the one prepared root) sign from now on.

    Agents re-issue their certificates from it within the CA's reissue window. Undo: activate
    the previous authority again (`meshca root activate OLD_ID`).
    """
    runtime = state.runtime()
    outcome = runtime.authorities.activate(authority_id, actor=ADMIN_ACTOR, now=_now())
    if outcome is None:
        click.echo("nothing to do: that authority already signs")
        return
    _report(outcome)
    click.echo(
        f"next: agents re-issue within the reissue window, {_reissue_window(runtime)}; watch "
        "`meshca root status` until the old authority's IN_USE is 0, then `meshca root retire`"
    )


@root.command()
@click.argument("authority_id", required=False)
@click.option(
    "--force", is_flag=True, help="Retire even though certificates it issued are still in use."
)
@pass_state
def retire(state: CliState, authority_id: str | None, force: bool) -> None:
    """Take an authority (default: the one active root that no longer signs) out of the bundle.

    Refused while unexpired certificates it issued are still in use, listing how many and for
    which identities, unless --force.
    """
    runtime = state.runtime()
    _report(runtime.authorities.retire(authority_id, actor=ADMIN_ACTOR, now=_now(), force=force))


@root.command()
@click.argument("authority_id")
@pass_state
def reinstate(state: CliState, authority_id: str) -> None:
    """Undo a retirement: the retired authority is trusted again (prepared), in every agent's
    bundle; `meshca root activate ID` then makes it sign. A revoked one never comes back."""
    runtime = state.runtime()
    _report(runtime.authorities.reinstate(authority_id, actor=ADMIN_ACTOR, now=_now()))


@root.command()
@click.argument("authority_id")
@pass_state
def revoke(state: CliState, authority_id: str) -> None:
    """Distrust an authority at once (key compromise).

    It leaves the bundle immediately and every agent holding a certificate from it re-issues
    now, without waiting for the reissue window. Activate another authority first.
    """
    runtime = state.runtime()
    _report(runtime.authorities.revoke(authority_id, actor=ADMIN_ACTOR, now=_now()))


@root.command()
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@pass_state
def status(state: CliState, fmt: str) -> None:
    """Every authority: state, key type, fingerprint, not-after, certificates, who changed it."""
    runtime = state.runtime()
    summary = status_summary(runtime, _now())
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    click.echo(f"trust domain     {summary['trust_domain']}")
    click.echo(f"bundle sequence  {summary['bundle_sequence']}")
    click.echo(f"signing key      {summary['signing_key_id'] or '-'}")
    click.echo(f"trusted roots    {len(summary['trusted_root_ids'])}")
    click.echo("")
    click.echo(table(summary["authorities"], STATUS_COLUMNS), nl=False)
    click.echo("")
    for authority in summary["authorities"]:
        click.echo(f"{authority['id']}  sha256 {authority['fingerprint_sha256']}")


def status_summary(runtime: CaRuntime, now: datetime) -> dict[str, Any]:
    """What ``root status`` shows, as plain data."""
    store = runtime.authorities
    identity = store.require_identity()
    trust_bundle = store.bundle()
    lifecycle = store.lifecycle()
    views = {v.id: v for v in lifecycle.authorities}
    active = runtime.active_certificates(now)
    rows: list[dict[str, Any]] = []
    for info in store.authorities():
        family = [a.id for a in lifecycle.family(views[info.id])]
        rows.append(
            {
                "id": info.id,
                "role": info.role.value,
                "state": info.state.value,
                "parent_id": info.parent_id,
                "signing": "yes" if info.id == trust_bundle.signing_key_id else "",
                "key_type": info.key_type,
                "has_key": info.has_key,
                "subject": info.subject,
                "fingerprint_sha256": info.fingerprint_sha256,
                "not_before": iso(info.not_before),
                "not_after": iso(info.not_after),
                "active_certs": active.get(info.id, 0),
                "in_use": runtime.ledger.in_use_count(family, now),
                "activated_at": iso(info.activated_at) if info.activated_at else None,
                "created_by": info.created_by,
                "created_at": iso(info.created_at),
                "updated_by": info.updated_by,
                "updated_at": iso(info.updated_at),
            }
        )
    return {
        "trust_domain": identity.trust_domain.name,
        "bundle_sequence": identity.bundle_sequence,
        "signing_key_id": trust_bundle.signing_key_id,
        "trusted_root_ids": [r["id"] for r in rows if r["role"] == "root" and _trusted(r)],
        "revoked_key_ids": list(trust_bundle.revoked_key_ids),
        "authorities": rows,
    }


def _trusted(row: dict[str, Any]) -> bool:
    return row["state"] in ("prepared", "active")


def _report(outcome: StepOutcome | None) -> None:
    if outcome is None:
        click.echo("nothing to do")
        return
    for change in outcome.changes:
        before = change.from_state.value if change.from_state else "new"
        signs = " (signs from now on)" if change.signs else ""
        click.echo(
            f"{outcome.action.value}: {change.role.value} {change.authority_id} "
            f"{before} -> {change.to_state.value}{signs}"
        )
    click.echo(f"bundle sequence {outcome.sequence}")


def _now() -> datetime:
    return datetime.now(UTC)


def _reissue_window(runtime: CaRuntime) -> str:
    """The reissue window the servers send agents, as the last one started recorded it in the
    database; this command's own setting only when no server has."""
    reported = runtime.server_settings.reissue_window()
    if reported is None:
        return (
            f"{format_duration(runtime.settings.reissue_window)} (no `meshca ca serve` has "
            "recorded the window it uses: this is the reissue_window setting here)"
        )
    return (
        f"{format_duration(reported.window)} (what `meshca ca serve` uses, from the database: "
        f"{reported.reported_by} started with it at {iso(reported.reported_at)})"
    )
