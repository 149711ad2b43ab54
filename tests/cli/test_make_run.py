"""``make run`` as a newcomer meets it: it says what it created (the dev token signer, the CA in
``./meshca.db``, the KEK to back up) and how to get a certificate, and those commands, pasted
into another shell while it serves, give a certificate that chains to the CA's root.

The real Makefile runs in a fresh directory with this venv (``STAMP=`` skips the install step)
and free ports."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from tests.cli.helpers import clean_env, openssl_verify
from tests.processes import free_port
from tests.server.conftest import wait_until

REPO = Path(__file__).resolve().parents[2]
HINT = "make run: get a certificate from another shell:"


def _ready(metrics_port: int, make: subprocess.Popen[bytes], log: Path) -> bool:
    if make.poll() is not None:
        pytest.fail(f"make run exited with {make.returncode}:\n{log.read_text()}")
    try:
        url = f"http://127.0.0.1:{metrics_port}/readyz"
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.HTTPError):
        return False


def _hinted_commands(output: str) -> str:
    """The shell lines ``make run`` printed under its hint, continuation lines joined."""
    lines = output.splitlines()
    start = lines.index(HINT) + 1
    commands = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        commands.append(line.strip())
    return "\n".join(commands).replace("\\\n", " ")


def test_make_run_says_what_it_made_and_its_hint_gets_a_certificate(tmp_path: Path) -> None:
    make_program = shutil.which("make")
    assert make_program is not None, "make is required (the README's first command)"
    venv = Path(sys.prefix)
    ports = [free_port() for _ in range(3)]
    log = tmp_path / "make-run.log"
    variables = [f"VENV={venv}", "STAMP="] + [
        f"{name}={port}"
        for name, port in zip(("RUN_PORT", "RUN_MTLS_PORT", "RUN_METRICS_PORT"), ports, strict=True)
    ]
    with log.open("wb") as out:
        make = subprocess.Popen(
            [make_program, "--no-print-directory", "-f", str(REPO / "Makefile"), "run", *variables],
            cwd=tmp_path, env=clean_env(), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(lambda: _ready(ports[2], make, log), timeout=60, what="make run to serve")
        output = log.read_text()
        assert "created a development token signer .meshca-dev/sa-signer.key.pem" in output
        assert "created the CA for trust domain cluster.local in sqlite:///./meshca.db" in output
        kek = (tmp_path / "meshca.kek").resolve()
        assert f"created key-encryption key {kek} (mode 0600); back it up" in output

        commands = _hinted_commands(output)
        assert f"--ca 127.0.0.1:{ports[0]} " in commands
        shell = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", commands],
            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert shell.returncode == 0, f"{commands}\n{shell.stdout}{shell.stderr}"
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        make.wait(30)

    chain = x509.load_pem_x509_certificates((tmp_path / "web.pem").read_bytes())
    assert chain[0].extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/default/sa/web"
    ]
    assert (tmp_path / "web.key").stat().st_mode & 0o777 == 0o600
    openssl_verify(tmp_path, chain, (tmp_path / "root.pem").read_text())
