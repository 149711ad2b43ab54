"""Alembic migrations on SQLite and PostgreSQL: upgrade, downgrade, and models == migrations."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import DateTime, Engine, MetaData, String, inspect

from ca.core.errors import ConfigurationError
from ca.core.records import IssuedRecord
from ca.storage import migrate
from ca.storage.engine import make_engine
from ca.storage.ledger import Ledger, LedgerQuery
from ca.storage.models import Base, UtcDateTime

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_TABLES = set(Base.metadata.tables)
VERSION_TABLE = "alembic_version"


def head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrate.migrations_dir()))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def schema_diff(engine: Engine, metadata: MetaData) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def sample_record(serial: str) -> IssuedRecord:
    at = datetime(2030, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    return IssuedRecord(
        serial=serial,
        spiffe_id="spiffe://cluster.local/ns/default/sa/web",
        namespace="default",
        service_account="web",
        pod_name=None,
        pod_uid=None,
        issuer_key_id="0" * 32,
        not_before=at,
        not_after=at.replace(hour=13),
        cert_sha256="a" * 64,
        public_key_sha256="b" * 64,
        requested_ttl_seconds=None,
        requester="test",
        request_id="req-1",
        issued_at=at,
    )


def test_model_tables_are_the_expected_ones() -> None:
    # Guards the other tests in this file against comparing two empty sets.
    assert {"ca_state", "authorities", "issued_certs", "denied_requests"} <= MODEL_TABLES


def test_upgrade_to_head_creates_every_table_and_is_repeatable(engine: Engine) -> None:
    assert migrate.current_revision(engine) is None
    assert table_names(engine) == set()

    migrate.upgrade(engine)

    assert table_names(engine) == MODEL_TABLES | {VERSION_TABLE}
    assert migrate.current_revision(engine) == head_revision()

    # `meshca db upgrade` runs on every deploy: a second run at head changes nothing.
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == head_revision()
    assert table_names(engine) == MODEL_TABLES | {VERSION_TABLE}


def test_models_match_the_migrations(migrated_engine: Engine) -> None:
    assert schema_diff(migrated_engine, Base.metadata) == []


def test_schema_comparison_detects_a_divergent_model(migrated_engine: Engine) -> None:
    """The empty diff above means something: a model that drifts from the migrations shows."""
    drifted = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["issued_certs"].c.request_id.type = String(65)
    diff = schema_diff(migrated_engine, drifted)
    assert any("request_id" in repr(entry) for entry in diff), diff


def test_timestamps_are_timezone_aware_columns_on_postgresql(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        migrate.upgrade(engine)
        inspector = inspect(engine)
        for table in Base.metadata.tables.values():
            columns = {c["name"]: c["type"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if isinstance(column.type, UtcDateTime):
                    reflected = columns[column.name]
                    assert isinstance(reflected, DateTime), (table.name, column.name)
                    assert reflected.timezone is True, (table.name, column.name)
    finally:
        engine.dispose()


def test_downgrade_to_base_drops_every_table_and_upgrade_again_works(engine: Engine) -> None:
    migrate.upgrade(engine)
    Ledger(engine).record([sample_record("01" * 16)])

    migrate.downgrade(engine, "base")

    # Alembic keeps its (now empty) version table; every table of meshca is gone.
    assert table_names(engine) - {VERSION_TABLE} == set()
    assert migrate.current_revision(engine) is None
    assert len(schema_diff(engine, Base.metadata)) >= len(MODEL_TABLES)

    migrate.upgrade(engine)

    assert table_names(engine) == MODEL_TABLES | {VERSION_TABLE}
    assert migrate.current_revision(engine) == head_revision()
    assert schema_diff(engine, Base.metadata) == []
    ledger = Ledger(engine)
    assert ledger.count_issued() == 0  # the old rows went with the tables
    ledger.record([sample_record("02" * 16)])
    assert [r.serial for r in ledger.certs(LedgerQuery())] == ["02" * 16]


def test_the_migrations_ship_in_the_package_where_migrate_looks() -> None:
    """migrate.py runs the scripts beside itself, and pyproject.toml ships every one of them:
    each folder is a package of the wheel, each file a module or package data (``make
    check-wheel`` runs them from an installed wheel)."""
    package_dir = Path(migrate.__file__).resolve().parent
    assert migrate.migrations_dir() == package_dir / "migrations"

    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages: list[str] = setuptools["packages"]
    package_data: dict[str, list[str]] = setuptools["package-data"]
    files = [
        path.relative_to(REPO_ROOT)
        for path in migrate.migrations_dir().rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    names = {(REPO_ROOT / file).relative_to(package_dir).as_posix() for file in files}
    assert {"migrations/env.py", "migrations/script.py.mako"} <= names
    not_shipped = []
    for file in files:
        package = ".".join(file.parent.parts)
        shipped = package in packages and (
            file.suffix == ".py"
            or any(fnmatch(file.name, pattern) for pattern in package_data.get(package, []))
        )
        if not shipped:
            not_shipped.append(file.as_posix())
    assert not_shipped == []

    cfg = Config()
    cfg.set_main_option("script_location", str(migrate.migrations_dir()))
    revisions = {
        Path(script.path).relative_to(package_dir).as_posix()
        for script in ScriptDirectory.from_config(cfg).walk_revisions()
    }
    assert len(revisions) >= 2
    assert revisions <= names


def test_missing_migrations_directory_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", tmp_path)
    with pytest.raises(ConfigurationError) as info:
        migrate.migrations_dir()
    assert info.value.reason == "migrations_missing"
    assert str(tmp_path) in info.value.message
