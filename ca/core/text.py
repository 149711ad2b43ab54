"""Text from elsewhere made safe to print: on a terminal, in a one-line error, in a log line."""

from __future__ import annotations

import re

_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@/\s]*@")


def printable(text: str) -> str:
    """``text`` with every non-printable character (newlines, terminal escapes, bidi controls)
    escaped, so untrusted text prints as one inert line."""
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def mask_url_passwords(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it shown as ``***``
    (also where the URL would not parse)."""
    return _URL_PASSWORD.sub(r"\1:***@", text)
