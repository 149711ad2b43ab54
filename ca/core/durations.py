"""Human durations such as ``24h``, ``90d``, ``1h30m`` or ``3600`` (seconds)."""

from __future__ import annotations

import re
from datetime import timedelta

_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "y": 365 * 86400,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration(text: str) -> timedelta:
    """Parse ``text`` into a positive-or-zero ``timedelta``; raise ``ValueError`` if malformed."""
    s = text.strip().lower()
    if not s:
        raise ValueError("empty duration")
    if re.fullmatch(r"\d+", s):
        return _timedelta(int(s), text)
    pos = 0
    total = 0.0
    for match in _PART.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(s):
        raise ValueError(
            f"invalid duration {text!r}: use a number with a unit (ms, s, m, h, d, w, y), "
            "e.g. 24h, 90d, 1h30m"
        )
    return _timedelta(total, text)


def _timedelta(seconds: float, text: str) -> timedelta:
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"invalid duration {text!r}: out of range") from None


def format_duration(value: timedelta) -> str:
    """Format ``value`` compactly (``1d2h``), the inverse of :func:`parse_duration`."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        size = int(_UNIT_SECONDS[unit])
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
