"""``meshca root``: the trust bundle."""

from __future__ import annotations

import click

from ca.cli.common import CliState, MeshcaGroup, pass_state


@click.group(cls=MeshcaGroup)
def root() -> None:
    """Trusted roots and the trust bundle."""


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
