"""``meshca agent``: the per-workload SDS agent (see the ``sds`` package)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from ca.cli.common import DURATION, CliState, many_values, pass_state, service_log_level
from ca.logs import configure_logging
from ca.settings import load_into
from sds.agent import run_agent
from sds.core.workload_csr import WORKLOAD_KEY_TYPES
from sds.settings import AgentSettings

_PATH = click.Path(path_type=Path, dir_okay=False)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--ca-address",
    multiple=True,
    help="CA gRPC address HOST:PORT (repeat, or a DNS name with several addresses; "
    "the agent fails over). Env: MESHCA_CA_ADDRESS (comma-separated).",
)
@click.option(
    "--ca-mtls-address",
    multiple=True,
    help="CA address for renewal by mTLS with the current SVID when the token is refused.",
)
@click.option("--ca-root", type=_PATH, help="PEM root(s) to verify the CA until a bundle arrives.")
@click.option("--ca-server-name", help="Name to verify in the CA's certificate. [the host]")
@click.option("--token-file", type=_PATH, help="Service-account token file (re-read per call).")
@click.option("--sds-socket", type=_PATH, help="Unix socket for Envoy SDS v3.")
@click.option("--workload-api-socket", type=_PATH, help="Unix socket for the SPIFFE Workload API.")
@click.option("--trust-domain", help="Trust domain. [cluster.local]")
@click.option(
    "--key-type",
    type=click.Choice([k.value for k in WORKLOAD_KEY_TYPES]),
    help="Workload key type. [ec-p256]",
)
@click.option("--ttl", type=DURATION, help="Requested SVID lifetime. [24h]")
@click.option("--grace-ratio", type=float, help="Renew after this fraction of the lifetime. [0.5]")
@click.option("--rotation-jitter", type=float, help="Jitter of the renewal point. [0.05]")
@click.option("--ca-timeout", type=DURATION, help="Deadline of a CA call. [10s]")
@click.option("--metrics-listen", help="/metrics, /healthz, /readyz address, or 'off'.")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Log lines. [text]")
@pass_state
def agent(state: CliState, /, **options: Any) -> None:
    """Keep this workload's X.509-SVID fresh and serve it to Envoy (SDS) and applications
    (SPIFFE Workload API) on unix sockets, until SIGTERM or SIGINT.

    \b
    Example:
      meshca agent --ca-address istiod.istio-system:15012 --ca-root /etc/meshca/root.pem \\
        --token-file /var/run/secrets/tokens/meshca-token --sds-socket /etc/sds/socket
    """
    flags = {
        name: many_values(value) if isinstance(value, tuple) else value
        for name, value in options.items()
    }
    settings = load_into(AgentSettings, state.config_file, **flags)
    configure_logging(service_log_level(), settings.log_format)
    asyncio.run(run_agent(settings))
