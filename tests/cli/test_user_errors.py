"""Mistakes in where the CA's database is and where it listens: each ends the real ``meshca``
with exactly one ``meshca: error:`` line naming what is wrong and the documented exit code (3
configuration, 5 database unavailable), never a traceback, and leaves nothing behind. Commands
that only read never create an SQLite file."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import pytest

from ca.core.errors import ConfigurationError
from ca.settings import load_settings
from tests.cli.helpers import Meshca, Result, assert_error, in_parallel
from tests.meshca_process import MeshcaProcess
from tests.processes import free_port

NOT_INITIALISED = ("not initialised", "run `meshca ca init`")
START_TIMEOUT = 60.0
PASSWORD = "s3cret-pw"
READ_ONLY = [
    ("ca", "status"),
    ("root", "status"),
    ("root", "bundle"),
    ("audit", "certs"),
    ("audit", "denied"),
    ("audit", "events"),
    ("audit", "show", "ff"),
]


def serve_fails(workdir: Path, *args: str | Path, env: Mapping[str, str] | None = None) -> Result:
    """``meshca *args`` (a ``ca serve``) that must end during start-up, as its Result."""
    served = MeshcaProcess(
        workdir, args, metrics_port=0, stderr_name=f"serve-{uuid.uuid4().hex[:8]}", env=env
    )
    try:
        code = served.process.wait(START_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"ca serve did not end at start-up:\n{served.describe()}")
    finally:
        served.ensure_stopped()
    return Result(served.args, code, "", served.stderr)


# --- 1. an SQLite file in a missing directory ----------------------------------------------------


@pytest.mark.parametrize("command", [("db", "upgrade"), ("ca", "init"), ("ca", "serve")])
def test_sqlite_file_in_a_missing_directory_is_a_configuration_error(
    meshca: Meshca, tmp_path: Path, command: tuple[str, ...]
) -> None:
    db = f"sqlite:///{tmp_path / 'missing' / 'meshca.db'}"
    if command == ("ca", "serve"):
        result = serve_fails(tmp_path, "--db", db, *command)
    else:
        result = meshca("--db", db, *command, check=False)

    assert_error(result, 3, "meshca.db", f"directory {tmp_path / 'missing'} does not exist")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".stderr")) == []


# --- 2. listen addresses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "address", "fragment"),
    [
        ("--listen", "garbage", "has no port"),
        ("--listen", "127.0.0.1:99999", "port 99999 is outside 0-65535"),
        ("--listen", "off", "has no port"),
        ("--mtls-listen", "127.0.0.1:65536", "port 65536 is outside 0-65535"),
        ("--metrics-listen", "15014", "has no host"),
        ("--metrics-listen", "::1:15014", "an IPv6 host goes in brackets"),
    ],
)
def test_a_listen_address_that_is_not_host_and_port_is_refused(
    tmp_path: Path, flag: str, address: str, fragment: str
) -> None:
    result = serve_fails(tmp_path, "ca", "serve", flag, address)

    setting = flag.removeprefix("--").replace("-", "_")
    assert_error(result, 3, f"invalid settings: {setting}: address {address!r}", fragment)
    assert not (tmp_path / "meshca.db").exists()


def test_listen_addresses_from_the_environment_and_the_config_file_are_checked_alike(
    tmp_path: Path,
) -> None:
    (tmp_path / "meshca.toml").write_text('mtls_listen = "0.0.0.0:70000"\n')
    from_file = serve_fails(tmp_path, "--config", "meshca.toml", "ca", "serve")
    from_env = serve_fails(tmp_path, "ca", "serve", env={"MESHCA_METRICS_LISTEN": "garbage"})

    assert_error(from_file, 3, "mtls_listen: address '0.0.0.0:70000'", "outside 0-65535")
    assert_error(from_env, 3, "metrics_listen: address 'garbage' has no port")
    # The setting is checked wherever settings are read, not only by `ca serve`.
    status = Meshca(tmp_path)("ca", "status", env={"MESHCA_LISTEN": "garbage"}, check=False)
    assert_error(status, 3, "listen: address 'garbage' has no port")


def test_good_listen_addresses_and_off_are_accepted() -> None:
    settings = load_settings(listen="[::1]:0", mtls_listen="off", metrics_listen="localhost:65535")
    assert (settings.listen, settings.mtls_listen) == ("[::1]:0", "off")
    with pytest.raises(ConfigurationError, match="listen: address 'off' has no port"):
        load_settings(listen="off")


# --- 3. a database URL that is not one meshca can use --------------------------------------------


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("notaurl", ("'notaurl' is not a database URL", "sqlite:///PATH")),
        (
            f"mysql://meshca:{PASSWORD}@db.internal/meshca",
            ("mysql://meshca:***@db.internal/meshca", "unsupported database 'mysql'"),
        ),
        (f"postgres://meshca:{PASSWORD}@db.internal/x", ("unsupported database 'postgres'",)),
        (f"not a url://meshca:{PASSWORD}@db.internal/x", ("is not a database URL", "***@")),
    ],
    ids=["not-a-url", "mysql", "postgres-scheme", "garbled-with-password"],
)
def test_a_database_url_meshca_cannot_use_is_a_configuration_error(
    meshca: Meshca, tmp_path: Path, url: str, fragments: tuple[str, ...]
) -> None:
    result = meshca("--db", url, "db", "upgrade", check=False)

    assert_error(result, 3, "invalid settings: db_url: ", *fragments)
    assert PASSWORD not in result.stderr
    assert list(tmp_path.iterdir()) == []


# --- 4. a PostgreSQL server that refuses connections ---------------------------------------------


def test_a_postgresql_server_that_refuses_connections_is_unavailable(
    meshca: Meshca, tmp_path: Path
) -> None:
    port = free_port()  # free: nothing listens there, so the connection is refused
    db = ("--db", f"postgresql+psycopg://meshca:{PASSWORD}@127.0.0.1:{port}/meshca")
    commands = [("db", "upgrade"), ("ca", "status"), ("audit", "certs")]
    results = in_parallel(*(partial(meshca, *db, *c, check=False) for c in commands))
    results.append(serve_fails(tmp_path, *db, "ca", "serve", "--metrics-listen", "off"))

    for result in results:
        assert_error(
            result, 5, f"cannot connect to the database at 127.0.0.1:{port}", "connection refused"
        )
        assert PASSWORD not in result.stderr
    assert not (tmp_path / "meshca.kek").exists()


# --- 10. reading never creates a database ---------------------------------------------------------


def test_read_only_commands_on_a_missing_database_create_nothing(
    meshca: Meshca, tmp_path: Path
) -> None:
    results = in_parallel(*(partial(meshca, *c, check=False) for c in READ_ONLY))
    current = meshca("db", "current")

    for result in results:
        assert_error(result, 3, *NOT_INITIALISED, f"{tmp_path / 'meshca.db'} does not exist")
        assert result.stdout == ""
    assert current.stdout == "none\n"
    assert list(tmp_path.iterdir()) == []


def test_root_bundle_on_an_uninitialised_database_says_what_ca_status_says(
    meshca: Meshca,
) -> None:
    meshca("db", "upgrade")
    bundle, status = in_parallel(
        partial(meshca, "root", "bundle", check=False),
        partial(meshca, "ca", "status", check=False),
    )

    assert_error(bundle, 3, *NOT_INITIALISED)
    assert bundle.stderr == status.stderr
    assert bundle.stdout == ""


@pytest.mark.parametrize(
    "command", [("db", "upgrade", "--revision", "nosuch"), ("db", "downgrade", "nosuch")]
)
def test_a_revision_that_names_nothing_is_refused(meshca: Meshca, command: tuple[str, ...]) -> None:
    meshca("db", "upgrade")
    before = meshca("db", "current").stdout

    assert_error(meshca(*command, check=False), 4, "Can't locate revision identified by 'nosuch'")
    assert meshca("db", "current").stdout == before
