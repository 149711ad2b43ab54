"""The operational HTTP endpoints on the metrics port: ``/metrics`` (Prometheus),
``/healthz`` (the process is up) and ``/readyz`` (it can issue)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ca.server.ports import bind_failure, join_address

#: The setting that names this server's address, in its error messages (CA and agent).
METRICS_FLAG = "--metrics-listen"

#: Says whether the server is ready, and why not.
Readiness = Callable[[], tuple[bool, str]]


class OpsServer:
    """A small threaded HTTP server; its handlers only read state. Binding it raises
    :class:`ConfigurationError` when the address is taken (by whom, when /proc can tell)."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, readiness: Readiness
    ) -> None:
        handler = _handler(registry, readiness)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            address = join_address(host, port)
            raise bind_failure(METRICS_FLAG, address, exc.strerror or str(exc)) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="meshca-ops", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(registry: CollectorRegistry, readiness: Readiness) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._reply(200, b"ok\n")
            elif path == "/readyz":
                ready, detail = readiness()
                self._reply(200 if ready else 503, f"{detail}\n".encode())
            else:
                self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes every few seconds would drown the CA's own log lines."""

    return Handler
