"""Database failures as domain errors: the storage layer's one mapping, used by every store."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ca.core.errors import ConfigurationError, Unavailable

_DEFAULT_PORTS: dict[str, int] = {"postgresql": 5432}

#: libpq's "connection to server at "HOST" (ADDRESS), port N failed: CAUSE" (one per address).
_LIBPQ_FAILURE = re.compile(r'connection to server (?:at|on socket) "[^"]*"[^:]*failed: (.+)')


@contextmanager
def database_errors(action: str) -> Iterator[None]:
    """Turn a database failure into :class:`Unavailable` (no SQL or parameters in the text)."""
    try:
        yield
    except SQLAlchemyError as exc:
        detail = type(exc.orig if isinstance(exc, DBAPIError) else exc).__name__
        raise Unavailable(
            "database_unavailable", f"database error while {action}: {detail}"
        ) from exc


def not_initialised(detail: str = "") -> ConfigurationError:
    """The CA has not been created in this database (``detail`` says more, e.g. no file)."""
    where = f" ({detail})" if detail else ""
    return ConfigurationError(
        "not_initialised",
        f"the CA is not initialised in this database{where}; run `meshca ca init`",
    )


def connection_failed(url: URL, error: BaseException) -> Unavailable:
    """The database server at ``url`` could not be reached or refused the session: one line
    naming host, port and libpq's reason (never the password)."""
    port = url.port or _DEFAULT_PORTS.get(url.get_backend_name())
    where = f"{url.host}:{port}" if url.host else "the local socket"
    return Unavailable(
        "database_unavailable", f"cannot connect to the database at {where}: {_cause(error)}"
    )


def _cause(error: BaseException) -> str:
    """The reason in a driver's connection error, e.g. "connection refused"."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    first = lines[0].removeprefix("connection failed: ")
    match = _LIBPQ_FAILURE.search(first)
    cause = (match.group(1) if match else first).removeprefix("FATAL:").strip()
    if len(cause) > 1 and cause[0].isupper() and cause[1].islower():
        cause = cause[0].lower() + cause[1:]
    return cause
