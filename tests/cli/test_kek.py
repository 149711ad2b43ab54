"""The key-encryption key: a wrong, missing or malformed KEK, or a KEK file group or others may
access, is refused clearly (exit 3) and never leads meshca to overwrite the CA in the database;
a new KEK file is 0600 whatever the umask."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.cli.conftest import WEB
from tests.cli.helpers import (
    MESHCA,
    TIMEOUT_SECONDS,
    Meshca,
    assert_error,
    clean_env,
    in_parallel,
    pem_certs,
    write_csr,
    write_random_kek,
)
from tests.processes import free_port


@dataclass
class KekCa:
    path: Path
    meshca: Meshca
    root_pem: str
    csr: Path

    @property
    def kek(self) -> Path:
        return self.path / "meshca.kek"


@pytest.fixture(scope="module")
def kek_ca(tmp_path_factory: pytest.TempPathFactory) -> KekCa:
    path = tmp_path_factory.mktemp("kek-ca")
    run = Meshca(path)
    run("ca", "init")
    root_pem = run("root", "bundle").stdout
    return KekCa(path, run, root_pem, write_csr(path / "web.csr"))


@pytest.fixture
def saved_kek(kek_ca: KekCa) -> Iterator[bytes]:
    """The good KEK's bytes; the file is put back after the test whatever it did to it."""
    original = kek_ca.kek.read_bytes()
    yield original
    kek_ca.kek.unlink(missing_ok=True)
    kek_ca.kek.write_bytes(original)
    kek_ca.kek.chmod(0o600)


def test_another_valid_kek_is_refused_and_nothing_is_overwritten(
    kek_ca: KekCa, saved_kek: bytes
) -> None:
    write_random_kek(kek_ca.kek)

    sign = kek_ca.meshca("ca", "sign", "--csr", kek_ca.csr, "--spiffe-id", WEB, check=False)
    reason = assert_error(sign, 3, "encrypted under KEK", "but the KEK given has id")
    assert sign.stdout == ""
    init = kek_ca.meshca("ca", "init", "--exist-ok", check=False)
    assert assert_error(init, 3) == reason

    # With the right KEK back, the CA is as it was: same bundle, and its key still decrypts.
    kek_ca.kek.write_bytes(saved_kek)
    assert kek_ca.meshca("root", "bundle").stdout == kek_ca.root_pem
    signed = kek_ca.meshca("ca", "sign", "--csr", kek_ca.csr, "--spiffe-id", WEB)
    assert pem_certs(signed.stdout)[-1] == pem_certs(kek_ca.root_pem)[0]


def test_a_missing_kek_file_is_named_and_not_recreated(kek_ca: KekCa, saved_kek: bytes) -> None:
    kek_ca.kek.unlink()

    sign = kek_ca.meshca("ca", "sign", "--csr", kek_ca.csr, "--spiffe-id", WEB, check=False)
    assert_error(sign, 3, "meshca.kek", "does not exist", "MESHCA_KEK_FILE", "--kek-file")
    init = kek_ca.meshca("ca", "init", "--exist-ok", check=False)
    assert_error(init, 3, "meshca.kek", "does not exist")
    assert not kek_ca.kek.exists()


def test_a_malformed_kek_file_is_refused(kek_ca: KekCa) -> None:
    (kek_ca.path / "garbage.kek").write_text("this is not a key\n")
    (kek_ca.path / "garbage.kek").chmod(0o600)
    sign = kek_ca.meshca(
        "ca", "sign", "--csr", kek_ca.csr, "--spiffe-id", WEB,
        env={"MESHCA_KEK_FILE": "garbage.kek"}, check=False,
    )  # fmt: skip
    assert_error(sign, 3, "key-encryption key", "base64")


# --- a KEK file open to group or others ----------------------------------------------------------


def mode_refusal(path: str, mode: int) -> tuple[str, ...]:
    """What the one-line refusal of a KEK file with ``mode`` says: the file, its mode, and the
    command that fixes it."""
    return (f"key-encryption key file {path} has mode {mode:04o}", f"chmod 600 {path}")


def public_key_pem(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def test_every_command_that_reads_a_world_readable_kek_refuses_it(
    kek_ca: KekCa, saved_kek: bytes
) -> None:
    kek_ca.kek.chmod(0o644)
    sign = ("ca", "sign", "--csr", kek_ca.csr, "--spiffe-id", WEB)
    commands = [("ca", "init", "--exist-ok"), sign, ("root", "prepare")]
    for result in in_parallel(*(partial(kek_ca.meshca, *args, check=False) for args in commands)):
        assert_error(result, 3, *mode_refusal("meshca.kek", 0o644))
        assert result.stdout == ""

    serve = kek_ca.meshca(
        "ca", "serve", "--listen", f"127.0.0.1:{free_port()}", "--mtls-listen", "off",
        "--metrics-listen", "off", "--workers", "1", "--jwt-issuer", "meshca-dev",
        "--jwt-public-key", public_key_pem(kek_ca.path / "jwt.pub.pem"), check=False,
    )  # fmt: skip
    assert serve.returncode == 3, serve.describe()
    assert "Traceback" not in serve.stderr, serve.describe()
    errors = [line for line in serve.stderr.splitlines() if line.startswith("meshca: error: ")]
    assert len(errors) == 1, serve.describe()
    assert all(fragment in errors[0] for fragment in mode_refusal("meshca.kek", 0o644))

    # Nothing was prepared; once the file is private, as the message says, all is well again.
    assert kek_ca.meshca("root", "bundle").stdout == kek_ca.root_pem
    kek_ca.kek.chmod(0o600)
    assert pem_certs(kek_ca.meshca(*sign).stdout)[-1] == pem_certs(kek_ca.root_pem)[0]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620], ids=["group-read", "others", "group-write"])
def test_any_group_or_other_permission_is_refused(
    kek_ca: KekCa, saved_kek: bytes, mode: int
) -> None:
    kek_ca.kek.chmod(mode)
    sign = kek_ca.meshca("ca", "sign", "--csr", kek_ca.csr, "--spiffe-id", WEB, check=False)
    assert_error(sign, 3, *mode_refusal("meshca.kek", mode))


def test_init_refuses_an_existing_open_kek_file_and_creates_no_ca(
    meshca: Meshca, tmp_path: Path
) -> None:
    kek = tmp_path / "keys" / "ca.kek"
    kek.parent.mkdir()
    write_random_kek(kek)
    kek.chmod(0o640)

    init = meshca("ca", "init", "--kek-file", kek, check=False)

    assert_error(init, 3, *mode_refusal(str(kek), 0o640))
    assert_error(meshca("root", "bundle", check=False), 3, "not initialised")
    assert stat.S_IMODE(kek.stat().st_mode) == 0o640, "meshca never changes the mode itself"


@pytest.mark.parametrize("umask", [0o277, 0o477], ids=["owner-read-only", "owner-write-only"])
def test_a_new_kek_file_is_0600_whatever_the_umask(
    meshca: Meshca, tmp_path: Path, umask: int
) -> None:
    meshca("db", "upgrade")  # the database with the usual umask: this is about the KEK
    init = subprocess.run(
        [str(MESHCA), "ca", "init"],
        cwd=tmp_path, env=clean_env(), umask=umask, capture_output=True, text=True,
        timeout=TIMEOUT_SECONDS, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr

    assert stat.S_IMODE((tmp_path / "meshca.kek").stat().st_mode) == 0o600
    meshca("ca", "sign", "--csr", write_csr(tmp_path / "web.csr"), "--spiffe-id", WEB)
