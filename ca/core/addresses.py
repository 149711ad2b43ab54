"""Network addresses as meshca's settings spell them: ``HOST:PORT``, an IPv6 host in brackets
(``[::1]:15012``). Checked when the settings are read, so a typo is refused with the address in
the message instead of failing (or binding somewhere else) later."""

from __future__ import annotations

import ipaddress
import re

#: A host name or an IPv4 address (IPv6 goes in brackets).
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9._-]*[A-Za-z0-9_])?")
MAX_PORT = 65535


def split_host_port(
    address: str, *, what: str = "address", listen: bool = False
) -> tuple[str, int]:
    """``address`` as ``(host, port)``; IPv6 hosts come back without their brackets.

    A ``listen`` address may have port 0 (any free port); an address to connect to may not.
    Raise ``ValueError`` naming ``what`` and the address when it is not ``HOST:PORT``.
    """
    host, colon, port = address.rpartition(":")
    if not colon and address.isdigit():
        raise ValueError(
            f"{what} {address!r} has no host: write HOST:PORT (e.g. 127.0.0.1:{address})"
        )
    if not colon or not host:
        example = "127.0.0.1:15012" if colon else f"{address}:15012"
        raise ValueError(
            f"{what} {address!r} has no {'host' if colon else 'port'}: write HOST:PORT "
            f"(e.g. {example})"
        )
    if not port.isascii() or not port.isdigit():
        raise ValueError(f"{what} {address!r}: port {port!r} is not a number")
    lowest = 0 if listen else 1
    number = int(port)
    if not lowest <= number <= MAX_PORT:
        raise ValueError(f"{what} {address!r}: port {number} is outside {lowest}-{MAX_PORT}")
    return _host(host, address, what), number


def _host(host: str, address: str, what: str) -> str:
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise ValueError(f"{what} {address!r}: {host} is not an IPv6 address") from None
    if ":" in host:
        raise ValueError(f"{what} {address!r}: an IPv6 host goes in brackets ([::1]:15012)")
    if not _HOST.fullmatch(host):
        raise ValueError(f"{what} {address!r}: {host!r} is not a host name or IP address")
    return host
