"""Preparing a unix socket path to listen on: its directory must exist; a socket file left by a
dead process is replaced; one a live process still serves is never taken over."""

from __future__ import annotations

import contextlib
import socket
import stat
from pathlib import Path

from ca.core.errors import ConfigurationError


def prepare_socket_path(path: Path) -> None:
    """Make ``path`` free to bind, or raise :class:`ConfigurationError` saying why it is not."""
    directory = path.parent
    if not directory.is_dir():
        raise ConfigurationError(
            "socket_dir_missing",
            f"directory {directory} for socket {path} does not exist (create it, shared with "
            "Envoy and readable only by the workload's user or group)",
        )
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigurationError(
            "socket_path_taken", f"{path} exists and is not a socket; refusing to replace it"
        )
    if _accepts_connections(path):
        raise ConfigurationError(
            "socket_in_use", f"socket {path} is in use by a running process (another agent?)"
        )
    path.unlink()


def remove_socket(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()


def _accepts_connections(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True
