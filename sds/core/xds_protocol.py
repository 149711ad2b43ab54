"""The xDS protocol of one SDS stream, state-of-the-world and incremental (delta), as pure state
machines: the gRPC handlers feed them requests and credential changes and send what they return.

State of the world (``StreamSecrets``):
- every response carries a version (a digest of its content) and a fresh nonce;
- a request whose ``response_nonce`` is not the last one sent is stale and ignored;
- an ACK (the last nonce, no ``error_detail``) changes nothing unless the names changed;
- a NACK (``error_detail``) is recorded, and that content is never sent again on this stream;
- a change of subscribed names is answered with the new set;
- a credential change is pushed when it changes what this stream subscribed to.

Incremental (``DeltaSecrets``): resources are versioned one by one; the client says which it has
(``initial_resource_versions``) and subscribes or unsubscribes names; a response carries only what
changed, and names the agent does not serve come back in ``removed_resources``.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sds.api import xds
from sds.core import secrets
from sds.core.credentials import Credentials


class Outcome(enum.Enum):
    """What a request was, for logs and metrics."""

    INITIAL = "initial"
    ACK = "ack"
    NACK = "nack"
    STALE = "stale"
    SUBSCRIBE = "subscribe"


class UnknownResources(Exception):
    """The client asked for names the agent does not serve."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        super().__init__(
            "unknown secret name(s): "
            + ", ".join(self.names)
            + f" (served: {secrets.DEFAULT}, {secrets.ROOTCA}, {secrets.ALL}, "
            "the workload's SPIFFE ID and spiffe://<trust-domain>)"
        )


_nonces = itertools.count(1)
_MAX_IN_FLIGHT = 16


def _next_nonce() -> str:
    return format(next(_nonces), "x")


@dataclass(slots=True)
class SotwStream:
    """One ``StreamSecrets`` stream."""

    node: Any = None
    names: tuple[str, ...] = ()
    last_nonce: str | None = None
    sent_version: str | None = None
    nacked_versions: set[str] = field(default_factory=set)
    nacked_nonce: str | None = None
    nack_detail: str | None = None

    def on_request(self, request: Any) -> Outcome:
        """Take in a request; the caller then asks :meth:`respond` whether to answer."""
        if self.node is None and request.HasField("node"):
            self.node = request.node
        nonce = request.response_nonce
        if nonce and nonce != self.last_nonce:
            return Outcome.STALE
        names = tuple(dict.fromkeys(request.resource_names))
        if nonce and request.HasField("error_detail"):
            if nonce == self.nacked_nonce:
                return Outcome.STALE  # the same NACK again
            self.nacked_nonce = nonce
            if self.sent_version is not None:
                self.nacked_versions.add(self.sent_version)
            self.nack_detail = request.error_detail.message
            self.names = names
            return Outcome.NACK
        changed = names != self.names
        self.names = names
        if not nonce:
            # A new subscription, or a reconnect that already holds ``version_info``.
            self.sent_version = request.version_info or None
            return Outcome.INITIAL
        return Outcome.SUBSCRIBE if changed else Outcome.ACK

    def respond(self, credentials: Credentials, *, force: bool = False) -> Any | None:
        """The response to send now, or ``None`` (nothing new, or not everything is ready yet).

        ``force`` answers even when the content is what was last sent (a changed subscription
        must be answered). Raises :class:`UnknownResources` for names the agent does not serve.
        """
        if not self.names:
            return None  # nothing asked for yet
        resolution = secrets.resolve(self.names, credentials)
        if resolution.unknown:
            raise UnknownResources(resolution.unknown)
        if resolution.waiting:
            return None
        ordered = [resolution.secrets[n] for n in self.names]
        version = secrets.version_of(ordered)
        if version in self.nacked_versions:
            return None
        if version == self.sent_version and not force:
            return None
        self.sent_version = version
        self.last_nonce = _next_nonce()
        return xds.DiscoveryResponse(
            version_info=version,
            resources=[secrets.pack(s) for s in ordered],
            type_url=xds.SECRET_TYPE_URL,
            nonce=self.last_nonce,
        )


@dataclass(slots=True)
class DeltaStream:
    """One ``DeltaSecrets`` stream."""

    node: Any = None
    subscribed: dict[str, None] = field(default_factory=dict)
    client_versions: dict[str, str] = field(default_factory=dict)
    nacked: dict[str, set[str]] = field(default_factory=dict)
    in_flight: dict[str, dict[str, str]] = field(default_factory=dict)
    told_removed: set[str] = field(default_factory=set)
    nack_detail: str | None = None

    def on_request(self, request: Any) -> Outcome:
        if self.node is None and request.HasField("node"):
            self.node = request.node
        nonce = request.response_nonce
        outcome = Outcome.INITIAL if not nonce else Outcome.ACK
        if nonce:
            sent = self.in_flight.pop(nonce, None)
            if sent is None:
                outcome = Outcome.STALE
            elif request.HasField("error_detail"):
                for name, version in sent.items():
                    self.nacked.setdefault(name, set()).add(version)
                self.nack_detail = request.error_detail.message
                outcome = Outcome.NACK
        else:
            self.client_versions.update(request.initial_resource_versions)
        for name in request.resource_names_unsubscribe:
            self.subscribed.pop(name, None)
            self.client_versions.pop(name, None)
            self.told_removed.discard(name)
        added = [n for n in request.resource_names_subscribe if n not in self.subscribed]
        for name in added:
            self.subscribed[name] = None
        if added and outcome in (Outcome.ACK, Outcome.STALE):
            # Subscription changes count whatever the nonce says.
            outcome = Outcome.SUBSCRIBE
        return outcome

    def respond(self, credentials: Credentials) -> Any | None:
        """Changed and newly subscribed resources (and names that do not exist), or ``None``."""
        resolution = secrets.resolve(self.subscribed, credentials)
        resources: list[Any] = []
        sent: dict[str, str] = {}
        for name, secret in resolution.secrets.items():
            version = secrets.version_of([secret])
            if version == self.client_versions.get(name) or version in self.nacked.get(name, ()):
                continue
            resources.append(
                xds.DeltaResource(name=name, version=version, resource=secrets.pack(secret))
            )
            sent[name] = version
        removed = [n for n in resolution.unknown if n not in self.told_removed]
        if not resources and not removed:
            return None
        self.client_versions.update(sent)
        self.told_removed.update(removed)
        nonce = _next_nonce()
        self.in_flight[nonce] = sent
        while len(self.in_flight) > _MAX_IN_FLIGHT:  # a client that never answers
            del self.in_flight[next(iter(self.in_flight))]
        return xds.DeltaDiscoveryResponse(
            system_version_info=str(credentials.generation),
            resources=resources,
            type_url=xds.SECRET_TYPE_URL,
            removed_resources=removed,
            nonce=nonce,
        )
