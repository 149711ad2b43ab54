"""Database failures as domain errors: the storage layer's one mapping, used by every store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ca.core.errors import Unavailable


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
