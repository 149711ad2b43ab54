"""``meshca cert request`` as a user runs it: the real console script against a real
``meshca ca serve`` subprocess (TLS verified against ``meshca root bundle``, or ``--plaintext``),
with tokens from ``meshca dev token``; the files it writes checked with cryptography and
``openssl verify``, and the CA's ledger read back through ``meshca audit``."""

from __future__ import annotations

import json
import re
import stat
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from ca.api import methods
from ca.core.text import printable
from tests.cli.helpers import (
    Meshca,
    Result,
    assert_error,
    openssl_verify,
    pem_certs,
    serial_of,
    spki_sha256,
    to_pem,
    uri_sans,
)
from tests.factories import make_ca
from tests.processes import free_port
from tests.server.conftest import wait_until
from tests.server.test_serve_cli import ServeProcess, serving

TD = "spiffe://cluster.local"
SUCCESS = re.compile(
    r"^(?P<id>spiffe://\S+) serial (?P<serial>[0-9a-f]{32}) "
    r"not after (?P<not_after>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ): "
    r"chain (?P<cert>.+), key (?P<key>.+)$"
)
REQUEST_ID = re.compile(r"\(request id (?P<id>[0-9a-f]{32})\)$")


@dataclass
class Ca:
    """A served CA: its directory (where ``meshca audit`` finds its database and KEK), the dev
    token signer it trusts, and the root file ``meshca root bundle`` printed."""

    server: ServeProcess
    admin: Meshca
    keys: Path
    root: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def token(self, path: Path, namespace: str, service_account: str, *extra: str) -> Path:
        """A ``meshca dev token`` for ``namespace/service_account`` written to ``path``."""
        key = self.keys / "sa-signer.key.pem"
        printed = self.admin(
            "dev", "token", "--key", key, "--namespace", namespace,
            "--service-account", service_account, *extra,
        )  # fmt: skip
        path.write_text(printed.stdout)
        return path

    def audit(self, *args: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(
            self.admin("audit", *args, "--format", "json").stdout
        )
        return rows

    def csr_requests(self) -> float:
        """``meshca_csr_requests_total`` over every result: CreateCertificate calls answered."""
        text = self.server.http("/metrics")[1]
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("meshca_csr_requests_total{")
        )


def _start_ca(workdir: Path, *serve_args: str) -> Iterator[Ca]:
    admin = Meshca(workdir)
    keys = workdir / "keys"
    admin("dev", "signing-key", "--dir", keys)
    with serving(
        workdir,
        "--workers", "1",
        "--mtls-listen", "off",
        "--jwt-issuer", "meshca-dev",
        "--jwt-public-key", str(keys / "sa-signer.pub.pem"),
        *serve_args,
    ) as server:  # fmt: skip
        server.wait_ready()
        root = workdir / "root.pem"
        root.write_text(admin("root", "bundle").stdout)
        yield Ca(server, admin, keys, root)


@pytest.fixture(scope="module")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ca]:
    yield from _start_ca(tmp_path_factory.mktemp("tls-ca"))


@pytest.fixture
def plaintext_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ca]:
    yield from _start_ca(tmp_path_factory.mktemp("plaintext-ca"), "--plaintext")


@pytest.fixture
def offline(tmp_path: Path) -> Path:
    """For the tests that never reach a real CA: a root file and a token whose ``sub`` names a
    service account (the CLI reads it unverified to name the CSR's identity), an ``out/``."""
    (tmp_path / "root.pem").write_text(to_pem(make_ca()[0].certificate))
    claims = {"sub": "system:serviceaccount:default:web"}
    (tmp_path / "token").write_text(jwt.encode(claims, "k" * 32, "HS256"))
    (tmp_path / "out").mkdir()
    return tmp_path


def request(meshca: Meshca, ca: str, trust: tuple[str, ...], token: Path, *extra: str) -> Result:
    return meshca(
        "cert", "request", "--ca", ca, *trust, "--token-file", token,
        "--out-cert", "out/web.pem", "--out-key", "out/web.key", *extra,
        check=False,
    )  # fmt: skip


def assert_issued(result: Result, workdir: Path, spiffe_id: str, root_pem: str) -> str:
    """``result`` is the one success line for ``spiffe_id``; the files it names hold a chain
    leaf first that verifies to ``root_pem`` and certifies the key beside it (mode 0600).
    Returns the serial."""
    assert result.returncode == 0, result.describe()
    assert result.stderr == "", result.describe()
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.describe()
    match = SUCCESS.match(lines[0])
    assert match, result.describe()
    assert (match["id"], match["cert"], match["key"]) == (spiffe_id, "out/web.pem", "out/web.key")

    cert_path, key_path = workdir / "out/web.pem", workdir / "out/web.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert sorted(p.name for p in cert_path.parent.iterdir()) == ["web.key", "web.pem"]
    chain = pem_certs(cert_path.read_text())
    leaf = chain[0]
    assert len(chain) == 3, "leaf, intermediate, root"
    assert to_pem(chain[-1]) == root_pem
    openssl_verify(workdir, chain, root_pem)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert uri_sans(leaf) == [spiffe_id]
    assert match["serial"] == serial_of(leaf)
    assert match["not_after"] == leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    return match["serial"]


def test_tls_request_writes_a_verified_chain_and_a_private_key(tls_ca: Ca, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    token = tls_ca.token(tmp_path / "token", "shop", "cart")
    trust = ("--ca-root", str(tls_ca.root))
    result = request(Meshca(tmp_path), tls_ca.address, trust, token, "--ttl", "1h")

    spiffe_id = f"{TD}/ns/shop/sa/cart"
    serial = assert_issued(result, tmp_path, spiffe_id, tls_ca.root.read_text())
    [row] = tls_ca.audit("certs", "--serial", serial)
    leaf = pem_certs((tmp_path / "out/web.pem").read_text())[0]
    assert (row["spiffe_id"], row["public_key_sha256"]) == (spiffe_id, spki_sha256(leaf))
    assert row["requested_ttl_seconds"] == 3600


def test_plaintext_request(plaintext_ca: Ca, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    token = plaintext_ca.token(tmp_path / "token", "shop", "payments")
    args = ("--plaintext",)
    result = request(Meshca(tmp_path), plaintext_ca.address, args, token, "--key-type", "rsa-2048")

    spiffe_id = f"{TD}/ns/shop/sa/payments"
    serial = assert_issued(result, tmp_path, spiffe_id, plaintext_ca.root.read_text())
    [row] = plaintext_ca.audit("certs", "--serial", serial)
    assert row["spiffe_id"] == spiffe_id
    key = serialization.load_pem_private_key((tmp_path / "out/web.key").read_bytes(), None)
    assert key.key_size == 2048  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("trusted_signer", "extra", "reason"),
    [
        # UNAUTHENTICATED: a token from a signer the CA does not trust
        (False, (), "token_bad_signature"),
        # PERMISSION_DENIED: a CSR for another trust domain's identity
        (True, ("--trust-domain", "example.org"), "csr_identity_mismatch"),
        # INVALID_ARGUMENT: a lifetime over max_ttl
        (True, ("--ttl", "100d"), "ttl_too_long"),
    ],
)
def test_a_refusal_exits_4_with_the_cas_reason_and_is_in_the_ledger(
    tls_ca: Ca, tmp_path: Path, trusted_signer: bool, extra: tuple[str, ...], reason: str
) -> None:
    (tmp_path / "out").mkdir()
    token = tls_ca.token(tmp_path / "token", "shop", "refused")
    if not trusted_signer:
        foreign = Meshca(tmp_path)
        foreign("dev", "signing-key", "--dir", "foreign")
        token.write_text(foreign("dev", "token", "--key", "foreign/sa-signer.key.pem").stdout)
    trust = ("--ca-root", str(tls_ca.root))
    result = request(Meshca(tmp_path), tls_ca.address, trust, token, *extra)

    message = assert_error(result, 4, f"CA {tls_ca.address}: {reason}: ")
    request_id = REQUEST_ID.search(message)
    assert request_id, message
    assert list((tmp_path / "out").iterdir()) == [], "nothing written, no temporary file left"

    def denied() -> list[dict[str, Any]]:
        return [r for r in tls_ca.audit("denied") if r["request_id"] == request_id["id"]]

    [row] = wait_until(denied, timeout=30, what=f"the refusal {request_id['id']} in the ledger")
    assert row["reason"] == reason


def test_an_unreachable_ca_exits_5(offline: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = request(Meshca(offline), address, ("--ca-root", "root.pem"), offline / "token")
    assert_error(result, 5, f"CA {address}: ", "Connection refused")
    assert list((offline / "out").iterdir()) == []


@pytest.mark.parametrize(
    ("out_cert", "out_key", "flag"),
    [
        ("missing/web.pem", "out/web.key", "--out-cert missing/web.pem"),
        ("out/web.pem", "missing/web.key", "--out-key missing/web.key"),
        ("token/web.pem", "out/web.key", "--out-cert token/web.pem"),  # parent is a file
    ],
)
def test_a_bad_output_path_exits_3_before_the_ca_is_called(
    tls_ca: Ca, tmp_path: Path, out_cert: str, out_key: str, flag: str
) -> None:
    (tmp_path / "out").mkdir()
    service_account = f"unwritten-{uuid.uuid4().hex[:8]}"
    token = tls_ca.token(tmp_path / "token", "shop", service_account)
    calls_before = tls_ca.csr_requests()
    result = Meshca(tmp_path)(
        "cert", "request", "--ca", tls_ca.address, "--ca-root", tls_ca.root,
        "--token-file", token, "--out-cert", out_cert, "--out-key", out_key,
        check=False,
    )  # fmt: skip

    assert_error(result, 3, f"cannot write {flag}: directory ")
    assert list((tmp_path / "out").iterdir()) == []
    assert tls_ca.csr_requests() == calls_before, "the CA was called"
    spiffe_id = f"{TD}/ns/shop/sa/{service_account}"
    assert tls_ca.audit("certs", "--spiffe-id", spiffe_id) == []
    assert tls_ca.audit("denied", "--spiffe-id", spiffe_id) == []


@pytest.mark.parametrize("trust", [("--ca-root", "root.pem", "--plaintext"), ()])
def test_exactly_one_of_ca_root_and_plaintext(offline: Path, trust: tuple[str, ...]) -> None:
    result = request(Meshca(offline), f"127.0.0.1:{free_port()}", trust, offline / "token")
    assert_error(result, 2, "give exactly one of --ca-root and --plaintext")
    assert list((offline / "out").iterdir()) == []


def test_the_cas_error_text_is_printed_escaped(offline: Path) -> None:
    """A CA (here a fake one) chooses its error details: control characters in them must not
    reach the terminal raw, and the error stays one line."""
    hostile = "bad token\x1b[2J\r\ninjected line\u202eevil\x07"

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, hostile)

    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers((methods.certificate_service_handler(refuse),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        result = request(Meshca(offline), f"127.0.0.1:{port}", ("--plaintext",), offline / "token")
    finally:
        server.stop(grace=None)

    reason = assert_error(result, 4, f"CA 127.0.0.1:{port}: ")
    assert reason.endswith(printable(hostile)), result.describe()
    assert r"bad token\x1b[2J\r\ninjected line\u202eevil\x07" in reason
    assert all(ch.isprintable() for ch in reason)
