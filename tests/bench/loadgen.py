"""Load generator for ``meshca ca serve``: N concurrent callers calling CreateCertificate over
gRPC with TLS, one asyncio event loop, in a process of its own.

Each caller is a distinct workload (service account ``bench/sa-<i>``, its own pod UID) with its
own projected service-account token, and sends a FRESH CSR per request: a new EC P-256 key and a
CSR naming the caller's SPIFFE ID, as an Istio agent does. Keys and CSRs are generated before the
timed window (never reused), so that the client's key generation does not compete with the server
for the same cores; the window ends early if a caller runs out of CSRs (reported).

Callers call back to back (closed loop: latency is then set by throughput, Little's law), or
with ``--rate`` on a fixed schedule (at most one call in flight per caller), latency counted
from the scheduled time. Callers share channels (``--callers-per-channel``); every channel is
its own TCP connection (a local subchannel pool), so the server's SO_REUSEPORT workers each get
a share of them.

Used by ``bench_grpc.py``, which reads the JSON lines this prints on stdout: ``ready`` (pool
generated, channels connected), ``window_start``, ``window_end`` and ``result``. It can also be
run by hand against any server (``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ca.api import methods
from ca.core.keys import key_id
from tests.server.harness import TokenMinter

NAMESPACE = "bench"
TRUST_DOMAIN = "cluster.local"
_CALL_TIMEOUT = 30.0
_MAX_WARMUP_SECONDS = 10.0


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.perf_counter(), **fields}), flush=True)


def spiffe_id(index: int) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/sa-{index}"


def fresh_csr(uri: str) -> str:
    """A CSR for a new P-256 key naming ``uri`` (the key is dropped: only its CSR is sent)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Caller:
    index: int
    token: str
    csrs: list[str]
    tokens: list[str] | None = None  # with --token-per-request: one fresh token per CSR
    checked: bool = False


@dataclass
class Stats:
    phase: str = "warmup"
    ok_total: int = 0
    ok_warmup: int = 0
    window_latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    window_errors: int = 0
    exhausted: int = 0  # callers that ran out of CSRs
    wrong_identity: int = 0
    stop: bool = False


def build_callers(args: argparse.Namespace, minter: TokenMinter) -> list[Caller]:
    rate = min(args.rate * 1.1, args.max_rate) if args.rate else args.max_rate
    per_caller = math.ceil(rate * (args.warmup + args.seconds + 1) / args.concurrency)
    per_caller = max(per_caller, 50)
    callers = []
    for index in range(args.concurrency):
        uri = spiffe_id(index)
        pod_uid = str(uuid.uuid4())
        name = f"sa-{index}"

        def mint(name: str = name, pod_uid: str = pod_uid, index: int = index) -> str:
            return minter.mint(
                NAMESPACE, name, pod_name=f"{name}-pod-{index}", pod_uid=pod_uid,
                lifetime=args.token_lifetime,
            )  # fmt: skip

        csrs = [fresh_csr(uri) for _ in range(per_caller)]
        tokens = [mint() for _ in range(per_caller)] if args.token_per_request else None
        callers.append(Caller(index, mint(), csrs, tokens))
    return callers


def channel_for(target: str, root_pem: bytes) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(root_certificates=root_pem)
    # A local subchannel pool: channels with the same target and arguments would otherwise
    # share one TCP connection, which SO_REUSEPORT hands to a single server worker.
    return grpc.aio.secure_channel(
        target, credentials, options=[("grpc.use_local_subchannel_pool", 1)]
    )


async def run_caller(
    caller: Caller,
    call: grpc.aio.UnaryUnaryMultiCallable[methods.CertificateRequest, methods.CertificateResponse],
    stats: Stats,
    period: float | None,
) -> None:
    """Call in a loop: back to back, or (with ``period``) on a fixed schedule, one call every
    ``period`` seconds. On a schedule, latency counts from the scheduled time, so a late call
    (the previous one took too long) is charged its wait (no coordinated omission)."""
    metadata = (("authorization", f"Bearer {caller.token}"),)
    scheduled = time.perf_counter() + (random.random() * period if period else 0.0)
    while not stats.stop:
        if not caller.csrs:
            stats.exhausted += 1
            return
        csr = caller.csrs.pop()
        if caller.tokens is not None:
            metadata = (("authorization", f"Bearer {caller.tokens.pop()}"),)
        if period is None:
            started = time.perf_counter()
        else:
            started = scheduled
            scheduled += period
            delay = started - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        try:
            response = await call(
                methods.CertificateRequest(csr=csr), metadata=metadata, timeout=_CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as error:
            stats.errors[error.code().name] += 1
            if stats.phase == "window":
                stats.window_errors += 1
            if len(stats.error_samples) < 5:
                stats.error_samples.append(f"{error.code().name}: {error.details()}")
            await asyncio.sleep(0.01)
            continue
        latency = time.perf_counter() - started
        stats.ok_total += 1
        if stats.phase == "window":
            stats.window_latencies.append(latency)
        elif stats.phase == "warmup":
            stats.ok_warmup += 1
        if not caller.checked:  # once per caller, outside the window: the leaf names it
            caller.checked = True
            leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
            uris = leaf.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.UniformResourceIdentifier)
            if uris != [spiffe_id(caller.index)]:
                stats.wrong_identity += 1


async def run(args: argparse.Namespace) -> None:
    key = serialization.load_pem_private_key(args.signing_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    minter = TokenMinter(key=key, issuer=args.issuer, audience=args.audience)
    minter.kid = key_id(key.public_key())
    generated = time.perf_counter()
    callers = build_callers(args, minter)
    generated = time.perf_counter() - generated

    root_pem = args.root_bundle.read_bytes()
    channel_count = math.ceil(args.concurrency / args.callers_per_channel)
    channels = [channel_for(args.target, root_pem) for _ in range(channel_count)]
    await asyncio.gather(*(c.channel_ready() for c in channels))
    calls = [methods.create_certificate_aio(c) for c in channels]
    emit(
        "ready",
        csrs=sum(len(c.csrs) for c in callers),
        generate_seconds=generated,
        channels=channel_count,
    )

    stats = Stats()
    period = args.concurrency / args.rate if args.rate else None
    tasks = [
        asyncio.create_task(run_caller(caller, calls[i % channel_count], stats, period))
        for i, caller in enumerate(callers)
    ]
    warmup_end = time.perf_counter() + args.warmup
    deadline = warmup_end + _MAX_WARMUP_SECONDS
    while time.perf_counter() < deadline and (
        time.perf_counter() < warmup_end or stats.ok_warmup < args.warmup_requests
    ):
        await asyncio.sleep(0.05)

    cpu_before = os.times()
    started = time.perf_counter()
    stats.phase = "window"
    emit("window_start")
    end = started + args.seconds
    while time.perf_counter() < end and stats.exhausted == 0:
        await asyncio.sleep(min(0.05, max(0.0, end - time.perf_counter())))
    stats.phase = "drain"
    elapsed = time.perf_counter() - started
    cpu_after = os.times()
    emit("window_end")

    stats.stop = True
    await asyncio.gather(*tasks)
    await asyncio.gather(*(c.close(None) for c in channels))
    latencies = sorted(stats.window_latencies)
    client_cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    emit(
        "result",
        concurrency=args.concurrency,
        channels=channel_count,
        elapsed=elapsed,
        window_ok=len(latencies),
        window_errors=stats.window_errors,
        ok_total=stats.ok_total,
        errors=dict(stats.errors),
        error_samples=stats.error_samples,
        exhausted=stats.exhausted,
        wrong_identity=stats.wrong_identity,
        client_cpu_seconds=client_cpu,
        p50=percentile(latencies, 0.50),
        p99=percentile(latencies, 0.99),
        max=latencies[-1] if latencies else None,
        mean=sum(latencies) / len(latencies) if latencies else None,
    )


def percentile(ordered: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="host:port, e.g. localhost:15012")
    parser.add_argument("--root-bundle", type=Path, required=True, help="PEM roots to trust")
    parser.add_argument(
        "--signing-key", type=Path, required=True, help="token signing key (meshca dev)"
    )
    parser.add_argument("--issuer", default="meshca-dev")
    parser.add_argument("--audience", default="istio-ca")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--callers-per-channel", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed window")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds (at least)")
    parser.add_argument("--warmup-requests", type=int, default=200, help="warm-up requests")
    parser.add_argument(
        "--max-rate",
        type=float,
        default=4000.0,
        help="certs/s the CSR pool is sized for (the window ends early if it runs out)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        help="offered certs/s, spread evenly over the callers (default: back to back)",
    )
    parser.add_argument(
        "--token-per-request",
        action="store_true",
        help="a new token with every request (no server token-cache hits)",
    )
    args = parser.parse_args(argv)
    args.token_lifetime = timedelta(hours=2)
    return args


if __name__ == "__main__":
    asyncio.run(run(parse_args()))
