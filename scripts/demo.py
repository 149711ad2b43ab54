"""``make demo``: a whole meshca mesh on one machine, from nothing, in a few seconds.

What it runs, every piece a real process on 127.0.0.1 and in a throwaway directory (the
user's ``./meshca.db`` and ``.meshca-dev/`` are never touched; every port is a free one):

1. ``meshca ca serve`` on a fresh embedded SQLite database, trusting service-account tokens
   signed by a local dev key (``meshca dev signing-key``);
2. tokens for ``shop/frontend`` and ``shop/payments`` (``meshca dev token``);
3. one ``meshca agent`` per service account, verifying the CA with ``meshca root bundle``;
4. one Envoy per agent, fed over SDS on the agent's unix socket, doing mTLS to the other Envoy
   and accepting only the other's SPIFFE ID (the Envoy harness of ``tests/envoy/harness.py``);
5. requests both ways, printed as a table (who called whom, the peer SPIFFE ID and serial the
   receiving Envoy saw, each Envoy's own leaf from its ``/certs``), then a third identity,
   ``shop/intruder``, whose requests to payments are refused in the TLS handshake;
6. everything stopped (Envoys, then agents, then the CA, by SIGTERM), also on Ctrl-C or a
   failure, which ends with the failing component's log tail and a non-zero exit status.

Run from the repository root: ``make demo`` (or ``.venv/bin/python scripts/demo.py``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

# The Envoy harness lives in tests/ (not part of the wheel): import it from the repository.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.envoy.harness import (
    EnvoyConfig,
    EnvoyError,
    EnvoyPair,
    EnvoyProcess,
    SdsSource,
    normalise_serial,
)
from tests.processes import free_port, stop_process

HOST = "127.0.0.1"
TRUST_DOMAIN = "cluster.local"
NAMESPACE = "shop"
CLIENT, SERVER, INTRUDER = "frontend", "payments", "intruder"
READY_TIMEOUT = 20.0
ROUNDS = 2
PORT_ATTEMPTS = 3
MESHCA = str(Path(sys.executable).parent / "meshca")


class DemoError(Exception):
    """A step failed; the message names the step and carries the relevant log tail."""


def spiffe_id(service_account: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{service_account}"


def say(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- processes


@dataclass(slots=True)
class Component:
    """A meshca process we started (its own process group, so that Ctrl-C reaches only the
    demo, which then stops its children in order), logging to ``log_path``."""

    name: str
    log_path: Path
    process: subprocess.Popen[bytes]

    @classmethod
    def launch(cls, name: str, argv: Sequence[str], workdir: Path) -> Component:
        log_path = workdir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                process_group=0,
            )
        return cls(name, log_path, process)

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) or "<empty log>"

    def fail(self, message: str) -> DemoError:
        code = self.process.poll()
        status = "running" if code is None else f"exited with status {code}"
        return DemoError(
            f"{self.name} ({status}): {message}\n--- {self.log_path} (tail) ---\n{self.tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; report how it ended."""
        if not stop_process(self.process, timeout):
            say(f"   {self.name}: did not stop within {timeout:.0f}s, killed")
            return
        say(f"   {self.name}: stopped (exit status {self.process.returncode})")


def run_cli(*args: str) -> str:
    """Run ``meshca ARGS`` to completion; its stdout, or :class:`DemoError` with its stderr."""
    result = subprocess.run(
        [MESHCA, *args], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise DemoError(
            f"`meshca {' '.join(args)}` exited with {result.returncode}:\n{result.stderr.strip()}"
        )
    return result.stdout


def http_get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace").strip()
    finally:
        connection.close()


def wait_ready(component: Component, port: int, timeout: float = READY_TIMEOUT) -> str:
    """Poll ``/readyz`` on ``port`` until it answers 200; return its body. Fail with the log
    tail if the process exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    detail = "no answer yet"
    while time.monotonic() < deadline:
        if component.process.poll() is not None:
            raise component.fail("exited before it was ready")
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, detail = http_get(port, "/readyz")
            if status == 200:
                return detail
        time.sleep(0.1)
    raise component.fail(f"/readyz not ready after {timeout:.0f}s (last answer: {detail})")


# --------------------------------------------------------------------------- the CA


@dataclass(frozen=True, slots=True)
class Ca:
    """The running CA and what a client needs to reach it."""

    component: Component
    address: str
    mtls_address: str
    root_pem: Path
    signing_key: Path


def db_flags(workdir: Path) -> list[str]:
    return ["--db", f"sqlite:///{workdir / 'meshca.db'}", "--kek-file", str(workdir / "ca.kek")]


def start_ca(workdir: Path, stack: contextlib.ExitStack) -> Ca:
    dev_dir = workdir / "dev"
    public_key = Path(run_cli("dev", "signing-key", "--dir", str(dev_dir)).strip())
    address, mtls_address = f"{HOST}:{free_port()}", f"{HOST}:{free_port()}"
    metrics_port = free_port()
    argv = [
        MESHCA,
        "ca",
        "serve",
        *db_flags(workdir),
        "--listen",
        address,
        "--mtls-listen",
        mtls_address,
        "--metrics-listen",
        f"{HOST}:{metrics_port}",
        "--workers",
        "1",
        "--jwt-issuer",
        "meshca-dev",
        "--jwt-public-key",
        str(public_key),
    ]
    component = Component.launch("ca", argv, workdir)
    stack.callback(component.stop)
    detail = wait_ready(component, metrics_port)
    root_pem = workdir / "root.pem"
    root_pem.write_text(run_cli("root", "bundle", *db_flags(workdir)))
    say(f"   CA on {address} (mTLS renewal on {mtls_address}): {detail}")
    return Ca(component, address, mtls_address, root_pem, dev_dir / "sa-signer.key.pem")


# --------------------------------------------------------------------------- agents


@dataclass(frozen=True, slots=True)
class Agent:
    """A running ``meshca agent`` for one service account."""

    service_account: str
    component: Component
    sds_socket: Path
    metrics_port: int

    @property
    def spiffe_id(self) -> str:
        return spiffe_id(self.service_account)


def mint_token(ca: Ca, service_account: str, workdir: Path) -> Path:
    token = run_cli(
        "dev",
        "token",
        "--key",
        str(ca.signing_key),
        "--namespace",
        NAMESPACE,
        "--service-account",
        service_account,
        "--ttl",
        "1h",
    )
    path = workdir / f"{service_account}.token"
    path.write_text(token.strip())
    return path


def start_agent(ca: Ca, service_account: str, workdir: Path, stack: contextlib.ExitStack) -> Agent:
    """Mint the service account's token and start its agent (not waiting for it)."""
    token_file = mint_token(ca, service_account, workdir)
    sds_socket = workdir / f"{service_account}.sds.sock"
    metrics_port = free_port()
    argv = [
        MESHCA,
        "agent",
        "--ca-address",
        ca.address,
        "--ca-mtls-address",
        ca.mtls_address,
        "--ca-root",
        str(ca.root_pem),
        "--token-file",
        str(token_file),
        "--sds-socket",
        str(sds_socket),
        "--workload-api-socket",
        str(workdir / f"{service_account}.wl.sock"),
        "--metrics-listen",
        f"{HOST}:{metrics_port}",
        "--ttl",
        "1h",
    ]
    component = Component.launch(f"agent-{service_account}", argv, workdir)
    stack.callback(component.stop)
    return Agent(service_account, component, sds_socket, metrics_port)


def start_agents(
    ca: Ca, service_accounts: Sequence[str], workdir: Path, stack: contextlib.ExitStack
) -> list[Agent]:
    """Start one agent per service account, then wait until each holds its X.509-SVID."""
    agents = [start_agent(ca, account, workdir, stack) for account in service_accounts]
    for agent in agents:
        detail = wait_ready(agent.component, agent.metrics_port)
        say(f"   {agent.component.name}: {detail}")
    return agents


# --------------------------------------------------------------------------- Envoys


def sidecar(agent: Agent, peer: str, inbound_port: int, peer_port: int) -> EnvoyConfig:
    """An Envoy fed by ``agent`` over SDS whose cluster ``peer`` is ``peer_port``; both ways
    (as a server and as a client) it accepts only the SPIFFE ID of service account ``peer``."""
    return EnvoyConfig(
        node_id=agent.service_account,
        secrets=SdsSource(agent.sds_socket),
        inbound_allowed_ids=(spiffe_id(peer),),
        outbound_allowed_ids=(spiffe_id(peer),),
        node_cluster="meshca-demo",
        inbound_port=inbound_port,
        peer_port=peer_port,
    )


def start_sidecar(config: EnvoyConfig, workdir: Path, stack: contextlib.ExitStack) -> EnvoyProcess:
    """Start an Envoy, stopped by ``stack`` (``EnvoyProcess.start`` stops it if it fails)."""
    stack.callback(say, f"   envoy {config.node_id}: stopped")
    return stack.enter_context(EnvoyProcess(config, workdir / "envoy"))


def start_pair(
    client: Agent, server: Agent, workdir: Path, stack: contextlib.ExitStack
) -> EnvoyPair:
    """Envoys for ``client`` and ``server`` wired to each other, retried on fresh ports if a
    pre-allocated port was taken. (Not the harness's ``envoy_pair``: it leaves the first Envoy
    running when the start of the second is interrupted.)"""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port_a, port_b = free_port(), free_port()
        with contextlib.ExitStack() as starting:
            try:
                a = start_sidecar(sidecar(client, SERVER, port_a, port_b), workdir, starting)
                b = start_sidecar(sidecar(server, CLIENT, port_b, port_a), workdir, starting)
            except EnvoyError as error:
                if attempt == PORT_ATTEMPTS or "address already in use" not in str(error).lower():
                    raise
                continue
            stack.enter_context(starting.pop_all())
            return EnvoyPair(a, b)
    raise AssertionError("unreachable")


def leaf_serial(envoy: EnvoyProcess) -> str:
    """The serial of the leaf Envoy presents now, from its admin ``/certs``."""
    return ",".join(sorted(envoy.leaf_serials()))


# --------------------------------------------------------------------------- output


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True))

    lines = [line(headers), line(["-" * width for width in widths]), *map(line, rows)]
    return "\n".join(text.rstrip() for text in lines)


def show_identities(pair: EnvoyPair) -> None:
    rows = []
    for envoy in (pair.a, pair.b):
        certs = envoy.certs()
        leaf = next(ctx.cert_chain[0] for ctx in certs.contexts if ctx.cert_chain)
        rows.append(
            [
                envoy.config.node_id,
                ", ".join(leaf.uri_sans),
                leaf_serial(envoy),
                leaf.expiration_time,
            ]
        )
    say(table(["envoy", "own SPIFFE ID (/certs)", "own leaf serial (/certs)", "expires"], rows))


def call(caller: EnvoyProcess, callee: EnvoyProcess) -> list[str]:
    """One request from ``caller``'s outbound listener to ``callee``; the table row. The serial
    the callee saw must be the one ``caller``'s ``/certs`` shows."""
    response = caller.request("/")
    if response.status != 200:
        raise DemoError(
            f"{caller.config.node_id} -> {callee.config.node_id} answered {response.status}: "
            f"{response.body[:300]!r}\n--- {caller.log_path} (tail) ---\n{caller.log_tail(15)}"
        )
    seen_id = response.headers.get("x-peer-spiffe-id", "")
    seen_serial = normalise_serial(response.headers.get("x-peer-serial", "0"))
    own = caller.leaf_serials()
    if seen_id != spiffe_id(caller.config.node_id) or seen_serial not in own:
        raise DemoError(
            f"{callee.config.node_id} saw {seen_id} serial {seen_serial}, but "
            f"{caller.config.node_id} presents {sorted(own)}"
        )
    return [
        f"{caller.config.node_id} -> {response.headers.get('x-served-by', '?')}",
        str(response.status),
        seen_id,
        seen_serial,
        "yes",
    ]


def show_requests(pair: EnvoyPair) -> None:
    rows = []
    for _ in range(ROUNDS):
        rows.append(call(pair.a, pair.b))
        rows.append(call(pair.b, pair.a))
    headers = [
        "caller -> callee",
        "HTTP",
        "callee saw peer SPIFFE ID",
        "callee saw peer serial",
        "= caller's leaf",
    ]
    say(table(headers, rows))


# --------------------------------------------------------------------------- the intruder


def san_rejections(envoy: EnvoyProcess) -> int:
    """Client certificates ``envoy``'s inbound listener refused for their SAN."""
    stats = envoy.stats(r"^listener\.inbound\.ssl\.fail_verify_san$")
    return sum(stats.values())


def show_intruder(
    agent: Agent, target: EnvoyProcess, workdir: Path, stack: contextlib.ExitStack
) -> None:
    """An Envoy for ``agent`` (not on ``target``'s allow-list) calls ``target``: refused."""
    before = san_rejections(target)
    config = sidecar(agent, target.config.node_id, free_port(), target.inbound_port)
    intruder = start_sidecar(config, workdir, stack)
    intruder.wait_listeners_ready(READY_TIMEOUT)
    response = intruder.request("/")
    refused = san_rejections(target) - before
    if response.status == 200 or refused < 1:
        raise DemoError(
            f"{agent.spiffe_id} reached {target.config.node_id} (HTTP {response.status}, "
            f"{refused} SAN rejections): the allow-list did not hold"
        )
    reason = response.body.decode(errors="replace").strip()[:100]
    say(f"   {agent.service_account} -> {target.config.node_id}: HTTP {response.status} ({reason})")
    say(
        f"   {target.config.node_id} refused the client certificate of "
        f"{agent.spiffe_id} (listener.inbound.ssl.fail_verify_san +{refused})"
    )


def show_ledger(workdir: Path) -> None:
    """What the CA's ledger recorded for the namespace (``meshca audit certs``)."""
    say(f"==> the CA's ledger (meshca audit certs --namespace {NAMESPACE})")
    output = run_cli(
        "audit", "certs", "--namespace", NAMESPACE, "--format", "json", *db_flags(workdir)
    )
    rows = [[row["serial"], row["spiffe_id"], row["not_after"]] for row in json.loads(output)]
    say(table(["serial", "SPIFFE ID", "not after"], rows))


# --------------------------------------------------------------------------- main


def tour(workdir: Path, stack: contextlib.ExitStack) -> None:
    """Start everything (stopped by ``stack``) and show what happens."""
    say(f"==> starting the CA (embedded SQLite in {workdir})")
    ca = start_ca(workdir, stack)
    say(f"==> starting one agent per service account: {CLIENT}, {SERVER}, {INTRUDER}")
    client, server, intruder = start_agents(ca, [CLIENT, SERVER, INTRUDER], workdir, stack)
    say(f"==> starting Envoys for {CLIENT} and {SERVER}, each accepting only the other")
    pair = start_pair(client, server, workdir, stack)
    pair.wait_listeners_ready(READY_TIMEOUT)
    say("\n==> each Envoy's own certificate (admin /certs), delivered by its agent over SDS")
    show_identities(pair)
    say("\n==> requests through the mesh (plain HTTP in, mTLS between the Envoys)")
    show_requests(pair)
    say(f"\n==> an Envoy for {NAMESPACE}/{INTRUDER} calls {SERVER}")
    show_intruder(intruder, pair.b, workdir, stack)
    say("")
    show_ledger(workdir)
    say("")


def run(workdir: Path) -> None:
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        try:
            tour(workdir, stack)
        finally:
            say("==> stopping everything")
    say(f"==> demo finished in {time.monotonic() - started:.1f}s")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    if not Path(MESHCA).exists():
        say(f"demo: no meshca next to {sys.executable}; run it with `make demo`")
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="meshca-demo-"))
    try:
        run(workdir)
    except KeyboardInterrupt:
        say(f"\ndemo interrupted; everything is stopped (logs kept in {workdir})")
        return 130
    except (DemoError, EnvoyError) as error:
        say(f"\ndemo FAILED: {error}\n\n(all logs kept in {workdir})")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
