"""``meshca root activate`` reports the reissue window the servers send agents, read from the
database where each ``meshca ca serve`` records it at start-up, not the CLI's own setting."""

from __future__ import annotations

import re
import socket
from datetime import timedelta

from tests.replicas.harness import BundleStream, Deployment

NEXT_STEP = (
    "; watch `meshca root status` until the old authority's IN_USE is 0, then `meshca root retire`"
)


def next_line(stdout: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.startswith("next: ")]
    return line


def test_root_activate_prints_the_window_the_servers_use(sqlite_deployment: Deployment) -> None:
    deployment = sqlite_deployment
    deployment.admin("ca", "init")
    deployment.admin("root", "prepare")

    # No server has started on this database: the CLI says so, and gives its own setting.
    assert next_line(deployment.admin("root", "activate").stdout) == (
        "next: agents re-issue within the reissue window, 5m (no `meshca ca serve` has recorded "
        f"the window it uses: this is the reissue_window setting here){NEXT_STEP}"
    )

    replica = deployment.start("a", env={"MESHCA_REISSUE_WINDOW": "7s"})
    replica.wait_ready()
    stream = BundleStream(replica, deployment.root_pem(), deployment.token())
    try:
        sent = stream.first().message.reissue_window.ToTimedelta()
    finally:
        stream.close()
    assert sent == timedelta(seconds=7)

    deployment.admin("root", "prepare")
    line = next_line(deployment.admin("root", "activate").stdout)

    # The same window the server sends its agents, which server started with it, and when.
    server = re.escape(f"meshca-server {socket.gethostname()} pid {replica.process.pid}")
    assert re.fullmatch(
        r"next: agents re-issue within the reissue window, 7s \(what `meshca ca serve` uses, "
        rf"from the database: {server} started with it at \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)"
        + re.escape(NEXT_STEP),
        line,
    ), line
    assert replica.terminate() == 0, replica.describe()
