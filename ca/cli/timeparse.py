"""Points in time on the command line: ISO 8601 (``2026-11-21T06:00:00Z``) or a duration ago
(``2h`` means two hours before now)."""

from __future__ import annotations

from datetime import UTC, datetime

from ca.core.durations import parse_duration


def parse_time(text: str, now: datetime) -> datetime:
    """Parse ``text`` as an instant; raise ``ValueError`` with a usable message otherwise."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    else:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    try:
        return now - parse_duration(text)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use ISO 8601 (2026-11-21T06:00:00Z) or a duration ago (2h)"
        ) from None
