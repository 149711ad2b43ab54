"""The workload's service-account token, read from its file before every CA call: the kubelet
rotates projected tokens in place. The token's text never reaches a log or an error message."""

from __future__ import annotations

from pathlib import Path

from ca.core.errors import ConfigurationError


def read_token(path: Path) -> str:
    """The token in ``path``, stripped; :class:`ConfigurationError` when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigurationError(
            "token_file_missing", f"token file {path} does not exist"
        ) from None
    except PermissionError:
        raise ConfigurationError(
            "token_file_unreadable", f"token file {path} is not readable by this user"
        ) from None
    except IsADirectoryError:
        raise ConfigurationError(
            "token_file_unreadable", f"token file {path} is a directory"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            "token_file_unreadable", f"token file {path} cannot be read: {type(exc).__name__}"
        ) from None
    if not text:
        raise ConfigurationError("token_file_empty", f"token file {path} is empty")
    return text
