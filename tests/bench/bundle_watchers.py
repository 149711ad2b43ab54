"""Load process for ``bench_agent.py``: many concurrent ``WatchBundle`` streams to one CA, opened
with grpc.aio over a handful of TLS channels, in a process of its own (started with the
multiprocessing ``spawn`` method, driven over a pipe). All streams are opened at once, as after
a CA restart; an open the server refuses (gRPC's pending-call limit cancels bursts) is retried
with jittered back-off like the agent's BundleWatch, and counted.

Protocol on the pipe (dicts): the child sends ``ready`` once every stream has received its first
bundle (or the open deadline passed), with the counts and the sequence seen; the parent then
changes the CA's bundle and sends ``go``; the child sends ``done`` with, for every stream that
saw a newer sequence, the ``time.time()`` at which it arrived, once all have (or the deadline);
every stream stays open until the parent sends ``stop``.
"""

from __future__ import annotations

import asyncio
import math
import random
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import grpc

from ca.api import methods

_OPEN_DEADLINE = 120.0


@dataclass
class _State:
    first: int = 0
    first_sequences: Counter[int] = field(default_factory=Counter)
    base: int | None = None
    updated: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)  # open attempts refused, retried
    refusal_samples: list[str] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    all_first: asyncio.Event = field(default_factory=asyncio.Event)
    go: asyncio.Event = field(default_factory=asyncio.Event)
    all_updated: asyncio.Event = field(default_factory=asyncio.Event)
    finish: asyncio.Event = field(default_factory=asyncio.Event)
    total: int = 0


def raise_nofile(wanted: int) -> int:
    """Raise the soft open-file limit towards ``wanted`` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _open(
    call: grpc.aio.UnaryStreamMultiCallable[methods.WatchBundleRequest, methods.TrustBundleMessage],
    metadata: tuple[tuple[str, str], ...],
    state: _State,
) -> tuple[Any, methods.TrustBundleMessage] | None:
    """Open one stream and read its first bundle, retrying refusals with jittered exponential
    back-off (0.2 s doubling to 5 s) as the agent's BundleWatch does."""
    delay = 0.2
    while True:
        stream = call(methods.WatchBundleRequest(), metadata=metadata)
        try:
            message = await stream.read()
        except grpc.aio.AioRpcError as error:
            state.refused[error.code().name] += 1
            if len(state.refusal_samples) < 3:
                state.refusal_samples.append(f"{error.code().name}: {error.details()}")
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)
            continue
        if message is grpc.aio.EOF:
            state.errors["EOF before first message"] += 1
            return None
        return stream, message


async def _stream(
    index: int,
    call: grpc.aio.UnaryStreamMultiCallable[methods.WatchBundleRequest, methods.TrustBundleMessage],
    token: str,
    state: _State,
) -> None:
    metadata = (("authorization", f"Bearer {token}"),)
    opened = await _open(call, metadata, state)
    if opened is None:
        return
    stream, message = opened
    try:
        state.first += 1
        state.first_sequences[message.sequence] += 1
        if state.first == state.total:
            state.all_first.set()
        await state.go.wait()
        assert state.base is not None
        while True:
            message = await stream.read()
            if message is grpc.aio.EOF:
                state.errors["EOF before the change"] += 1
                return
            if message.sequence > state.base:
                state.updated.append(time.time())
                if len(state.updated) == state.total:
                    state.all_updated.set()
                break
        await state.finish.wait()  # keep the stream open until the parent has read the CA
        stream.cancel()
    except grpc.aio.AioRpcError as error:
        state.errors[error.code().name] += 1
        if len(state.error_samples) < 5:
            state.error_samples.append(f"stream {index}: {error.code().name}: {error.details()}")


async def _main(
    conn: Connection, target: str, root_pem: bytes, tokens: list[str], streams: int, per: int
) -> None:
    loop = asyncio.get_running_loop()
    state = _State(total=streams)
    credentials = grpc.ssl_channel_credentials(root_certificates=root_pem)
    count = math.ceil(streams / per)
    channels = [
        grpc.aio.secure_channel(
            target, credentials, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(count)
    ]
    started = time.perf_counter()
    await asyncio.gather(*(c.channel_ready() for c in channels))
    calls = [methods.watch_bundle_aio(c) for c in channels]
    tasks = [
        asyncio.create_task(_stream(i, calls[i // per], tokens[i % len(tokens)], state))
        for i in range(streams)
    ]
    try:
        async with asyncio.timeout(_OPEN_DEADLINE):
            await state.all_first.wait()
    except TimeoutError:
        pass
    opened = time.perf_counter() - started
    sequences = dict(state.first_sequences)
    conn.send(
        {
            "event": "ready",
            "first": state.first,
            "open_seconds": opened,
            "channels": count,
            "sequences": sequences,
            "errors": dict(state.errors),
            "error_samples": state.error_samples,
            "refused": dict(state.refused),
            "refusal_samples": state.refusal_samples,
        }
    )
    order: dict[str, Any] = await loop.run_in_executor(None, conn.recv)
    if order.get("event") != "go":
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.close(None) for c in channels))
        return
    state.base = max(sequences) if sequences else 0
    state.total = state.first  # only streams that are open can be updated
    if len(state.updated) >= state.total:
        state.all_updated.set()
    state.go.set()
    try:
        async with asyncio.timeout(float(order["timeout"])):
            await state.all_updated.wait()
    except TimeoutError:
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF)
    conn.send(
        {
            "event": "done",
            "updated": list(state.updated),
            "expected": state.total,
            "errors": dict(state.errors),
            "error_samples": state.error_samples,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "max_rss_mib": usage.ru_maxrss / 1024,
        }
    )
    await loop.run_in_executor(None, conn.recv)  # "stop": streams stay open until then
    state.finish.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(c.close(None) for c in channels))


def run(
    conn: Connection, target: str, root_pem: bytes, tokens: list[str], streams: int, per: int
) -> None:
    """Entry point of the load process."""
    raise_nofile(streams + 4096)
    try:
        asyncio.run(_main(conn, target, root_pem, tokens, streams, per))
    except Exception as error:  # report, never hang the parent
        conn.send({"event": "error", "error": repr(error)})
        raise
    finally:
        conn.close()
