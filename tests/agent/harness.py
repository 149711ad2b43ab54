"""Real agents for tests: :class:`sds.agent.Agent` in its own event-loop thread, fed by a real
CA (``tests.server.harness.running_ca``) over TLS on loopback, serving on short unix socket paths
(Linux limits them to 107 bytes, which pytest's ``tmp_path`` can exceed)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sds.agent import Agent
from sds.core.credentials import Credentials
from sds.settings import AgentSettings
from tests.server.harness import RunningCa, TokenMinter

T = TypeVar("T")


@contextmanager
def socket_dir() -> Iterator[Path]:
    """A fresh short directory for unix sockets, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="meshca-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def agent_settings(
    ca: RunningCa,
    directory: Path,
    token_file: Path,
    *,
    name: str = "agent",
    mtls: bool = True,
    **overrides: Any,
) -> AgentSettings:
    """Settings for an agent of ``ca`` whose sockets live in ``directory``."""
    root = directory / f"{name}-ca-root.pem"
    root.write_bytes(ca.root_pem())
    values: dict[str, Any] = {
        "ca_address": [f"127.0.0.1:{ca.port}"],
        "ca_mtls_address": [f"127.0.0.1:{ca.mtls_port}"] if mtls else [],
        "ca_root": root,
        "token_file": token_file,
        "sds_socket": directory / f"{name}-sds.sock",
        "workload_api_socket": directory / f"{name}-wl.sock",
        "trust_domain": ca.settings.trust_domain,
        "metrics_listen": "127.0.0.1:0",
    }
    values.update(overrides)
    return AgentSettings(**values)


def write_token(
    minter: TokenMinter, directory: Path, namespace: str, service_account: str, **claims: Any
) -> Path:
    path = directory / f"{namespace}-{service_account}.token"
    path.write_text(minter.mint(namespace, service_account, **claims))
    return path


class RunningAgent:
    """A started :class:`Agent` and the thread whose event loop runs it."""

    def __init__(self, settings: AgentSettings, **agent_kwargs: Any) -> None:
        self.settings = settings
        self.agent = Agent(settings, **agent_kwargs)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.call(self.agent.start())

    def stop(self) -> None:
        try:
            self.call(self.agent.stop(grace=0.5))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def call(self, work: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def wait_ready(self, timeout: float = 15) -> Credentials:
        try:
            self.call(self.agent.wait_ready(timeout), timeout + 5)
        except TimeoutError:
            _ready, reason = self.agent.readiness()
            raise AssertionError(
                f"agent {self.settings.sds_socket.name} not ready after {timeout}s: {reason}"
            ) from None
        return self.credentials

    def wait_newer(self, generation: int, timeout: float = 15) -> Credentials:
        """The credentials once their generation passes ``generation``."""
        assert self.agent.store is not None
        store = self.agent.store

        async def newer() -> Credentials:
            async with asyncio.timeout(timeout):
                return await store.wait_newer(generation)

        return self.call(newer(), timeout + 5)

    def wait_new_svid(self, previous: Credentials, timeout: float = 15) -> Credentials:
        """The credentials once they hold an SVID other than ``previous``'s (bundle updates in
        between are skipped)."""
        old = previous.svid.serial_hex if previous.svid is not None else None
        deadline = time.monotonic() + timeout
        current = previous
        while True:
            current = self.wait_newer(current.generation, max(deadline - time.monotonic(), 0.01))
            if current.svid is not None and current.svid.serial_hex != old:
                return current

    def wait_until_bundle_synced(self, timeout: float = 15) -> Credentials:
        """The credentials once the first bundle from the CA's stream is held (it names the
        signing key)."""
        current = self.credentials
        deadline = time.monotonic() + timeout
        while not current.bundles.signing_key_id:
            current = self.wait_newer(current.generation, max(deadline - time.monotonic(), 0.01))
        return current

    def renew_now(self) -> Credentials:
        """Have the agent renew at once; its credentials once the new SVID is held."""
        before = self.credentials
        manager = self.agent.manager
        assert manager is not None
        self.loop.call_soon_threadsafe(manager.renew_soon)
        return self.wait_new_svid(before)

    @property
    def credentials(self) -> Credentials:
        assert self.agent.store is not None
        return self.agent.store.current

    @property
    def sds_target(self) -> str:
        return f"unix:{self.settings.sds_socket}"

    @property
    def workload_api_target(self) -> str:
        return f"unix:{self.settings.workload_api_socket}"


@contextmanager
def running_agent(settings: AgentSettings, **agent_kwargs: Any) -> Iterator[RunningAgent]:
    agent = RunningAgent(settings, **agent_kwargs)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
