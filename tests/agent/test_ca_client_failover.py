"""The agent's CA client fails over between its CA addresses, and says "trying the next address"
only when there is one: a real gRPC server on loopback, and addresses where nothing listens."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import pytest

from ca.api import methods
from ca.core.errors import Unavailable
from sds.ca_client import CaClient, ClientIdentity
from tests.processes import free_port

CHAIN = ["leaf", "intermediate", "root"]
NEXT = "CA call failed; trying the next address"


@asynccontextmanager
async def live_ca() -> AsyncIterator[str]:
    """A CreateCertificate server on loopback (plaintext) that answers every call with CHAIN."""

    async def create(request: Any, context: Any) -> Any:
        return methods.CertificateResponse(cert_chain=CHAIN)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((methods.certificate_service_handler(create),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@dataclass
class Outcome:
    result: list[str] | Unavailable
    moved_on_from: list[str]  # the addresses (by name) the client said it moved on from
    addresses: dict[str, str]


def create_certificate(names: Sequence[str], caplog: pytest.LogCaptureFixture) -> Outcome:
    """CreateCertificate through a client given the addresses ``names`` in order ("live": the
    server above; "dead1", "dead2": loopback ports where nothing listens)."""
    addresses = {"dead1": f"127.0.0.1:{free_port()}", "dead2": f"127.0.0.1:{free_port()}"}

    async def call() -> list[str] | Unavailable:
        async with live_ca() as live:
            addresses["live"] = live
            client = CaClient(
                [addresses[name] for name in names], [], lambda: b"", plaintext=True,
                timeout=timedelta(seconds=10),
            )  # fmt: skip
            try:
                return await client.create_certificate(
                    b"csr", timedelta(hours=1), ClientIdentity(token="token")
                )
            except Unavailable as error:
                return error

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sds.ca_client"):
        result = asyncio.run(call())
    names_of = {address: name for name, address in addresses.items()}
    moved_on = [names_of[r.__dict__["address"]] for r in caplog.records if r.message == NEXT]
    return Outcome(result, moved_on, addresses)


def test_an_unreachable_address_is_followed_by_the_next(caplog: pytest.LogCaptureFixture) -> None:
    outcome = create_certificate(["dead1", "live"], caplog)

    assert outcome.result == CHAIN
    assert outcome.moved_on_from == ["dead1"]


def test_a_first_address_that_answers_moves_on_from_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcome = create_certificate(["live", "dead1"], caplog)

    assert outcome.result == CHAIN
    assert outcome.moved_on_from == []


@pytest.mark.parametrize(
    ("names", "moved_on_from"),
    [(["dead1"], []), (["dead1", "dead2"], ["dead1"])],
    ids=["only-address", "two-addresses"],
)
def test_no_next_address_is_announced_after_the_last_one(
    caplog: pytest.LogCaptureFixture, names: list[str], moved_on_from: list[str]
) -> None:
    outcome = create_certificate(names, caplog)

    # The caller gets the last address's error (and logs it); no "next address" follows it.
    assert isinstance(outcome.result, Unavailable)
    assert outcome.result.message.startswith(f"CA {outcome.addresses[names[-1]]}: ")
    assert outcome.moved_on_from == moved_on_from
