"""Commands on a database where ``meshca ca init`` has not run fail with exit 3 and say what to
do, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import WEB
from tests.cli.helpers import Meshca, assert_error, write_csr

HINT = "run `meshca ca init`"


def test_commands_on_an_uninitialised_database_point_to_ca_init(
    meshca: Meshca, tmp_path: Path, db_url: str
) -> None:
    meshca("--db", db_url, "db", "upgrade")
    csr = write_csr(tmp_path / "web.csr")
    for command in (("ca", "status"), ("ca", "sign", "--csr", csr, "--spiffe-id", WEB)):
        result = meshca("--db", db_url, *command, check=False)
        assert_error(result, 3, "not initialised", HINT)
        assert result.stdout == ""
    assert not (tmp_path / "meshca.kek").exists()


def test_a_database_without_the_schema_points_to_ca_init(meshca: Meshca) -> None:
    assert_error(meshca("ca", "status", check=False), 3, "not initialised", HINT)


def test_audit_on_an_uninitialised_database_points_to_ca_init(meshca: Meshca) -> None:
    meshca("db", "upgrade")
    assert_error(meshca("audit", "certs", check=False), 3, "not initialised", HINT)
