"""Every metric README.md lists is exposed on the real ``/metrics`` of ``meshca ca serve`` (with
two workers: multiprocess mode, where a labelled metric is exported only once it has a child) and
of ``meshca agent``. The lists are read from the README, so a renamed, removed or misspelt metric
fails here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ca.api import methods
from ca.runtime import CaRuntime
from ca.settings import Settings
from tests.agent.harness import socket_dir
from tests.factories import make_csr
from tests.meshca_process import MeshcaProcess
from tests.processes import free_port
from tests.server.conftest import wait_until
from tests.server.harness import ISSUER, TokenMinter

README = Path(__file__).resolve().parents[2] / "README.md"
#: A metric in a README code span, with its labels if it lists them: `name{a,b=x|y}`.
METRIC = re.compile(r"`(meshca_[a-z0-9_]+)(?:\{[^}`]*\})?`")
READY_TIMEOUT = 60.0


def readme_metrics() -> tuple[set[str], set[str]]:
    """The metric names README.md lists for the CA and for the agent: every ``meshca_...``
    code span of the paragraphs that document a ``/metrics`` endpoint."""
    paragraphs = README.read_text().split("\n\n")
    names = {m[1] for text in paragraphs if "`/metrics`" in text for m in METRIC.finditer(text)}
    agent = {name for name in names if name.startswith("meshca_agent_")}
    ca = names - agent
    assert len(ca) >= 10, f"found only {sorted(ca)} for the CA in README.md"
    assert len(agent) >= 10, f"found only {sorted(agent)} for the agent in README.md"
    return ca, agent


def exposed(text: str) -> set[str]:
    """The metric names a ``/metrics`` page exposes, as a README names them (counters with
    ``_total``), including families that have no sample yet."""
    return {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in text_string_to_metric_families(text)
    }


@contextmanager
def running(workdir: Path, args: list[str | Path], name: str) -> Iterator[MeshcaProcess]:
    """``meshca *args`` (ending with ``--metrics-listen``), stopped by SIGTERM at the end."""
    metrics_port = free_port()
    process = MeshcaProcess(
        workdir,
        [*args, f"127.0.0.1:{metrics_port}"],
        metrics_port=metrics_port,
        stderr_name=name,
    )
    try:
        yield process
        assert process.terminate() == 0, process.describe()
    finally:
        process.ensure_stopped()


def scrape(process: MeshcaProcess, ready: str) -> str:
    """``/metrics`` once ``ready`` (an operations path) answers 200."""

    def answered() -> bool:
        if process.process.poll() is not None:
            pytest.fail(f"it exited:\n{process.describe()}")
        try:
            return process.http(ready)[0] == 200
        except OSError:
            return False

    wait_until(answered, timeout=READY_TIMEOUT, what=f"{ready} to answer 200")
    status, body = process.http("/metrics")
    assert status == 200, process.describe()
    return body


def test_every_metric_the_readme_lists_is_exposed(tmp_path: Path) -> None:
    ca_metrics, agent_metrics = readme_metrics()
    minter = TokenMinter()
    port = free_port()
    serve: list[str | Path] = [
        "--db", f"sqlite:///{tmp_path / 'meshca.db'}", "--kek-file", tmp_path / "meshca.kek",
        "ca", "serve", "--listen", f"127.0.0.1:{port}", "--mtls-listen", "off",
        "--workers", "2", "--jwt-issuer", ISSUER, "--jwt-public-key", minter.public_pem(tmp_path),
        "--metrics-listen",
    ]  # fmt: skip
    with running(tmp_path, serve, "serve") as server, socket_dir() as sockets:
        scrape(server, "/readyz")
        runtime = CaRuntime(Settings(db_url=f"sqlite:///{tmp_path / 'meshca.db'}"))
        root_pem = runtime.authorities.bundle().pem().encode()
        runtime.engine.dispose()
        # A refusal: the counters labelled by its reason exist from then on.
        with grpc.secure_channel(
            f"localhost:{port}", grpc.ssl_channel_credentials(root_pem)
        ) as channel:
            call = methods.create_certificate(channel)
            with pytest.raises(grpc.RpcError) as refused:
                call(methods.CertificateRequest(csr=make_csr().decode()), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        missing = ca_metrics - exposed(scrape(server, "/readyz"))
        assert not missing, f"README.md lists CA metrics that /metrics lacks: {sorted(missing)}"

        (sockets / "root.pem").write_bytes(root_pem)
        (sockets / "token").write_text(minter.mint("shop", "cart"))
        agent: list[str | Path] = [
            "agent", "--ca-address", f"127.0.0.1:{port}", "--ca-root", sockets / "root.pem",
            "--token-file", sockets / "token", "--sds-socket", sockets / "sds.sock",
            "--metrics-listen",
        ]  # fmt: skip
        with running(sockets, agent, "agent") as agent_process:
            missing = agent_metrics - exposed(scrape(agent_process, "/healthz"))
        assert not missing, f"README.md lists agent metrics that /metrics lacks: {sorted(missing)}"
