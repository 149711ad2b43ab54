"""``meshca cert request``: a certificate from a running CA without writing code.

The same steps as the SDS agent (``sds``): a fresh key generated here (never sent), a CSR
naming the SPIFFE ID of the token's ``sub``, Istio's ``CreateCertificate`` by token over TLS
verified against ``--ca-root`` (or plaintext, for a CA serving ``--plaintext``), and the reply
checked before anything is written: it must certify our key, name our ID and chain to the root.

The output files are reserved (temporary files beside them) before the CA is called, so a
certificate the CA issued and recorded is never lost to a bad output path; the key's file is
mode 0600 from the moment it exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import SpiffeId, TrustDomain
from spiffe.errors import PySpiffeError

from ca.cli.common import DURATION
from ca.cli.output import iso
from ca.cli.output_files import CERT_MODE, KEY_MODE, reserved, write
from ca.core.addresses import split_host_port
from ca.core.errors import ConfigurationError, MeshcaError
from ca.core.keys import KeyType
from ca.core.text import printable
from sds.agent import load_ca_roots
from sds.ca_client import CaClient, ClientIdentity
from sds.core.credentials import Svid, WorkloadKey, parse_pem_chain, svid_from_reply
from sds.core.workload_csr import (
    WORKLOAD_KEY_TYPES,
    build_csr,
    generate_workload_key,
    spiffe_id_for_token,
)
from sds.token_file import read_token

_FILE = click.Path(path_type=Path, dir_okay=False)


class TrustDomainType(click.ParamType[TrustDomain, Any]):
    name = "trust-domain"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> TrustDomain:
        if isinstance(value, TrustDomain):
            return value
        try:
            return TrustDomain(str(value))
        except PySpiffeError as exc:
            self.fail(f"{value!r} is not a trust domain: {exc}", param, ctx)


@click.group()
def cert() -> None:
    """Workload certificates from a running CA."""


@cert.command("request")
@click.option("--ca", "ca_address", required=True, help="The CA's gRPC address HOST:PORT.")
@click.option("--ca-root", type=_FILE, help="PEM root(s) that verify the CA (meshca root bundle).")
@click.option("--plaintext", is_flag=True, help="No TLS: only for a CA serving --plaintext.")
@click.option("--token-file", type=_FILE, required=True, help="Service-account token file.")
@click.option(
    "--key-type",
    type=click.Choice([k.value for k in WORKLOAD_KEY_TYPES]),
    default=KeyType.EC_P256.value,
    show_default=True,
)
@click.option("--ttl", type=DURATION, help="Requested lifetime. [the CA's default_ttl]")
@click.option("--trust-domain", type=TrustDomainType(), default="cluster.local", show_default=True)
@click.option("--server-name", help="Name to verify in the CA's certificate. [the host]")
@click.option(
    "--timeout", type=DURATION, default="10s", show_default=True, help="CA call deadline."
)
@click.option("--out-cert", type=_FILE, required=True, help="Chain (leaf first), mode 0644.")
@click.option("--out-key", type=_FILE, required=True, help="PKCS#8 private key, mode 0600.")
def request(
    ca_address: str,
    ca_root: Path | None,
    plaintext: bool,
    token_file: Path,
    key_type: str,
    ttl: timedelta | None,
    trust_domain: TrustDomain,
    server_name: str | None,
    timeout: timedelta,
    out_cert: Path,
    out_key: Path,
) -> None:
    """Generate a key, have the CA certify it for the token's SPIFFE ID, write both.

    \b
    Example (after `make run`):
      meshca root bundle > root.pem
      meshca dev token --namespace default --service-account web > token
      meshca cert request --ca 127.0.0.1:15012 --ca-root root.pem --token-file token \\
        --out-cert web.pem --out-key web.key
    """
    if (ca_root is None) != plaintext:
        raise click.UsageError("give exactly one of --ca-root and --plaintext")
    if out_cert.absolute() == out_key.absolute():
        raise click.UsageError("--out-cert and --out-key must be different files")
    address = check_address(ca_address)
    token = read_token(token_file)
    roots = load_ca_roots(ca_root) if ca_root is not None else None
    spiffe_id = spiffe_id_for_token(token, trust_domain)
    with (
        reserved(out_key, KEY_MODE, "--out-key") as key_file,
        reserved(out_cert, CERT_MODE, "--out-cert") as cert_file,
    ):
        key = generate_workload_key(KeyType(key_type))
        client = CaClient(
            [address],
            [],
            lambda: b"".join(r.public_bytes(serialization.Encoding.PEM) for r in roots or ()),
            server_name=server_name,
            timeout=timeout,
            plaintext=plaintext,
        )
        svid, chain = issue(client, token, build_csr(key, spiffe_id), ttl, (spiffe_id, key), roots)
        write(key_file, svid.key_pkcs8_pem())
        write(cert_file, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    click.echo(summary(svid, out_cert, out_key))


def issue(
    client: CaClient,
    token: str,
    csr: bytes,
    ttl: timedelta | None,
    ours: tuple[SpiffeId, WorkloadKey],
    roots: Sequence[x509.Certificate] | None,
) -> tuple[Svid, tuple[x509.Certificate, ...]]:
    """Have the CA sign ``csr``: the reply as an SVID (checked: it certifies our key, names our
    ID and chains to ``roots``) and the chain as returned, leaf first. Errors carry the CA's text
    escaped."""
    spiffe_id, key = ours
    try:
        pems = asyncio.run(
            client.create_certificate(csr, ttl or timedelta(0), ClientIdentity(token=token))
        )
        chain = parse_pem_chain(pems)
        return svid_from_reply(pems, spiffe_id, key, roots or _own_root(chain)), chain
    except MeshcaError as exc:
        raise for_cli(exc) from None


def summary(svid: Svid, out_cert: Path, out_key: Path) -> str:
    """The one line printed on success."""
    return (
        f"{svid.spiffe_id} serial {format(svid.leaf.serial_number, '032x')} "
        f"not after {iso(svid.not_after)}: chain {out_cert}, key {out_key}"
    )


def _own_root(chain: Sequence[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    """Without ``--ca-root`` (plaintext) nothing authenticates the CA: the chain can only be
    checked against the self-signed root it ends with."""
    if chain and chain[-1].issuer == chain[-1].subject:
        return (chain[-1],)
    return ()


def check_address(address: str) -> str:
    """``address`` when it is ``HOST:PORT`` (an IPv6 host in brackets)."""
    try:
        split_host_port(address, what="--ca")
    except ValueError as exc:
        raise ConfigurationError("bad_ca_address", printable(str(exc))) from None
    return address


def for_cli(error: MeshcaError) -> MeshcaError:
    """``error`` (from the CA call or the check of its reply: text the CA chose) with its message
    escaped."""
    return type(error)(error.reason, printable(error.message))
