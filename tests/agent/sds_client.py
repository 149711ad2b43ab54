"""A test client of the agent's SDS socket that behaves like Envoy on the wire: it opens
``StreamSecrets`` or ``DeltaSecrets`` and sends requests when told, while a thread collects
responses so the test can wait for each with a deadline."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from sds.api import xds

DEADLINE = 10.0
_CLOSE = object()


class SdsStream:
    """One bidirectional SDS stream."""

    def __init__(self, target: str, *, delta: bool = False) -> None:
        self.channel = grpc.insecure_channel(target)
        request_type = xds.DeltaDiscoveryRequest if delta else xds.DiscoveryRequest
        response_type = xds.DeltaDiscoveryResponse if delta else xds.DiscoveryResponse
        method = self.channel.stream_stream(
            xds.DELTA_SECRETS if delta else xds.STREAM_SECRETS,
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        self._requests: queue.Queue[Any] = queue.Queue()
        self._responses: queue.Queue[Any] = queue.Queue()
        self._call = method(self._request_iterator())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def send(self, request: Any) -> None:
        self._requests.put(request)

    def next(self, timeout: float = DEADLINE) -> Any:
        """The next response; fails the test after ``timeout`` seconds."""
        try:
            item = self._responses.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no SDS response within {timeout}s")
        if isinstance(item, grpc.RpcError):
            raise item
        return item

    def error(self, timeout: float = DEADLINE) -> grpc.RpcError:
        """The status the stream ended with."""
        try:
            item = self._responses.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the SDS stream did not end within {timeout}s")
        assert isinstance(item, grpc.RpcError), f"expected an error, got {item}"
        return item

    def pending(self) -> int:
        """Responses received and not yet read."""
        return self._responses.qsize()

    def close(self) -> None:
        self._requests.put(_CLOSE)
        self._call.cancel()
        self._reader.join(DEADLINE)
        self.channel.close()

    def _request_iterator(self) -> Iterator[Any]:
        while True:
            item = self._requests.get()
            if item is _CLOSE:
                return
            yield item

    def _read(self) -> None:
        try:
            for response in self._call:
                self._responses.put(response)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self._responses.put(error)


def sotw_request(
    *names: str, nonce: str = "", version: str = "", error: str | None = None, node: str = ""
) -> Any:
    message = xds.DiscoveryRequest(
        resource_names=list(names),
        response_nonce=nonce,
        version_info=version,
        type_url=xds.SECRET_TYPE_URL,
    )
    if node:
        message.node.id = node
        message.node.cluster = "test"
    if error is not None:
        message.error_detail.message = error
    return message


def unpack_secrets(response: Any) -> dict[str, Any]:
    """name -> Secret of a (state-of-the-world or delta) response."""
    out: dict[str, Any] = {}
    for item in response.resources:
        packed = item.resource if hasattr(item, "resource") else item
        secret = xds.Secret()
        assert packed.Unpack(secret)
        out[secret.name] = secret
    return out


def fetch_secrets(target: str, *names: str) -> Any:
    with grpc.insecure_channel(target) as channel:
        fetch = channel.unary_unary(
            xds.FETCH_SECRETS,
            request_serializer=xds.DiscoveryRequest.SerializeToString,
            response_deserializer=xds.DiscoveryResponse.FromString,
        )
        return fetch(sotw_request(*names), timeout=DEADLINE)
