"""Mistakes in what an admin asks an initialised CA: a file that is no CSR, an output the chain
cannot be written to, a serial the ledger does not hold, a time range that holds no instant.
Each ends the real ``meshca`` with exactly one ``meshca: error:`` line and the documented exit
code (2 usage, 3 configuration, 4 request refused), never a traceback; and a certificate is
never recorded without being delivered."""

from __future__ import annotations

import json
import stat
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import WEB
from tests.cli.helpers import Meshca, assert_error, in_parallel, pem_certs, serial_of, write_csr


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised CA (``./meshca.db``, ``./meshca.kek``) for this module's tests."""
    path = tmp_path_factory.mktemp("request-errors")
    Meshca(path)("ca", "init")
    return path


@pytest.fixture
def ca(ca_dir: Path) -> Meshca:
    return Meshca(ca_dir)


def issued_rows(ca: Meshca) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(ca("audit", "certs", "--format", "json").stdout)
    return rows


# --- 5. a CSR file that is no CSR ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"notes: ask the platform team for a CSR\n", "is not a PEM or DER certificate signing"),
        (bytes(range(256)) * 3, "is not a PEM or DER certificate signing request"),
        (b"", "CSR is empty"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "a PEM PRIVATE KEY"),
    ],
    ids=["text", "binary", "empty", "pem-key"],
)
def test_a_file_that_is_no_csr_is_refused_in_plain_words(
    ca: Meshca, ca_dir: Path, content: bytes, fragment: str
) -> None:
    csr = ca_dir / "notes.txt"
    csr.write_bytes(content)
    result = ca("ca", "sign", "--csr", csr, "--spiffe-id", WEB, check=False)

    reason = assert_error(result, 4, fragment)
    assert result.stdout == ""
    for internals in ("asn1", "ParseError", "ShortData", "InvalidLength"):
        assert internals not in reason


# --- 9. an output the chain cannot be written to: nothing is signed ------------------------------


@pytest.mark.parametrize(
    ("out", "problem"),
    [
        (
            "missing/dir/chain.pem",
            "cannot write --out {out}: directory {dir}/missing/dir does not exist",
        ),
        (
            "notes.txt/chain.pem",
            "cannot write --out {out}: directory {dir}/notes.txt is not a directory",
        ),
        (".", "--out . is a directory"),
    ],
    ids=["missing-directory", "a-file-as-directory", "a-directory"],
)
def test_sign_refuses_an_unwritable_output_before_signing(
    ca: Meshca, ca_dir: Path, out: str, problem: str
) -> None:
    (ca_dir / "notes.txt").write_text("not a directory\n")
    before = issued_rows(ca)
    csr = write_csr(ca_dir / "out.csr")
    result = ca("ca", "sign", "--csr", csr, "--spiffe-id", WEB, "--out", out, check=False)

    assert_error(result, 3, problem.format(out=out, dir=ca_dir))
    assert result.stdout == ""
    assert issued_rows(ca) == before  # no certificate recorded that nobody received


def test_sign_writes_the_chain_whole_with_mode_0644(ca: Meshca, ca_dir: Path) -> None:
    out = ca_dir / "written" / "chain.pem"
    out.parent.mkdir()
    out.write_text("an older chain\n")
    out.chmod(0o600)
    result = ca("ca", "sign", "--csr", write_csr(ca_dir / "w.csr"), "--spiffe-id", WEB,
                "--out", out)  # fmt: skip

    chain = pem_certs(out.read_text())
    assert f"issued serial {serial_of(chain[0])}" in result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in out.parent.iterdir()] == ["chain.pem"]  # no temporary file left


# --- 6. audit show: a serial the ledger does not hold, or no serial at all -----------------------


def test_audit_show_of_an_unknown_serial_is_refused(ca: Meshca) -> None:
    unknown, malformed = in_parallel(
        partial(ca, "audit", "show", "0xFF", check=False),
        partial(ca, "audit", "show", "not-a-serial", check=False),
    )

    assert_error(unknown, 4, f"no certificate with serial {'ff'.rjust(32, '0')} in the ledger")
    assert unknown.stdout == ""
    assert_error(malformed, 2, "'not-a-serial' is not a certificate serial")
    assert malformed.stdout == ""


# --- 7. --since after --until --------------------------------------------------------------------


@pytest.mark.parametrize("command", ["certs", "denied", "events"])
def test_since_after_until_is_a_usage_error(ca: Meshca, command: str) -> None:
    result = ca(
        "audit", command, "--since", "2026-03-02T00:00:00Z", "--until", "2026-03-01T00:00:00Z",
        check=False,
    )  # fmt: skip

    assert_error(
        result, 2, "--since 2026-03-02T00:00:00Z is not before --until 2026-03-01T00:00:00Z"
    )
    assert result.stdout == ""
