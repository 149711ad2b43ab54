"""Rendering rows as a readable table, stable JSON, or CSV."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

FORMATS = ("table", "json", "csv")


def iso(value: datetime) -> str:
    """UTC timestamps as ``2026-11-21T06:02:00Z``."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if hasattr(value, "value") and isinstance(getattr(value, "value", None), str):
        return value.value
    return value


def as_dicts(records: Sequence[Any]) -> list[dict[str, Any]]:
    """Dataclass records as plain dicts with JSON-ready values."""
    return [{k: _plain(v) for k, v in dataclasses.asdict(r).items()} for r in records]


def render(
    rows: list[dict[str, Any]], fmt: str, columns: Sequence[str], fields: Sequence[str]
) -> str:
    """Render ``rows``: a table shows ``columns``; JSON and CSV carry every one of ``fields``
    (the CSV header is ``fields`` even when no row matched)."""
    if fmt == "json":
        return json.dumps(rows, indent=2, sort_keys=True) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    return table(rows, columns)


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """An aligned plain-text table with a header line."""
    cells = [[c.upper() for c in columns]]
    cells += [["-" if row.get(c) is None else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in cells
    )
