"""``meshca db upgrade`` and ``meshca ca init``: where things are created, what is honoured, and
where settings come from (flags > MESHCA_* environment > TOML config file > defaults)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.cli.conftest import signing_key_of
from tests.cli.helpers import Meshca, assert_error, pem_certs, uri_sans


def root_of(run: Meshca, *global_args: str) -> x509.Certificate:
    (root,) = pem_certs(run(*global_args, "root", "bundle").stdout)
    return root


def organisation(cert: x509.Certificate) -> str:
    (attribute,) = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(attribute.value)


def test_upgrade_then_init_uses_the_current_directory_and_a_private_kek(
    meshca: Meshca, tmp_path: Path
) -> None:
    upgrade = meshca("db", "upgrade")
    assert upgrade.stdout.startswith("database at revision ")
    assert (tmp_path / "meshca.db").is_file()

    init = meshca("ca", "init")
    kek = tmp_path / "meshca.kek"
    assert stat.S_IMODE(kek.stat().st_mode) == 0o600
    assert str(kek.resolve()) in init.stderr
    assert "back it up" in init.stderr
    assert init.stdout.startswith("CA initialised: trust domain cluster.local, signing key ")
    signing_key = signing_key_of(init)
    kek_text = kek.read_text().strip()
    assert kek_text not in init.stdout + init.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("meshca.db-")) == [
        "meshca.db",
        "meshca.kek",
    ]

    again = meshca("ca", "init", check=False)
    assert_error(again, 3, "already initialised", "cluster.local", "--exist-ok")
    assert kek.read_text().strip() == kek_text

    accepted = meshca("ca", "init", "--exist-ok")
    assert accepted.stdout.startswith("CA already initialised: trust domain cluster.local")
    assert signing_key_of(accepted) == signing_key
    assert "key-encryption key" not in accepted.stderr
    assert kek.read_text().strip() == kek_text

    other_domain = meshca("ca", "init", "--exist-ok", "--trust-domain", "example.org", check=False)
    assert_error(other_domain, 3, "cluster.local", "example.org")


@pytest.mark.parametrize(
    ("key_type", "expected"),
    [
        ("ec-p256", ("EC", "secp256r1")),
        ("ec-p384", ("EC", "secp384r1")),
        ("rsa-2048", ("RSA", 2048)),
        ("rsa-3072", ("RSA", 3072)),
    ],
)
def test_init_honours_trust_domain_and_key_type(
    meshca: Meshca, key_type: str, expected: tuple[str, object]
) -> None:
    init = meshca("ca", "init", "--trust-domain", "example.org", "--key-type", key_type)
    assert init.stdout.startswith("CA initialised: trust domain example.org, ")

    root = root_of(meshca)
    key = root.public_key()
    if expected[0] == "EC":
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == expected[1]
    else:
        assert isinstance(key, rsa.RSAPublicKey)
        assert key.key_size == expected[1]
    assert uri_sans(root) == ["spiffe://example.org"]
    assert organisation(root) == "example.org"


def test_settings_come_from_flags_then_env_then_config_file(meshca: Meshca, tmp_path: Path) -> None:
    (tmp_path / "meshca.toml").write_text(
        'trust_domain = "file.org"\n'
        'db_url = "sqlite:///./file.db"\n'
        'kek_file = "file.kek"\n'
        'key_type = "ec-p384"\n'
    )
    env = {
        "MESHCA_TRUST_DOMAIN": "env.org",
        "MESHCA_DB_URL": "sqlite:///./env.db",
        "MESHCA_KEK_FILE": "env.kek",
    }

    # The file alone.
    from_file = meshca("--config", "meshca.toml", "ca", "init")
    assert from_file.stdout.startswith("CA initialised: trust domain file.org, ")
    assert str((tmp_path / "file.kek").resolve()) in from_file.stderr
    assert (tmp_path / "file.db").is_file()

    # The environment beats the file (named here by MESHCA_CONFIG).
    from_env = meshca("ca", "init", env={**env, "MESHCA_CONFIG": "meshca.toml"})
    assert from_env.stdout.startswith("CA initialised: trust domain env.org, ")
    assert str((tmp_path / "env.kek").resolve()) in from_env.stderr
    assert (tmp_path / "env.db").is_file()

    # Flags beat the environment; the key type not given as a flag comes from the file.
    from_flags = meshca(
        "--config", "meshca.toml", "--db", "sqlite:///./flag.db", "--kek-file", "flag.kek",
        "ca", "init", "--trust-domain", "flag.org",
        env=env,
    )  # fmt: skip
    assert from_flags.stdout.startswith("CA initialised: trust domain flag.org, ")
    assert str((tmp_path / "flag.kek").resolve()) in from_flags.stderr
    root = root_of(meshca, "--db", "sqlite:///./flag.db")
    assert organisation(root) == "flag.org"
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp384r1"

    assert not (tmp_path / "meshca.db").exists()
    assert not (tmp_path / "meshca.kek").exists()


def test_connection_options_work_after_the_command_name(meshca: Meshca, tmp_path: Path) -> None:
    """`meshca audit certs --db URL` works as well as `meshca --db URL audit certs`; given both
    ways, the one after the command name wins."""
    meshca("ca", "init", "--db", "sqlite:///./after.db", "--kek-file", "after.kek")
    assert (tmp_path / "after.db").is_file()
    assert (tmp_path / "after.kek").is_file()

    status = meshca(
        "--db", "sqlite:///./absent.db", "ca", "status", "--format", "json",
        "--db", "sqlite:///./after.db",
    )  # fmt: skip
    assert json.loads(status.stdout)["trust_domain"] == "cluster.local"
    assert not (tmp_path / "absent.db").exists()


@pytest.mark.parametrize(
    ("config", "fragments"),
    [
        (None, ("config file", "absent.toml", "does not exist")),
        ('trust_domian = "example.org"\n', ("invalid settings", "trust_domian")),
    ],
    ids=["missing", "misspelt-key"],
)
def test_a_bad_config_file_is_a_configuration_error(
    meshca: Meshca, tmp_path: Path, config: str | None, fragments: tuple[str, ...]
) -> None:
    name = "absent.toml"
    if config is not None:
        (tmp_path / name).write_text(config)
    result = meshca("--config", name, "ca", "init", check=False)
    assert_error(result, 3, *fragments)
    assert not (tmp_path / "meshca.kek").exists()


def test_an_invalid_trust_domain_is_a_configuration_error(meshca: Meshca, tmp_path: Path) -> None:
    result = meshca("ca", "init", "--trust-domain", "Not A Domain", check=False)
    assert_error(result, 3, "invalid trust domain 'Not A Domain'")
    assert not (tmp_path / "meshca.kek").exists()
