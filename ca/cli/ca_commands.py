"""``meshca ca``: create or plug in the CA, show its status, sign offline."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import click

from ca.cli.common import DURATION, CliState, MeshcaGroup, pass_state
from ca.cli.output import iso, table
from ca.cli.output_files import CERT_MODE, reserved, write
from ca.cli.serve_command import serve
from ca.core.errors import ConfigurationError
from ca.core.identity import WorkloadIdentity, parse_spiffe_id
from ca.core.issuer import IssuanceRequest, IssuedSvid
from ca.core.keys import CA_KEY_TYPES
from ca.storage import migrate
from ca.storage.errors import database_errors

ADMIN_REQUESTER = "admin-cli"


@click.group(cls=MeshcaGroup)
def ca() -> None:
    """Create, inspect and use the certificate authority."""


ca.add_command(serve)


@ca.command()
@click.option(
    "--trust-domain", help="SPIFFE trust domain. Env: MESHCA_TRUST_DOMAIN. [cluster.local]"
)
@click.option(
    "--key-type",
    type=click.Choice([k.value for k in CA_KEY_TYPES]),
    help="Key type of the root and intermediate. Env: MESHCA_KEY_TYPE. [ec-p256]",
)
@click.option(
    "--from-dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Plug in an existing CA from Istio's cacerts layout instead of generating one.",
)
@click.option("--root-ttl", type=DURATION, help="Lifetime of a generated root. [10y]")
@click.option("--intermediate-ttl", type=DURATION, help="Lifetime of the intermediate. [1y]")
@click.option("--exist-ok", is_flag=True, help="Succeed (checking the KEK) if already initialised.")
@pass_state
def init(
    state: CliState,
    trust_domain: str | None,
    key_type: str | None,
    from_dir: Path | None,
    root_ttl: timedelta | None,
    intermediate_ttl: timedelta | None,
    exist_ok: bool,
) -> None:
    """Create a root and an online intermediate (or import a CA) in the database."""
    runtime = state.runtime(
        create_database=True,
        trust_domain=trust_domain,
        key_type=key_type,
        root_ttl=root_ttl,
        intermediate_ttl=intermediate_ttl,
    )
    with database_errors("migrating the schema"):
        migrate.upgrade(runtime.engine)
    outcome = runtime.initialise(from_dir=from_dir, exist_ok=exist_ok, actor=ADMIN_REQUESTER)
    notice = outcome.kek_notice()
    if notice is not None:
        click.echo(notice, err=True)
    verb = "initialised" if outcome.created else "already initialised"
    click.echo(
        f"CA {verb}: trust domain {outcome.identity.trust_domain.name}, "
        f"signing key {outcome.signing_key_id}"
    )


@ca.command()
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@pass_state
def status(state: CliState, fmt: str) -> None:
    """Show the trust domain, the authorities and the bundle sequence."""
    runtime = state.runtime()
    identity = runtime.authorities.require_identity()
    now = datetime.now(UTC)
    counts = runtime.active_certificates(now)
    authorities: list[dict[str, Any]] = [
        {
            "id": a.id,
            "role": a.role.value,
            "state": a.state.value,
            "key_type": a.key_type,
            "has_key": a.has_key,
            "subject": a.subject,
            "fingerprint_sha256": a.fingerprint_sha256,
            "not_before": iso(a.not_before),
            "not_after": iso(a.not_after),
            "active_certs": counts.get(a.id, 0),
        }
        for a in runtime.authorities.authorities()
    ]
    summary = {
        "trust_domain": identity.trust_domain.name,
        "bundle_sequence": identity.bundle_sequence,
        "kek_id": identity.kek_id,
        "initialised_at": iso(identity.created_at),
        "issued_certs": runtime.ledger.count_issued(),
        "authorities": authorities,
    }
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    click.echo(f"trust domain     {summary['trust_domain']}")
    click.echo(f"bundle sequence  {summary['bundle_sequence']}")
    click.echo(f"KEK id           {summary['kek_id']}")
    click.echo(f"initialised at   {summary['initialised_at']}")
    click.echo(f"issued certs     {summary['issued_certs']}")
    click.echo("")
    click.echo(
        table(
            authorities,
            ["id", "role", "state", "key_type", "has_key", "not_after", "active_certs"],
        ),
        nl=False,
    )


@ca.command()
@click.option(
    "--csr", "csr_file", type=click.File("rb"), required=True, help="PEM CSR ('-' for stdin)."
)
@click.option("--spiffe-id", required=True, help="SPIFFE ID to certify (in this trust domain).")
@click.option("--ttl", type=DURATION, help="Certificate lifetime. [default_ttl, 24h]")
@click.option("--out", type=click.Path(path_type=Path), help="Write the chain here (mode 0644).")
@pass_state
def sign(
    state: CliState,
    csr_file: BinaryIO,
    spiffe_id: str,
    ttl: timedelta | None,
    out: Path | None,
) -> None:
    """Offline admin issuance: same policy and ledger as the gRPC API.

    Prints the chain, leaf first and root last (or writes it to --out, mode 0644).
    """
    with contextlib.ExitStack() as stack:
        # Reserved before signing: a recorded certificate must reach the caller.
        target = None if out is None else stack.enter_context(reserved(out, CERT_MODE, "--out"))
        svid = sign_request(state, csr_file.read(), spiffe_id, ttl)
        chain = "".join(svid.chain_pem())
        if target is None:
            click.echo(chain, nl=False)
        else:
            try:
                write(target, chain.encode())
            except OSError as exc:
                click.echo(chain, nl=False)  # issued and recorded: never lose it
                raise ConfigurationError(
                    "output_unwritable",
                    f"issued serial {svid.record.serial} but could not write {out} "
                    f"({exc.strerror or exc}); the chain is on stdout",
                ) from None
    click.echo(
        f"issued serial {svid.record.serial} for {svid.record.spiffe_id}, "
        f"valid until {iso(svid.record.not_after)}",
        err=True,
    )


def sign_request(state: CliState, csr: bytes, spiffe_id: str, ttl: timedelta | None) -> IssuedSvid:
    """Issue (and record) an SVID for ``spiffe_id`` from ``csr`` as the admin."""
    request = IssuanceRequest(
        csr=csr,
        caller=WorkloadIdentity.from_spiffe_id(parse_spiffe_id(spiffe_id)),
        requested_ttl=ttl,
        requester=ADMIN_REQUESTER,
        request_id=uuid.uuid4().hex,
    )
    return state.runtime().issuance_service().issue(request)
