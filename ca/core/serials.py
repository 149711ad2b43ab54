"""Certificate serial numbers: 128 bits from the operating system's CSPRNG."""

from __future__ import annotations

import secrets

SERIAL_BITS = 128


def random_serial() -> int:
    """A positive serial with 128 random bits (RFC 5280 allows up to 20 octets)."""
    while True:
        serial = secrets.randbits(SERIAL_BITS)
        if serial:
            return serial


def serial_hex(serial: int) -> str:
    """The canonical text form of a serial: 32 lower-case hex digits."""
    return format(serial, "032x")


def normalise_serial(text: str) -> str:
    """The canonical form of a serial written any hex way: any case, with or without ``0x``,
    colons (``openssl x509 -serial``, ``-text``) or leading zeros. Non-hex text is returned
    lower-cased, so it matches no serial."""
    digits = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        return serial_hex(int(digits, 16))
    except ValueError:
        return digits


#: RFC 5280: a serial is at most 20 octets.
MAX_SERIAL_HEX_DIGITS = 40


def parse_serial(text: str) -> str:
    """The canonical form of a serial written any hex way (see :func:`normalise_serial`);
    raise ``ValueError`` when ``text`` is not one."""
    digits = text.strip().lower().removeprefix("0x").replace(":", "")
    if not digits or len(digits) > MAX_SERIAL_HEX_DIGITS or digits.strip("0123456789abcdef"):
        raise ValueError(
            f"{text!r} is not a certificate serial: give its hex digits, as `meshca audit "
            "certs` or `openssl x509 -serial` print them"
        )
    return serial_hex(int(digits, 16))
