"""The addresses ``meshca ca serve`` listens on: parsed, claimed before anything binds them,
and every failure to bind one turned into a one-line :class:`ConfigurationError`.

Only the workers of one server share a port (SO_REUSEPORT, ``ca.server.process``). So before it
binds, a server (or the supervisor of N workers) claims each address for its whole life:

- a lock: an abstract Unix socket named after the address, so two servers starting at the same
  moment cannot both pass the probe. Abstract names live in the network namespace, exactly as
  ports do (two containers of one pod share both; they would not share a lock file in /tmp),
  and the kernel frees the name when its process dies, however it dies.
- a probe: binding the address with SO_REUSEADDR but without SO_REUSEPORT fails when any
  process listens there, whether or not that process allows sharing.

A server with one process then binds without SO_REUSEPORT, so the kernel refuses anyone who
comes later; a supervisor's workers must share, so the lock is what keeps other meshca servers
out (a foreign program that sets SO_REUSEPORT and binds after the probe is not stopped).
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from ca.core.addresses import split_host_port
from ca.core.errors import ConfigurationError
from ca.core.text import printable
from ca.server.port_owner import tcp_listener, unix_socket_holder

_LOCK_PREFIX = "meshca/serve/"

SocketAddress = tuple[Any, ...]


def split_address(address: str, flag: str = "address") -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets) as a pair; port 0 means any free port."""
    try:
        return split_host_port(address, what=flag, listen=True)
    except ValueError as exc:
        raise ConfigurationError("bad_address", printable(str(exc))) from None


def join_address(host: str, port: int) -> str:
    """The inverse of :func:`split_address`."""
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class AddressClaim:
    """Holds ``{flag: address}`` (port 0 and ``off`` excluded by the caller) against every
    other process; raises :class:`ConfigurationError` naming the address and its holder."""

    def __init__(self, addresses: Mapping[str, str]) -> None:
        self._addresses = dict(addresses)
        self._locks: dict[str, socket.socket] = {}
        self._flags: dict[str, str] = {}

    def __enter__(self) -> AddressClaim:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            for flag, address in self._addresses.items():
                self._claim(flag, address)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        for lock in self._locks.values():
            lock.close()
        self._locks.clear()
        self._flags.clear()

    def _claim(self, flag: str, address: str) -> None:
        host, port = split_address(address, flag)
        for family, sockaddr in _resolve(flag, address, host, port):
            self._lock(flag, address, sockaddr)
            error = _probe(family, sockaddr)
            if error is not None:
                raise _unavailable(flag, address, sockaddr, error)

    def _lock(self, flag: str, address: str, sockaddr: SocketAddress) -> None:
        name = f"{_LOCK_PREFIX}{join_address(sockaddr[0], sockaddr[1])}"
        if name in self._flags:
            raise ConfigurationError(
                "address_in_use",
                f"{flag} {printable(address)} is also {self._flags[name]}: each needs its own port",
            )
        self._flags[name] = f"{flag} {printable(address)}"
        if sys.platform != "linux":  # no abstract socket names: the probe alone decides
            return
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lock.bind(f"\0{name}")
        except OSError:
            lock.close()
            holder = unix_socket_holder(name)
            raise ConfigurationError(
                "address_in_use",
                f"{flag} {printable(address)} is already in use by "
                f"{f'{holder}, ' if holder else ''}another meshca ca serve "
                "(only the workers of one server share a port)",
            ) from None
        self._locks[name] = lock


def bind_failure(flag: str, address: str, detail: str) -> ConfigurationError:
    """The error for ``address`` that gRPC or the HTTP server could not bind: why, when a probe
    can tell (in use, and by whom); else ``detail``."""
    host, port = split_address(address, flag)
    for family, sockaddr in _resolve(flag, address, host, port):
        error = _probe(family, sockaddr)
        if error is not None:
            return _unavailable(flag, address, sockaddr, error)
    return ConfigurationError(
        "address_unavailable", f"cannot listen on {flag} {printable(address)}: {printable(detail)}"
    )


def _resolve(flag: str, address: str, host: str, port: int) -> list[tuple[int, SocketAddress]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigurationError(
            "address_unavailable", f"cannot listen on {flag} {printable(address)}: {exc.strerror}"
        ) from None
    unique: dict[SocketAddress, int] = {}
    for family, _, _, _, sockaddr in infos:
        unique.setdefault(tuple(sockaddr), family)
    return [(family, sockaddr) for sockaddr, family in unique.items()]


def _probe(family: int, sockaddr: SocketAddress) -> OSError | None:
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as error:
            return error
    return None


def _unavailable(
    flag: str, address: str, sockaddr: SocketAddress, error: OSError
) -> ConfigurationError:
    shown = f"{flag} {printable(address)}"
    if error.errno != errno.EADDRINUSE:
        return ConfigurationError(
            "address_unavailable", f"cannot listen on {shown}: {error.strerror}"
        )
    holder = tcp_listener(sockaddr[0], sockaddr[1])
    return ConfigurationError(
        "address_in_use", f"{shown} is already in use by {holder or 'another process'}"
    )
