"""Reading (and, for ``ca init``, creating) the key-encryption key file.

The file must be private to its owner: one open to group or others is refused (exit 3) before
its key is used, like ``ssh`` refuses a private key anyone else can read.
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

from ca.core.errors import ConfigurationError
from ca.core.kek import KeyEncryptionKey, kek_to_text, new_kek_material

#: The mode ``ca init`` gives a new KEK file, and the only bits a KEK file may have.
KEK_FILE_MODE = 0o600
_GROUP_OR_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def read_kek(path: Path) -> KeyEncryptionKey:
    """Load the KEK at ``path``; a missing, unreadable or group/other-accessible file is a clear
    error."""
    try:
        with path.open("rb") as handle:
            _require_private(path, os.fstat(handle.fileno()).st_mode)
            data = handle.read()
    except FileNotFoundError:
        raise ConfigurationError(
            "kek_missing",
            f"key-encryption key file {path} does not exist (set MESHCA_KEK_FILE or --kek-file)",
        ) from None
    except OSError as exc:
        raise ConfigurationError(
            "kek_unreadable", f"cannot read key-encryption key file {path}: {exc.strerror}"
        ) from None
    return KeyEncryptionKey.from_text(data.decode("ascii", errors="replace"))


def _require_private(path: Path, mode: int) -> None:
    if mode & _GROUP_OR_OTHERS:
        raise ConfigurationError(
            "kek_file_mode",
            f"key-encryption key file {path} has mode {stat.S_IMODE(mode):04o}: group or others "
            f"can access it; make it private with: chmod 600 {shlex.quote(str(path))}",
        )


def create_kek(path: Path) -> KeyEncryptionKey:
    """Write a new random KEK to ``path`` with mode 0600 whatever the umask; never overwrite an
    existing file."""
    material = new_kek_material()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEK_FILE_MODE)
    except FileExistsError:
        raise ConfigurationError(
            "kek_exists", f"key-encryption key file {path} already exists"
        ) from None
    except OSError as exc:
        raise ConfigurationError(
            "kek_unwritable", f"cannot create key-encryption key file {path}: {exc.strerror}"
        ) from None
    with os.fdopen(fd, "w") as handle:
        # The umask may have taken bits away (even the owner's read bit): set the mode exactly.
        os.fchmod(handle.fileno(), KEK_FILE_MODE)
        handle.write(kek_to_text(material))
    return KeyEncryptionKey(material)
