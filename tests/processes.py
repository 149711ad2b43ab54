"""Helpers for tests and benchmarks that run real processes: free loopback ports and a clean
stop (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import signal
import socket
import subprocess

_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port that was free just now and not handed out before by this process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    """SIGTERM ``process`` and wait ``timeout`` seconds, then SIGKILL it. Whether it exited on
    SIGTERM in time (its exit code is then ``process.returncode``)."""
    if process.poll() is not None:
        return True
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
    return True
