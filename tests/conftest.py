"""Shared fixtures: real databases (a SQLite file, or a fresh PostgreSQL database per test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from ca.storage import migrate
from ca.storage.engine import make_engine
from tests.postgres import fresh_postgres_database


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A freshly created, empty PostgreSQL database, dropped afterwards (skipped only when
    MESHCA_TEST_POSTGRES_URL is unset and no server answers on 127.0.0.1:5432)."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'meshca.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once on SQLite and once on the real PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on an empty database of each dialect (not yet migrated)."""
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def migrated_engine(engine: Engine) -> Engine:
    """An engine on a database migrated to the newest schema."""
    migrate.upgrade(engine)
    return engine


K8S_TOKENS_DIR = Path(__file__).resolve().parent / "fixtures" / "k8s-tokens"


@pytest.fixture(scope="session")
def k8s_tokens_dir() -> Path:
    """``tests/fixtures/k8s-tokens``: tokens a real minikube API server minted (see its README)."""
    return K8S_TOKENS_DIR
