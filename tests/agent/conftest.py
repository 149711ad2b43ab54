"""Fixtures of the agent tests: a real CA (``serve`` from the server tests) and real agents on
short unix socket paths, all stopped when the test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.agent.harness import RunningAgent, agent_settings, running_agent, socket_dir, write_token
from tests.server.conftest import Served, minter, serve  # noqa: F401  (fixtures)

StartAgent = Callable[..., RunningAgent]


@pytest.fixture
def sockets() -> Iterator[Path]:
    with socket_dir() as directory:
        yield directory


@pytest.fixture
def start_agent(sockets: Path) -> Iterator[StartAgent]:
    """``start_agent(served, namespace, service_account, **settings)``: a running agent of that
    service account (its token freshly minted into a file, or ``token``); stopped at the end of
    the test."""
    with ExitStack() as stack:

        def start(
            served: Served,
            namespace: str = "default",
            service_account: str = "web",
            *,
            name: str | None = None,
            wait: bool = True,
            token: str | None = None,
            **overrides: Any,
        ) -> RunningAgent:
            name = name or f"{namespace}-{service_account}"
            token_file = write_token(served.minter, sockets, namespace, service_account)
            if token is not None:
                token_file.write_text(token)
            settings = agent_settings(served.ca, sockets, token_file, name=name, **overrides)
            agent = stack.enter_context(running_agent(settings))
            if wait:
                agent.wait_ready()
            return agent

        yield start
