"""A long-running ``meshca`` subprocess (``ca serve``, ``agent``) as the CLI and replica tests
drive it: stderr to a file (a pipe could fill and block it), its operations port over HTTP, and
a SIGTERM that must end it in time."""

from __future__ import annotations

import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tests.cli.helpers import MESHCA, clean_env

STOP_TIMEOUT = 30.0


class MeshcaProcess:
    """``meshca *args`` started in ``workdir`` with a clean environment plus ``env``."""

    #: How long a SIGTERM may take to end it.
    stop_timeout = STOP_TIMEOUT

    def __init__(
        self,
        workdir: Path,
        args: Sequence[str | Path],
        *,
        metrics_port: int,
        stderr_name: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.args = tuple(str(a) for a in args)
        self.metrics_port = metrics_port
        self.stderr_path = workdir / f"{stderr_name}.stderr"
        full_env = clean_env()
        full_env.update(env or {})
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [str(MESHCA), *self.args],
                cwd=workdir,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"meshca {' '.join(self.args)} (exit {self.process.poll()})\n{self.stderr}"

    def http(self, path: str) -> tuple[int, str]:
        """Status and body of GET ``path`` on the operations port (``OSError`` while it does not
        answer)."""
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode()

    def terminate(self) -> int:
        """SIGTERM; the exit code (fails the test if it does not exit in time)."""
        timeout = self.stop_timeout
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"no exit within {timeout}s of SIGTERM:\n{self.describe()}")

    def ensure_stopped(self) -> None:
        """SIGKILL it if it still runs (clean-up after a test, whatever happened)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
