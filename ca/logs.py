"""Log setup: human text lines, or one JSON object per line for log pipelines.

Fields passed with ``extra=`` (request_id, spiffe_id, serial, result, reason, ...) become JSON
keys. Nothing meshca logs carries a token or key: messages name reasons, ids and serials.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

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
    """Send logs to stderr at ``level`` in ``fmt`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
