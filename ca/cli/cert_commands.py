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
import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
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
from ca.core.errors import (
    ConfigurationError,
    MeshcaError,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from ca.core.keys import KeyType
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
KEY_MODE = 0o600
CERT_MODE = 0o644


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
    host, _, port = address.rpartition(":")
    bare = host.removeprefix("[").removesuffix("]")
    valid_host = bool(bare) and not any(c.isspace() or c in "/[]@" for c in bare)
    if ":" in bare and host != f"[{bare}]":
        valid_host = False
    if not valid_host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError("bad_ca_address", f"--ca {printable(address)} is not HOST:PORT")
    return address


def printable(text: str) -> str:
    """``text`` with every non-printable character (newlines, terminal escapes, bidi controls)
    escaped, so untrusted text prints as one inert line."""
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def for_cli(error: MeshcaError) -> MeshcaError:
    """``error`` (from the CA call or the check of its reply: text the CA chose) with its message
    escaped, as the type the CLI maps to the exit code documented for ``cert request``: a
    refused token is a refused request (4), a rate limit a busy CA (5)."""
    message = printable(error.message)
    if isinstance(error, Unauthenticated):
        return PermissionDenied(error.reason, message)
    if isinstance(error, RateLimited):
        return Unavailable(error.reason, message)
    return type(error)(error.reason, message)


class Reserved:
    """A temporary file beside ``path``, open for writing with ``mode``."""

    def __init__(self, path: Path, fd: int, temp: Path) -> None:
        self.path = path
        self.fd = fd
        self.temp = temp


@contextlib.contextmanager
def reserved(path: Path, mode: int, flag: str) -> Iterator[Reserved]:
    """Reserve ``path`` before the CA is called: a temporary file in its directory (created
    0600 by :func:`tempfile.mkstemp`, then set to exactly ``mode``), renamed over ``path`` by
    :func:`write`, removed if the block fails."""
    if path.is_dir():
        raise ConfigurationError("bad_output", f"{flag} {path} is a directory")
    directory = path.parent
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigurationError(
            "bad_output", f"{flag} {path}: cannot write in {directory}: {reason}"
        ) from None
    temp = Path(name)
    try:
        os.fchmod(fd, mode)
        yield Reserved(path, fd, temp)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
        temp.unlink(missing_ok=True)


def write(file: Reserved, data: bytes) -> None:
    """Write ``data`` to the reserved file, flush it to disk and rename it over its path."""
    view = memoryview(data)
    while view:
        view = view[os.write(file.fd, view) :]
    os.fsync(file.fd)
    os.replace(file.temp, file.path)
