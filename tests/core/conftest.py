"""Session-wide keys and CAs for the core tests, and a clock truncated to whole seconds (X.509
times have second precision, so exact comparisons need it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ca.core.identity import WorkloadIdentity
from tests.core.builders import CaBank, KeyBank
from tests.factories import TRUST_DOMAIN


@pytest.fixture(scope="session")
def key_bank() -> KeyBank:
    return KeyBank()


@pytest.fixture(scope="session")
def ca_bank(key_bank: KeyBank) -> CaBank:
    return CaBank(key_bank, datetime.now(UTC).replace(microsecond=0) - timedelta(days=1))


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def web() -> WorkloadIdentity:
    """The caller most tests issue for: ``spiffe://cluster.local/ns/default/sa/web``."""
    return WorkloadIdentity.for_service_account(TRUST_DOMAIN, "default", "web")
