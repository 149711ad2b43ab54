"""Shared fixtures: real databases (a SQLite file, or a fresh PostgreSQL database per test)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from ca.storage import migrate
from ca.storage.engine import make_engine

POSTGRES_ENV = "MESHCA_TEST_POSTGRES_URL"
SKIP_POSTGRES = (
    f"{POSTGRES_ENV} is not set; set it (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test) "
    "to run the PostgreSQL tests (CI always does)"
)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A freshly created, empty PostgreSQL database, dropped afterwards.

    Skips only when MESHCA_TEST_POSTGRES_URL is unset; when it is set, a connection error fails.
    """
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(SKIP_POSTGRES)
    name = f"meshca_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


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
