"""Helpers for the CLI tests: running the real ``meshca`` console script in a subprocess, and
checking what it prints (certificates, errors) the way a user or a tool would."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from tests.factories import make_csr

T = TypeVar("T")

MESHCA = Path(sys.executable).parent / "meshca"
TIMEOUT_SECONDS = 120

# The documented JSON keys of `audit certs` / `audit show` (and the CSV header, in this order).
CERT_KEYS = [
    "serial",
    "spiffe_id",
    "namespace",
    "service_account",
    "pod_name",
    "pod_uid",
    "issuer_key_id",
    "not_before",
    "not_after",
    "cert_sha256",
    "public_key_sha256",
    "requested_ttl_seconds",
    "requester",
    "request_id",
    "issued_at",
]
CERT_TIMESTAMPS = ("not_before", "not_after", "issued_at")
DENIED_KEYS = {
    "request_id",
    "reason",
    "message",
    "error_type",
    "requester",
    "spiffe_id",
    "namespace",
    "service_account",
    "pod_name",
    "pod_uid",
    "requested_ttl_seconds",
    "denied_at",
}
ADMIN_REQUESTER = "admin-cli"


def clean_env() -> dict[str, str]:
    """This process's environment without any ``MESHCA_*`` variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")}


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (
            f"meshca {' '.join(self.args)} exited {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        )


class Meshca:
    """Runs the installed ``meshca`` in ``cwd`` with a clean environment plus ``env``."""

    def __init__(self, cwd: Path, env: Mapping[str, str] | None = None) -> None:
        self.cwd = cwd
        self.env = dict(env or {})

    def __call__(
        self,
        *args: str | Path,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        check: bool = True,
    ) -> Result:
        full_env = clean_env()
        full_env.update(self.env)
        full_env.update(env or {})
        argv = tuple(str(a) for a in args)
        proc = subprocess.run(
            [str(MESHCA), *argv],
            cwd=self.cwd,
            env=full_env,
            input=input,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )
        result = Result(argv, proc.returncode, proc.stdout, proc.stderr)
        if check and result.returncode != 0:
            pytest.fail(result.describe())
        return result


def in_parallel(*calls: Callable[[], T]) -> list[T]:
    """Run independent ``meshca`` invocations side by side (each one is mostly interpreter start-up
    and imports), returning their results in order."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda call: call(), calls))


def assert_error(result: Result, exit_code: int, *fragments: str) -> str:
    """``result`` failed with ``exit_code`` and a one-line ``meshca: error:`` reason (no
    traceback) containing every fragment; return the reason."""
    assert result.returncode == exit_code, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.describe()
    prefix = "meshca: error: "
    assert lines[0].startswith(prefix), result.describe()
    reason = lines[0].removeprefix(prefix)
    for fragment in fragments:
        assert fragment in reason, result.describe()
    return reason


def write_csr(
    path: Path, key: CertificateIssuerPrivateKeyTypes | None = None, **san: Sequence[str]
) -> Path:
    path.write_bytes(make_csr(key, **san))
    return path


def write_random_kek(path: Path) -> None:
    """A valid KEK file (base64 of 32 random bytes, mode 0600), as ``ca init`` writes one."""
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    path.chmod(0o600)


def pem_certs(text: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(text.encode())


def der_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def spki_sha256(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def to_pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def serial_of(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "032x")


def uri_sans(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def is_ca(cert: x509.Certificate) -> bool:
    return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def openssl_verify(workdir: Path, chain: Sequence[x509.Certificate], root_pem: str) -> None:
    """``openssl verify`` the leaf ``chain[0]`` against the trusted ``root_pem``, with the rest
    of ``chain`` as untrusted intermediates."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is required for these tests"
    folder = workdir / f"verify-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    (folder / "root.pem").write_text(root_pem)
    (folder / "untrusted.pem").write_text(to_pem(*chain[1:]))
    (folder / "leaf.pem").write_text(to_pem(chain[0]))
    proc = subprocess.run(
        [openssl, "verify", "-CAfile", "root.pem", "-untrusted", "untrusted.pem", "leaf.pem"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "leaf.pem: OK", proc.stdout + proc.stderr
