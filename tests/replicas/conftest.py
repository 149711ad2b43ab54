"""Fixtures of the replica tests: a deployment (one database, one KEK file, one token signer) whose
replicas are all stopped when the test ends, before its database is dropped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.replicas.harness import Deployment


@pytest.fixture
def deployment(tmp_path: Path, postgres_url: str) -> Iterator[Deployment]:
    """A deployment on a fresh, empty PostgreSQL database."""
    deployed = Deployment(tmp_path, postgres_url)
    try:
        yield deployed
    finally:
        deployed.stop_all()


@pytest.fixture
def sqlite_deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A deployment on an SQLite file (not created yet)."""
    deployed = Deployment(tmp_path, f"sqlite:///{tmp_path / 'meshca.db'}")
    try:
        yield deployed
    finally:
        deployed.stop_all()
