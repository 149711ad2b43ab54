"""``meshca ca serve``: run the CA's gRPC service."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click
from sqlalchemy.engine import make_url

from ca.auth.factory import verifier_factory
from ca.cli.common import (
    DURATION,
    CliState,
    MeshcaCommand,
    many_values,
    pass_state,
    service_log_level,
)
from ca.core.keys import CA_KEY_TYPES
from ca.issuance import utc_now
from ca.logs import configure_logging
from ca.runtime import InitOutcome
from ca.server.process import serve as run_server
from ca.server.rotation_loop import server_actor
from ca.storage import migrate
from ca.storage.errors import database_errors
from ca.storage.replica_lock import serve_lock, setup_lock

SERVER_ACTOR = "meshca-server"

log = logging.getLogger(__name__)


@click.command(cls=MeshcaCommand)
@click.option(
    "--listen", help="gRPC address (TLS, token auth). Env: MESHCA_LISTEN. [0.0.0.0:15012]"
)
@click.option(
    "--mtls-listen",
    help="gRPC address for renewal by client certificate, or 'off'. [0.0.0.0:15013]",
)
@click.option(
    "--metrics-listen",
    help="/metrics, /healthz, /readyz address, or 'off'. [127.0.0.1:15014]",
)
@click.option("--workers", type=click.IntRange(1, 256), help="Server processes. [cores]")
@click.option(
    "--plaintext",
    is_flag=True,
    default=None,
    help="Serve WITHOUT TLS. Loopback development and tests only.",
)
@click.option(
    "--server-dns-names",
    multiple=True,
    help="DNS names/IPs in the server certificate (repeat or comma-separate). "
    "[localhost,127.0.0.1]",
)
@click.option("--server-cert-ttl", type=DURATION, help="Server certificate lifetime. [24h]")
@click.option("--trust-domain", help="Trust domain when this starts a new CA. [cluster.local]")
@click.option(
    "--key-type",
    type=click.Choice([k.value for k in CA_KEY_TYPES]),
    help="CA key type when this starts a new CA. [ec-p256]",
)
@click.option("--auth", type=click.Choice(["jwt", "tokenreview"]), help="Token check. [jwt]")
@click.option("--jwt-issuer", help="Required `iss` of service-account tokens.")
@click.option("--jwt-audience", multiple=True, help="Accepted `aud` (repeatable). [istio-ca]")
@click.option("--jwks", help="JWKS file or URL with the token signing keys.")
@click.option("--jwt-public-key", multiple=True, help="PEM public key file (repeatable).")
@click.option("--oidc-discovery", help="Issuer URL serving /.well-known/openid-configuration.")
@click.option(
    "--jwks-ca-file", type=click.Path(path_type=Path, dir_okay=False), help="CA for JWKS URLs."
)
@click.option("--jwt-leeway", type=DURATION, help="Clock-skew leeway for exp/nbf/iat. [30s]")
@click.option(
    "--allow-legacy-tokens", is_flag=True, default=None, help="Accept secret-based tokens."
)
@click.option(
    "--kubeconfig",
    type=click.Path(path_type=Path, dir_okay=False),
    help="kubeconfig for --auth tokenreview. [in-cluster]",
)
@click.option("--rate-limit-per-caller", type=float, help="Requests/s per pod. [10]")
@click.option("--rate-limit-global", type=float, help="Requests/s per process. [10000]")
@click.option("--deny-identity", multiple=True, help="SPIFFE ID (or ID/*) to refuse.")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Log lines. [text]")
@click.option(
    "--reissue-window",
    type=DURATION,
    help="Agents re-issue within this window after the signing authority changes. [5m]",
)
@click.option(
    "--bundle-refresh-interval",
    type=DURATION,
    help="Database check for CA changes (PostgreSQL also notifies at once). [1s]",
)
@click.option(
    "--intermediate-rotation/--no-intermediate-rotation",
    default=None,
    help="Replace the signing intermediate automatically before it expires. [on]",
)
@click.option("--intermediate-ttl", type=DURATION, help="Lifetime of new intermediates. [1y]")
@click.option(
    "--rotation-check-interval", type=DURATION, help="How often rotation is checked. [30s]"
)
@pass_state
def serve(state: CliState, /, **options: Any) -> None:
    """Serve CreateCertificate (Istio-compatible) and WatchBundle over gRPC.

    Creates the schema and the CA on first start (like `ca init --exist-ok`), then serves until
    SIGTERM or SIGINT, finishing calls in flight. Several replicas may share one PostgreSQL
    database; an SQLite database is served by one replica only.
    """
    flags = _settings_flags(options)
    settings = state.settings(**flags)
    configure_logging(service_log_level(), settings.log_format)
    lock = serve_lock(settings.db_url)
    if lock is not None:
        lock.acquire()

    def prepare() -> None:
        """Once this server holds its ports: the schema, the CA on first start, the window."""
        runtime = state.runtime(create_database=True, **flags)
        with database_errors("preparing the database"), setup_lock(runtime.engine):
            migrate.upgrade(runtime.engine)
            outcome = runtime.initialise(from_dir=None, exist_ok=True, actor=SERVER_ACTOR)
        # What the servers send agents, for `root activate` to report (the last started wins).
        runtime.server_settings.record_reissue_window(
            settings.reissue_window, by=server_actor(), now=utc_now()
        )
        runtime.engine.dispose()
        _report_first_start(outcome, settings.db_url)

    try:
        run_server(settings, verifier_factory, prepare=prepare)
    finally:
        if lock is not None:
            lock.release()


def _report_first_start(outcome: InitOutcome, db_url: str) -> None:
    """Say what a first start created: the CA in the database, and a KEK file to back up."""
    if outcome.created:
        log.info(
            "created the CA for trust domain %s in %s, signing key %s",
            outcome.identity.trust_domain.name,
            make_url(db_url).render_as_string(hide_password=True),
            outcome.signing_key_id,
        )
    notice = outcome.kek_notice()
    if notice is not None:
        log.warning(notice)


def _settings_flags(options: dict[str, Any]) -> dict[str, Any]:
    renamed = {
        "jwt_audience": "jwt_audiences",
        "jwt_public_key": "jwt_public_keys",
        "deny_identity": "deny_identities",
    }
    flags: dict[str, Any] = {}
    for name, value in options.items():
        flags[renamed.get(name, name)] = many_values(value) if isinstance(value, tuple) else value
    return flags
