"""Files a command writes what the CA issued to (``ca sign --out``, ``cert request``).

Each is reserved before anything is signed: a temporary file in its directory, with its final
mode from the moment it exists, renamed over the path once written. A bad path is refused while
nothing has been issued, and a certificate the ledger recorded is never lost to it; a reader
sees the old file or the whole new one, never a part.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ca.core.errors import ConfigurationError

#: A private key's file: its owner only.
KEY_MODE = 0o600
#: Certificates only (no key): readable by everyone.
CERT_MODE = 0o644


@dataclass(frozen=True)
class Reserved:
    """A temporary file beside ``path``, open for writing (``fd``)."""

    path: Path
    fd: int
    temp: Path


@contextlib.contextmanager
def reserved(path: Path, mode: int, flag: str) -> Iterator[Reserved]:
    """Reserve ``path`` (given as ``flag``): a temporary file in its directory (created 0600 by
    :func:`tempfile.mkstemp`, then set to exactly ``mode``), renamed over ``path`` by
    :func:`write`, removed if the block fails."""
    if path.is_dir():
        raise ConfigurationError("output_unwritable", f"{flag} {path} is a directory")
    directory = path.absolute().parent
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise _unwritable(path, flag, directory, exc) from None
    temp = Path(name)
    try:
        os.fchmod(fd, mode)
        yield Reserved(path, fd, temp)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
        temp.unlink(missing_ok=True)


def write(file: Reserved, data: bytes) -> None:
    """Write ``data`` to the reserved file, flush it to disk and rename it over its path."""
    view = memoryview(data)
    while view:
        view = view[os.write(file.fd, view) :]
    os.fsync(file.fd)
    os.replace(file.temp, file.path)


def _unwritable(path: Path, flag: str, directory: Path, exc: OSError) -> ConfigurationError:
    if exc.errno == errno.ENOENT:
        problem = f"directory {directory} does not exist"
    elif exc.errno == errno.ENOTDIR:
        problem = f"directory {directory} is not a directory"
    else:
        problem = f"cannot create a file in {directory}: {exc.strerror or type(exc).__name__}"
    return ConfigurationError("output_unwritable", f"cannot write {flag} {path}: {problem}")
