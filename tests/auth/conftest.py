"""Fixtures of the authentication tests: signing keys (generated once per session), a clock that
only moves when told to, and the directory of real Kubernetes tokens outside the repository."""

from __future__ import annotations

import pytest

from tests.auth.jwt_helpers import FakeClock, SigningKey, ec_key, rsa_key


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def rsa_signer() -> SigningKey:
    return rsa_key("rsa-1")


@pytest.fixture(scope="session")
def other_rsa_signer() -> SigningKey:
    """Another RSA key, unknown to the verifiers (or its replacement after a rotation)."""
    return rsa_key("rsa-2")


@pytest.fixture(scope="session")
def ec_signer() -> SigningKey:
    return ec_key("ec-1")
