"""Shared fixtures: real databases (a SQLite file, or a fresh PostgreSQL database per test)."""

from __future__ import annotations

import os
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
    MESHCA_TEST_POSTGRES_URL is unset)."""
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


FIXTURES_ENV = "MESHCA_TEST_FIXTURES"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def k8s_tokens_dir() -> Path:
    """``<fixtures>/k8s-tokens``: tokens a real minikube API server minted.

    The fixtures root is ``$MESHCA_TEST_FIXTURES`` when set (CI sets it), else
    ``<repo>/../shared/fixtures``. Missing fixtures fail the test rather than skip it.
    """
    configured = os.environ.get(FIXTURES_ENV) or None
    root = Path(configured) if configured else REPO_ROOT.parent / "shared" / "fixtures"
    tokens = root / "k8s-tokens"
    if not tokens.is_dir():
        origin = f"${FIXTURES_ENV}={configured}" if configured else f"{root} (the default)"
        pytest.fail(
            f"Kubernetes token fixtures not found: {tokens} does not exist. Set {FIXTURES_ENV} "
            f"to the fixtures root (the directory holding k8s-tokens/); looked in {origin}.",
            pytrace=False,
        )
    return tokens
