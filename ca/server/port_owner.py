"""Which process holds a socket: the listener on a TCP port, or the holder of an abstract Unix
socket name, read from Linux's ``/proc`` (socket inode in ``/proc/net/*``, then the process
whose ``/proc/<pid>/fd`` links to it).

Best effort: ``None`` when it cannot be told (not Linux, another user's process, a race).
Command lines come from other processes, so they are returned printable (control characters
escaped) and with URL passwords masked.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ca.core.text import mask_url_passwords, printable

_PROC = Path("/proc")
_TCP_LISTEN = "0A"
_MAX_COMMAND = 400

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Holder:
    """The process (lowest pid) holding a socket, and how many others hold it too."""

    pid: int
    command: str | None
    others: int = 0

    def __str__(self) -> str:
        text = f"pid {self.pid}"
        if self.command:
            text += f" ({self.command})"
        if self.others:
            text += f" and {self.others} other process{'es' if self.others > 1 else ''}"
        return text


def tcp_listener(host: str, port: int) -> Holder | None:
    """The process listening on TCP ``port`` at an address that clashes with ``host`` (the
    same address or a wildcard; any address when ``host`` is not an IP literal)."""
    try:
        wanted: IPAddress | None = _unmapped(ipaddress.ip_address(host.partition("%")[0]))
    except ValueError:
        wanted = None
    inodes = set()
    for name in ("tcp", "tcp6"):
        for fields in _table(name):
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            address, listen_port = _decode_address(fields[1])
            if listen_port == port and _clashes(address, wanted):
                inodes.add(fields[9])
    return _holder(inodes)


def unix_socket_holder(abstract_name: str) -> Holder | None:
    """The process bound to the abstract Unix socket ``abstract_name`` (without its NUL)."""
    shown = "@" + abstract_name
    inodes = {f[6] for f in _table("unix") if len(f) >= 8 and f[7] == shown}
    return _holder(inodes)


def command_line(pid: int) -> str | None:
    """``pid``'s command line, shell-quoted, printable, URL passwords masked, cut short."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    args = [arg.decode("utf-8", "backslashreplace") for arg in raw.rstrip(b"\0").split(b"\0")]
    text = printable(mask_url_passwords(shlex.join(args)))
    return text if len(text) <= _MAX_COMMAND else text[: _MAX_COMMAND - 3] + "..."


def _holder(inodes: set[str]) -> Holder | None:
    if not inodes:
        return None
    pids = sorted(_pids_holding({f"socket:[{inode}]" for inode in inodes}))
    if not pids:
        return None
    return Holder(pids[0], command_line(pids[0]), len(pids) - 1)


def _pids_holding(links: set[str]) -> Iterator[int]:
    try:
        entries = [e for e in os.scandir(_PROC) if e.name.isdigit()]
    except OSError:
        return
    for entry in entries:
        try:
            fds = list(os.scandir(Path(entry.path) / "fd"))
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                if os.readlink(fd.path) in links:
                    yield int(entry.name)
                    break
            except OSError:
                continue


def _table(name: str) -> Iterator[list[str]]:
    try:
        lines = (_PROC / "net" / name).read_text().splitlines()[1:]
    except OSError:
        return
    for line in lines:
        yield line.split()


def _decode_address(field: str) -> tuple[IPAddress, int]:
    """``0100007F:3A98`` -> (127.0.0.1, 15000): each 32-bit word in host byte order."""
    hex_ip, _, hex_port = field.partition(":")
    packed = b"".join(
        struct.pack("=I", int(hex_ip[i : i + 8], 16)) for i in range(0, len(hex_ip), 8)
    )
    return _unmapped(ipaddress.ip_address(packed)), int(hex_port, 16)


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _clashes(address: IPAddress, wanted: IPAddress | None) -> bool:
    if wanted is None or address.is_unspecified or wanted.is_unspecified:
        return True
    return address == wanted
