"""Reading (and, for ``ca init``, creating) the key-encryption key file."""

from __future__ import annotations

import os
from pathlib import Path

from ca.core.errors import ConfigurationError
from ca.core.kek import KeyEncryptionKey, kek_to_text, new_kek_material


def read_kek(path: Path) -> KeyEncryptionKey:
    """Load the KEK at ``path``; a missing or unreadable file is a clear error."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigurationError(
            "kek_missing",
            f"key-encryption key file {path} does not exist (set MESHCA_KEK_FILE or --kek-file)",
        ) from None
    except OSError as exc:
        raise ConfigurationError(
            "kek_unreadable", f"cannot read key-encryption key file {path}: {exc.strerror}"
        ) from None
    return KeyEncryptionKey.from_text(text)


def create_kek(path: Path) -> KeyEncryptionKey:
    """Write a new random KEK to ``path`` with mode 0600; never overwrite an existing file."""
    material = new_kek_material()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigurationError(
            "kek_exists", f"key-encryption key file {path} already exists"
        ) from None
    except OSError as exc:
        raise ConfigurationError(
            "kek_unwritable", f"cannot create key-encryption key file {path}: {exc.strerror}"
        ) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(kek_to_text(material))
    return KeyEncryptionKey(material)
