"""The key-encryption key: a wrong, missing or malformed KEK is refused clearly (exit 3) and
never leads meshca to overwrite the CA in the database."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli.conftest import WEB
from tests.cli.helpers import Meshca, assert_error, pem_certs, write_csr, write_random_kek


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
    sign = kek_ca.meshca(
        "ca", "sign", "--csr", kek_ca.csr, "--spiffe-id", WEB,
        env={"MESHCA_KEK_FILE": "garbage.kek"}, check=False,
    )  # fmt: skip
    assert_error(sign, 3, "key-encryption key", "base64")
