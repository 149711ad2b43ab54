"""Log setup: human text lines, or one JSON object per line for log pipelines.

Fields passed with ``extra=`` (request_id, spiffe_id, serial, result, reason, ...) become JSON
keys. Nothing meshca logs carries a token or key: messages name reasons, ids and serials.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from datetime import UTC, datetime
from typing import Any, TextIO

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of ``record`` (those with a value)."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD and value is not None
    }


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", **extra}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **record_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = " ".join(f"{k}={v}" for k, v in record_fields(record).items())
        return f"{line} {fields}" if fields else line


def configure_logging(level: str, fmt: str) -> None:
    """Send logs to stderr at ``level`` in ``fmt`` (``text`` or ``json``); warnings captured
    before this (:func:`capture_warnings`) are logged now, in this format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    release_warnings()


WARNINGS_LOGGER = "py.warnings"


def _is_deprecation(category: type[Warning]) -> bool:
    """Deprecations speak to developers, not operators (``CryptographyDeprecationWarning`` is a
    ``UserWarning`` by inheritance, so its name counts too)."""
    return issubclass(category, DeprecationWarning | PendingDeprecationWarning) or (
        category.__name__.endswith("DeprecationWarning")
    )


class _WarningRouter:
    """Python warnings (ours and third parties') as records of the ``py.warnings`` logger:
    deprecations at DEBUG, every other warning at WARNING. Until logging has the configuration
    the process keeps, records are held, so none reaches stderr as raw text or in another
    format than the rest of the log."""

    def __init__(self) -> None:
        self.holding = False
        self.pending: list[logging.LogRecord] = []

    def show(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        logger = logging.getLogger(WARNINGS_LOGGER)
        level = logging.DEBUG if _is_deprecation(category) else logging.WARNING
        fields = {"warning_category": category.__name__, "source": f"{filename}:{lineno}"}
        record = logger.makeRecord(
            logger.name, level, filename, lineno, "%s", (str(message),), None, extra=fields
        )
        if self.holding:
            self.pending.append(record)
        elif logger.isEnabledFor(level):
            logger.handle(record)

    def release(self) -> None:
        self.holding = False
        logger = logging.getLogger(WARNINGS_LOGGER)
        pending, self.pending = self.pending, []
        for record in pending:
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)


_ROUTER = _WarningRouter()


def capture_warnings() -> None:
    """Route every Python warning into logging from now on, holding them until
    :func:`release_warnings` (or :func:`configure_logging`). Called once, at the CLI entry."""
    _ROUTER.holding = True
    warnings.showwarning = _ROUTER.show


def release_warnings() -> None:
    """Log the warnings held so far with the current logging configuration."""
    _ROUTER.release()
