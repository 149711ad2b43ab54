"""Fixtures of the authentication tests: signing keys (generated once per session), a clock that
only moves when told to, and the directory of real Kubernetes tokens outside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.auth.jwt_helpers import FakeClock, SigningKey, ec_key, rsa_key

FIXTURES_ENV = "MESHCA_TEST_FIXTURES"
REPO_ROOT = Path(__file__).resolve().parents[2]


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


@pytest.fixture(scope="session")
def k8s_tokens_dir() -> Path:
    """``<fixtures>/k8s-tokens``: tokens a real minikube API server minted.

    The fixtures root is ``$MESHCA_TEST_FIXTURES`` when set (CI sets it), else
    ``<repo>/../shared/fixtures``. Missing fixtures fail the test rather than skip it.
    """
    configured = os.environ.get(FIXTURES_ENV)
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
