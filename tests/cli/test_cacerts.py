"""``meshca ca init --from-dir``: plugging in an existing CA from Istio's ``cacerts`` layout or a
Kubernetes TLS secret, and refusing material that does not hang together."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from ca.core.authority import SigningAuthority
from tests.cli.conftest import WEB, signing_key_of
from tests.cli.helpers import (
    Meshca,
    assert_error,
    openssl_verify,
    pem_certs,
    to_pem,
    uri_sans,
    write_csr,
)
from tests.factories import make_ca


def key_pem(key: CertificateIssuerPrivateKeyTypes, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def write_istio_cacerts(
    folder: Path, root: SigningAuthority, intermediate: SigningAuthority
) -> Path:
    folder.mkdir()
    (folder / "ca-cert.pem").write_text(to_pem(intermediate.certificate))
    (folder / "ca-key.pem").write_bytes(
        key_pem(intermediate.private_key, serialization.PrivateFormat.PKCS8)
    )
    (folder / "cert-chain.pem").write_text(to_pem(intermediate.certificate, root.certificate))
    (folder / "root-cert.pem").write_text(to_pem(root.certificate))
    return folder


def sign_and_verify(meshca: Meshca, tmp_path: Path, root_pem: str) -> None:
    csr = write_csr(tmp_path / "web.csr")
    chain = pem_certs(meshca("ca", "sign", "--csr", csr, "--spiffe-id", WEB).stdout)
    assert uri_sans(chain[0]) == [WEB]
    openssl_verify(tmp_path, chain, root_pem)


def test_istio_cacerts_layout_is_imported_and_signs_under_its_root(
    meshca: Meshca, tmp_path: Path
) -> None:
    root, intermediate = make_ca()
    write_istio_cacerts(tmp_path / "cacerts", root, intermediate)

    init = meshca("ca", "init", "--from-dir", "cacerts")
    assert signing_key_of(init) == intermediate.key_id
    assert (tmp_path / "meshca.kek").is_file()

    csr = write_csr(tmp_path / "web.csr")
    chain = pem_certs(meshca("ca", "sign", "--csr", csr, "--spiffe-id", WEB).stdout)
    assert chain[1:] == [intermediate.certificate, root.certificate]
    openssl_verify(tmp_path, chain, to_pem(root.certificate))
    assert meshca("root", "bundle").stdout == (tmp_path / "cacerts" / "root-cert.pem").read_text()


def test_kubernetes_tls_secret_layout_is_imported(meshca: Meshca, tmp_path: Path) -> None:
    root, intermediate = make_ca()
    folder = tmp_path / "secret"
    folder.mkdir()
    (folder / "tls.crt").write_text(to_pem(intermediate.certificate))
    (folder / "tls.key").write_bytes(
        key_pem(intermediate.private_key, serialization.PrivateFormat.TraditionalOpenSSL)
    )
    (folder / "ca.crt").write_text(to_pem(root.certificate))

    init = meshca("ca", "init", "--from-dir", folder)
    assert signing_key_of(init) == intermediate.key_id
    sign_and_verify(meshca, tmp_path, to_pem(root.certificate))


def test_inconsistent_cacerts_are_refused_and_nothing_is_stored(
    meshca: Meshca, tmp_path: Path
) -> None:
    root, intermediate = make_ca()
    folder = write_istio_cacerts(tmp_path / "cacerts", root, intermediate)
    other_root, other_intermediate = make_ca()
    good_key = (folder / "ca-key.pem").read_bytes()

    (folder / "ca-key.pem").write_bytes(
        key_pem(other_intermediate.private_key, serialization.PrivateFormat.PKCS8)
    )
    wrong_key = meshca("ca", "init", "--from-dir", folder, check=False)
    assert_error(wrong_key, 3, "private key does not match the CA certificate")

    (folder / "ca-key.pem").write_bytes(good_key)
    (folder / "root-cert.pem").write_text(to_pem(other_root.certificate))
    wrong_root = meshca("ca", "init", "--from-dir", folder, check=False)
    assert_error(wrong_root, 3, "does not verify up to any of the given root certificates")

    assert not (tmp_path / "meshca.kek").exists()
    status = meshca("ca", "status", check=False)
    assert_error(status, 3, "not initialised", "meshca ca init")
