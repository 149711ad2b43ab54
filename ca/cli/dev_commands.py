"""``meshca dev``: a local service-account token signer, standing in for a Kubernetes API
server on a laptop (`make run`, the demo, trying the API by hand). Never for production."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import TrustDomain

from ca.cli.common import DURATION
from ca.core.identity import WorkloadIdentity
from ca.core.keys import key_id

DEV_ISSUER = "meshca-dev"
KEY_NAME = "sa-signer.key.pem"
PUBLIC_NAME = "sa-signer.pub.pem"


@click.group()
def dev() -> None:
    """Local development helpers (a stand-in token signer)."""


@dev.command("signing-key")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".meshca-dev"),
    show_default=True,
)
def signing_key(directory: Path) -> None:
    """Create a P-256 token signing key (if missing, saying so on stderr); print the public
    key's path."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, public_path = directory / KEY_NAME, directory / PUBLIC_NAME
    if not key_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        key_path.touch(mode=0o600)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        public_path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        click.echo(
            f"created a development token signer {key_path} (mode 0600, for `meshca dev token`) "
            f"and its public key {public_path}; never use them in production",
            err=True,
        )
    click.echo(public_path)


@dev.command()
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=Path(".meshca-dev") / KEY_NAME,
    show_default=True,
)
@click.option("--namespace", default="default", show_default=True)
@click.option("--service-account", default="default", show_default=True)
@click.option("--pod-name", help="Pod the token is bound to.")
@click.option("--audience", default="istio-ca", show_default=True)
@click.option("--issuer", default=DEV_ISSUER, show_default=True)
@click.option("--ttl", type=DURATION, default="1h", show_default=True)
def token(
    key_path: Path,
    namespace: str,
    service_account: str,
    pod_name: str | None,
    audience: str,
    issuer: str,
    ttl: timedelta,
) -> None:
    """Print a projected service-account token signed by the dev key."""
    WorkloadIdentity.for_service_account(TrustDomain("check.invalid"), namespace, service_account)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise click.BadParameter("the dev signing key must be an EC P-256 key", param_hint="--key")
    now = datetime.now(UTC)
    claims = {
        "iss": issuer,
        "aud": [audience],
        "sub": f"system:serviceaccount:{namespace}:{service_account}",
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
            "pod": {"name": pod_name or f"{service_account}-dev", "uid": str(uuid.uuid4())},
        },
    }
    kid = key_id(key.public_key())
    click.echo(jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid}))
