"""Real Envoy sidecars for end-to-end mTLS tests.

Topology of one :func:`envoy_pair` (every socket on 127.0.0.1)::

      test client ──HTTP──> A.outbound ──mTLS (cluster "peer")──> B.inbound ──> direct 200
      test client ──HTTP──> B.outbound ──mTLS (cluster "peer")──> A.inbound ──> direct 200

Each Envoy has:

* an **inbound** listener: TLS with a required client certificate; its route answers 200 itself
  and adds ``x-peer-spiffe-id`` / ``x-peer-serial`` (the downstream peer's URI SAN and serial)
  and ``x-served-by`` (its own node id);
* an **outbound** listener: plain HTTP, everything routed to cluster ``peer`` (the other Envoy's
  inbound listener) over mTLS; the response gets ``x-upstream-peer-spiffe-id`` /
* an admin listener on an ephemeral port (learned through ``--admin-address-path``).

Both TLS contexts take their certificate from the secret ``default`` and their trust from a
validation secret (``ROOTCA`` by default, or ``ALL`` / ``spiffe://<trust-domain>``) combined with
an exact URI SAN allow-list. The secrets come either from an SDS server on a unix socket
(:class:`SdsSource`, what the agent tests use) or from ``static_resources.secrets``
(:class:`StaticSecrets`, for the harness's own self-test).

Ports: the admin and outbound listeners bind port 0 and are read back from the admin API; the
inbound port must be known to the peer before it starts, so it is pre-allocated with
:func:`free_port`. Listeners set ``enable_reuse_port: false`` so that a port clash is a bind
error (with SO_REUSEPORT, Envoy's default, two Envoys silently share a port);
:func:`envoy_pair` retries with fresh ports on such an error.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from tests.processes import free_port, stop_process

T = TypeVar("T")

HOST = "127.0.0.1"
INBOUND = "inbound"
OUTBOUND = "outbound"
PEER_CLUSTER = "peer"
SDS_CLUSTER = "sds-grpc"
DEFAULT_TIMEOUT = 10.0
_POLL_INTERVAL = 0.02
_WORKERS_STARTED = "listener_manager.workers_started"

_TLS_SOCKET = "envoy.transport_sockets.tls"
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
_HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HTTP_OPTIONS = "type.googleapis.com/" + _HTTP_OPTIONS_KEY


class EnvoyError(RuntimeError):
    """Envoy failed to start, exited, or a condition did not hold in time (message carries the
    tail of Envoy's log)."""


class SdsApi(StrEnum):
    """The xDS transport for SDS."""

    GRPC = "GRPC"
    DELTA_GRPC = "DELTA_GRPC"


@dataclass(frozen=True, slots=True)
class SdsSource:
    """Secrets fetched from an SDS server listening on the unix socket ``socket_path``.

    ``initial_fetch_timeout`` (seconds; Envoy's default is 15, 0 waits forever) bounds how long
    listeners warm without secrets. The retry back-off (Envoy's default is about 0.5 s to 30 s)
    is short so that Envoy reconnects promptly to a restarted agent, and because Envoy starts
    the peer cluster's SDS streams before cluster ``sds-grpc`` exists: the first attempt always
    fails with "Cluster not available" and, with default back-off, costs ~1 s of start-up."""

    socket_path: Path
    api_type: SdsApi = SdsApi.GRPC
    set_node_on_first_message_only: bool = False
    initial_fetch_timeout: float | None = None
    retry_base_interval: float = 0.05
    retry_max_interval: float = 0.5


@dataclass(frozen=True, slots=True)
class StaticSecrets:
    """Secrets defined in the bootstrap: ``default`` (chain + key, PEM) and the validation
    secret (trusted CA bundle, PEM). ``extra`` adds raw v3 ``Secret`` messages, replacing a
    generated one of the same name (e.g. ``ALL`` with a SPIFFE ``custom_validator_config``)."""

    cert_chain_pem: bytes
    private_key_pem: bytes
    trusted_ca_pem: bytes
    extra: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class EnvoyConfig:
    """One sidecar Envoy. ``inbound_port`` 0 binds an ephemeral port; ``peer_port`` is the
    peer's inbound port (``None``: cluster ``peer`` has no endpoint). Empty allow-lists accept
    any SPIFFE ID the validation secret trusts."""

    node_id: str
    secrets: SdsSource | StaticSecrets
    inbound_allowed_ids: Sequence[str] = ()
    outbound_allowed_ids: Sequence[str] = ()
    node_cluster: str = "meshca-e2e"
    cert_secret_name: str = "default"
    validation_secret_name: str = "ROOTCA"
    inbound_port: int = 0
    peer_port: int | None = None
    fresh_upstream_connections: bool = True
    log_level: str = "warning"


# --------------------------------------------------------------------------- bootstrap


def _envoy_grpc(source: SdsSource) -> dict[str, Any]:
    backoff = {
        "base_interval": f"{source.retry_base_interval}s",
        "max_interval": f"{source.retry_max_interval}s",
    }
    return {"cluster_name": SDS_CLUSTER, "retry_policy": {"retry_back_off": backoff}}


def _sds_config(source: SdsSource) -> dict[str, Any]:
    config: dict[str, Any] = {
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": str(source.api_type),
            "transport_api_version": "V3",
            "set_node_on_first_message_only": source.set_node_on_first_message_only,
            "grpc_services": [{"envoy_grpc": _envoy_grpc(source)}],
        },
    }
    if source.initial_fetch_timeout is not None:
        config["initial_fetch_timeout"] = f"{source.initial_fetch_timeout}s"
    return config


def _secret_ref(name: str, secrets: SdsSource | StaticSecrets) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": name}
    if isinstance(secrets, SdsSource):
        ref["sds_config"] = _sds_config(secrets)
    return ref


def _common_tls(config: EnvoyConfig, allowed_ids: Sequence[str]) -> dict[str, Any]:
    default_validation: dict[str, Any] = {}
    if allowed_ids:
        default_validation["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": spiffe_id}} for spiffe_id in allowed_ids
        ]
    return {
        "tls_certificate_sds_secret_configs": [
            _secret_ref(config.cert_secret_name, config.secrets)
        ],
        "combined_validation_context": {
            "default_validation_context": default_validation,
            "validation_context_sds_secret_config": _secret_ref(
                config.validation_secret_name, config.secrets
            ),
        },
    }


def _header(key: str, value: str) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _hcm(stat_prefix: str, route: dict[str, Any], headers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _HCM,
            "stat_prefix": stat_prefix,
            "route_config": {
                "name": stat_prefix,
                "response_headers_to_add": headers,
                "virtual_hosts": [{"name": stat_prefix, "domains": ["*"], "routes": [route]}],
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}
            ],
        },
    }


def _listener(name: str, port: int, chain: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "stat_prefix": name,
        "enable_reuse_port": False,
        "address": {"socket_address": {"address": HOST, "port_value": port}},
        "filter_chains": [chain],
    }


def _inbound_listener(config: EnvoyConfig) -> dict[str, Any]:
    tls = {
        "@type": _TLS + "DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": _common_tls(config, config.inbound_allowed_ids),
    }
    route = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
    }
    headers = [
        _header("x-peer-spiffe-id", "%DOWNSTREAM_PEER_URI_SAN%"),
        _header("x-peer-serial", "%DOWNSTREAM_PEER_SERIAL%"),
        _header("x-served-by", config.node_id),
    ]
    chain = {
        "transport_socket": {"name": _TLS_SOCKET, "typed_config": tls},
        "filters": [_hcm(INBOUND, route, headers)],
    }
    return _listener(INBOUND, config.inbound_port, chain)


def _outbound_listener(config: EnvoyConfig) -> dict[str, Any]:
    route = {"match": {"prefix": "/"}, "route": {"cluster": PEER_CLUSTER}}
    headers = [
        _header("x-upstream-peer-spiffe-id", "%UPSTREAM_PEER_URI_SAN%"),
        _header("x-outbound-via", config.node_id),
    ]
    return _listener(OUTBOUND, 0, {"filters": [_hcm(OUTBOUND, route, headers)]})


def _endpoints(name: str, addresses: Sequence[dict[str, Any]]) -> dict[str, Any]:
    endpoints = [{"endpoint": {"address": address}} for address in addresses]
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]}


def _peer_cluster(config: EnvoyConfig) -> dict[str, Any]:
    tls: dict[str, Any] = {
        "@type": _TLS + "UpstreamTlsContext",
        "common_tls_context": _common_tls(config, config.outbound_allowed_ids),
    }
    if config.fresh_upstream_connections:
        tls["max_session_keys"] = 0  # no TLS session resumption: every handshake is a full one
    addresses = []
    if config.peer_port is not None:
        addresses.append({"socket_address": {"address": HOST, "port_value": config.peer_port}})
    cluster: dict[str, Any] = {
        "name": PEER_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": _endpoints(PEER_CLUSTER, addresses),
        "transport_socket": {"name": _TLS_SOCKET, "typed_config": tls},
    }
    if config.fresh_upstream_connections:
        # Envoy pools upstream connections independently of the downstream one: without this
        # a request reuses a connection whose TLS handshake predates a certificate rotation.
        cluster["typed_extension_protocol_options"] = {
            _HTTP_OPTIONS_KEY: {
                "@type": _HTTP_OPTIONS,
                "common_http_protocol_options": {"max_requests_per_connection": 1},
                "explicit_http_config": {"http_protocol_options": {}},
            }
        }
    return cluster


def _sds_cluster(source: SdsSource) -> dict[str, Any]:
    return {
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS_KEY: {
                "@type": _HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": _endpoints(SDS_CLUSTER, [{"pipe": {"path": str(source.socket_path)}}]),
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _static_secrets(config: EnvoyConfig, secrets: StaticSecrets) -> list[dict[str, Any]]:
    generated = [
        {
            "name": config.cert_secret_name,
            "tls_certificate": {
                "certificate_chain": {"inline_bytes": _b64(secrets.cert_chain_pem)},
                "private_key": {"inline_bytes": _b64(secrets.private_key_pem)},
            },
        },
        {
            "name": config.validation_secret_name,
            "validation_context": {"trusted_ca": {"inline_bytes": _b64(secrets.trusted_ca_pem)}},
        },
    ]
    overridden = {extra["name"] for extra in secrets.extra}
    kept = [secret for secret in generated if secret["name"] not in overridden]
    return kept + [dict(extra) for extra in secrets.extra]


def bootstrap(config: EnvoyConfig) -> dict[str, Any]:
    """The v3 bootstrap (as a JSON-ready dict) for ``config``."""
    static: dict[str, Any] = {
        "listeners": [_inbound_listener(config), _outbound_listener(config)],
        "clusters": [_peer_cluster(config)],
    }
    if isinstance(config.secrets, SdsSource):
        static["clusters"].append(_sds_cluster(config.secrets))
    else:
        static["secrets"] = _static_secrets(config, config.secrets)
    return {
        "node": {"id": config.node_id, "cluster": config.node_cluster},
        "admin": {"address": {"socket_address": {"address": HOST, "port_value": 0}}},
        "static_resources": static,
    }


def write_bootstrap(config: EnvoyConfig, path: Path) -> Path:
    """Write :func:`bootstrap` of ``config`` to ``path`` (JSON, which Envoy reads as YAML)."""
    path.write_text(json.dumps(bootstrap(config), indent=2))
    return path


def validate_bootstrap(config: EnvoyConfig, path: Path) -> None:
    """Write the bootstrap and check it with ``envoy --mode validate`` (no sockets, no SDS
    server needed); raise :class:`EnvoyError` with Envoy's output if it is refused."""
    write_bootstrap(config, path)
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "--config-path", str(path), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise EnvoyError(f"envoy refused {path}:\n{result.stdout}{result.stderr}")


def spiffe_validator_secret(name: str, bundles: Mapping[str, bytes]) -> dict[str, Any]:
    """A v3 ``Secret`` whose validation context is Envoy's SPIFFE cert validator with one
    trust bundle (PEM) per trust domain name, as the agent's ``ALL`` secret carries it."""
    return {
        "name": name,
        "validation_context": {
            "custom_validator_config": {
                "name": "envoy.tls.cert_validator.spiffe",
                "typed_config": {
                    "@type": _TLS + "SPIFFECertValidatorConfig",
                    "trust_domains": [
                        {"name": domain, "trust_bundle": {"inline_bytes": _b64(bundle)}}
                        for domain, bundle in bundles.items()
                    ],
                },
            }
        },
    }


# --------------------------------------------------------------------------- admin data


def normalise_serial(serial: str | int) -> str:
    """Lower-case hex without leading zeros, as ``format(cert.serial_number, "x")``."""
    value = serial if isinstance(serial, int) else int(serial.replace(":", ""), 16)
    return format(value, "x")


@dataclass(frozen=True, slots=True)
class CertDetails:
    """One certificate as the admin ``/certs`` endpoint describes it."""

    serial: str
    uri_sans: tuple[str, ...]
    dns_sans: tuple[str, ...]
    days_until_expiration: int
    valid_from: str
    expiration_time: str

    def seconds_until_expiration(self) -> float:
        """Seconds from now to ``expiration_time`` (Envoy reports only whole days)."""
        expires = datetime.fromisoformat(self.expiration_time.replace("Z", "+00:00"))
        return (expires - datetime.now(UTC)).total_seconds()

    @classmethod
    def from_admin(cls, data: Mapping[str, Any]) -> CertDetails:
        sans = data.get("subject_alt_names", [])
        return cls(
            serial=normalise_serial(data["serial_number"]),
            uri_sans=tuple(san["uri"] for san in sans if "uri" in san),
            dns_sans=tuple(san["dns"] for san in sans if "dns" in san),
            days_until_expiration=int(data.get("days_until_expiration", 0)),
            valid_from=str(data.get("valid_from", "")),
            expiration_time=str(data.get("expiration_time", "")),
        )


@dataclass(frozen=True, slots=True)
class TlsContextCerts:
    """The certificates of one TLS context: its chain (leaf first) and its CA certs."""

    cert_chain: tuple[CertDetails, ...]
    ca_certs: tuple[CertDetails, ...]


@dataclass(frozen=True, slots=True)
class EnvoyCerts:
    """Everything ``GET /certs`` reports, one entry per TLS context in use."""

    contexts: tuple[TlsContextCerts, ...]

    @classmethod
    def from_admin(cls, data: Mapping[str, Any]) -> EnvoyCerts:
        def details(entries: Sequence[Mapping[str, Any]] | None) -> tuple[CertDetails, ...]:
            return tuple(CertDetails.from_admin(entry) for entry in entries or ())

        return cls(
            tuple(
                TlsContextCerts(details(ctx.get("cert_chain")), details(ctx.get("ca_cert")))
                for ctx in data.get("certificates", [])
            )
        )

    def leaf_serials(self) -> set[str]:
        """Serials of the leaf certificates the TLS contexts present."""
        return {ctx.cert_chain[0].serial for ctx in self.contexts if ctx.cert_chain}

    def trusted_ca_serials(self) -> set[str]:
        """Serials of the CA certificates the TLS contexts trust (the whole bundle; with the
        SPIFFE validator, its trust bundles)."""
        return {ca.serial for ctx in self.contexts for ca in ctx.ca_certs}

    def leaf_uri_sans(self) -> set[str]:
        """URI SANs of the leaves in use."""
        return {
            uri for ctx in self.contexts if ctx.cert_chain for uri in ctx.cert_chain[0].uri_sans
        }


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A response through the outbound listener; header names are lower-case."""

    status: int
    headers: dict[str, str]
    body: bytes


# --------------------------------------------------------------------------- helpers


def envoy_binary() -> str:
    """The ``envoy`` next to the running interpreter (the venv's), else the one on PATH."""
    found = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
    if found is None:
        raise EnvoyError("no envoy binary next to sys.executable or on PATH")
    return found


# --------------------------------------------------------------------------- process


class EnvoyProcess:
    """One running Envoy for ``config``; files (bootstrap, log, admin address) go to
    ``workdir``. Use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(self, config: EnvoyConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.bootstrap_path = workdir / f"{config.node_id}.envoy.json"
        self.log_path = workdir / f"{config.node_id}.envoy.log"
        self._admin_address_path = workdir / f"{config.node_id}.admin-address"
        self._process: subprocess.Popen[bytes] | None = None
        self._admin_port: int | None = None
        self._ports: dict[str, int] = {}

    # lifecycle -----------------------------------------------------------------

    def command(self) -> list[str]:
        """The Envoy command line."""
        return [
            envoy_binary(),
            "--config-path",
            str(self.bootstrap_path),
            "--admin-address-path",
            str(self._admin_address_path),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            self.config.log_level,
            "--service-node",
            self.config.node_id,
            "--service-cluster",
            self.config.node_cluster,
        ]

    def start(self, *, wait_live: bool = True, timeout: float = DEFAULT_TIMEOUT) -> Self:
        """Write the bootstrap, launch Envoy and wait for its admin API (and, by default, for
        ``/ready`` to say LIVE). Raise :class:`EnvoyError` if it exits or times out."""
        if self.running:
            raise EnvoyError(f"envoy {self.config.node_id} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._ports = {}
        write_bootstrap(self.config, self.bootstrap_path)
        self._admin_address_path.unlink(missing_ok=True)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self._admin_port = self.wait_for(self._read_admin_port, "admin address file", timeout)
            if wait_live:
                self.wait_live(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; wait for the exit."""
        if self._process is not None:
            stop_process(self._process, timeout)

    def __enter__(self) -> Self:
        """Start with the defaults unless :meth:`start` was already called."""
        return self if self._process is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id of the Envoy last started (to tell that it was not restarted)."""
        return None if self._process is None else self._process.pid

    # waiting -------------------------------------------------------------------

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of Envoy's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, message: str) -> EnvoyError:
        """An :class:`EnvoyError` about this Envoy with its exit status and log tail."""
        status = "running" if self.running else f"exited with {self._exit_code()}"
        return EnvoyError(
            f"envoy {self.config.node_id} ({status}): {message}\n"
            f"--- log tail ({self.log_path}) ---\n{self.log_tail()}"
        )

    def _exit_code(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def wait_for(
        self, probe: Callable[[], T | None], what: str, timeout: float = DEFAULT_TIMEOUT
    ) -> T:
        """Call ``probe`` until it returns something other than ``None`` or ``False``; raise
        with the log tail if Envoy exits or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            if not self.running:
                raise self.fail(f"exited while waiting for {what}")
            try:
                result = probe()
            except (OSError, http.client.HTTPException, ValueError, KeyError) as error:
                result, last_error = None, error
            if result is not None and result is not False:
                return result
            if time.monotonic() > deadline:
                detail = f" (last error: {last_error!r})" if last_error else ""
                raise self.fail(f"timed out after {timeout}s waiting for {what}{detail}")
            time.sleep(_POLL_INTERVAL)

    def _read_admin_port(self) -> int | None:
        text = self._admin_address_path.read_text().strip()  # FileNotFoundError is an OSError
        return int(text.rsplit(":", 1)[1]) if text else None

    def wait_live(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until ``/ready`` answers 200 LIVE."""
        self.wait_for(lambda: self.admin_get("/ready")[0] == 200, "/ready LIVE", timeout)

    def wait_listeners_ready(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until Envoy is LIVE, its worker runs, and both TLS contexts (inbound listener,
        peer cluster) hold a certificate. With SDS, static listeners keep the server in
        PRE_INITIALIZING until their secrets arrive (or ``initial_fetch_timeout`` passes, in
        which case the contexts stay empty and this keeps waiting)."""

        def ready() -> bool:
            if self.admin_get("/ready")[0] != 200:
                return False
            if self.stats("^listener_manager\\.workers_started$").get(_WORKERS_STARTED) != 1:
                return False
            contexts = self.certs().contexts
            return len(contexts) == 2 and all(ctx.cert_chain for ctx in contexts)

        self.wait_for(ready, "LIVE with certificates in both TLS contexts", timeout)

    def wait_stat(
        self,
        name: str,
        condition: Callable[[int], bool],
        timeout: float = DEFAULT_TIMEOUT,
    ) -> int:
        """Wait until stat ``name`` exists and satisfies ``condition``; return its value."""

        def probe() -> int | None:
            value = self.stats().get(name)
            return value if value is not None and condition(value) else None

        return self.wait_for(probe, f"stat {name} to satisfy the condition", timeout)

    # admin API -----------------------------------------------------------------

    @property
    def admin_port(self) -> int:
        if self._admin_port is None:
            raise EnvoyError(f"envoy {self.config.node_id} was not started")
        return self._admin_port

    def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """``GET path`` on the admin API: status and body."""
        connection = http.client.HTTPConnection(HOST, self.admin_port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            connection.close()

    def admin_json(self, path: str) -> Any:
        """``GET path`` on the admin API, which must answer 200 with JSON."""
        status, body = self.admin_get(path)
        if status != 200:
            raise self.fail(f"admin GET {path} answered {status}: {body[:500]}")
        return json.loads(body)

    def listener_ports(self) -> dict[str, int]:
        """Bound port of each listener, by name (from ``/listeners?format=json``)."""
        data = self.admin_json("/listeners?format=json")
        return {
            status["name"]: int(status["local_address"]["socket_address"]["port_value"])
            for status in data.get("listener_statuses", [])
        }

    def _port(self, name: str) -> int:
        def probe() -> dict[str, int] | None:
            ports = self.listener_ports()
            return ports if name in ports else None

        if name not in self._ports:
            self._ports = self.wait_for(probe, f"listener {name} in /listeners")
        return self._ports[name]

    @property
    def inbound_port(self) -> int:
        return self.config.inbound_port or self._port(INBOUND)

    @property
    def outbound_port(self) -> int:
        return self._port(OUTBOUND)

    def stats(self, filter_regex: str | None = None) -> dict[str, int]:
        """Counters and gauges (``GET /stats?format=json``), optionally filtered by regex."""
        query = "/stats?format=json"
        if filter_regex:
            query += "&filter=" + urllib.parse.quote(filter_regex, safe="")
        data = self.admin_json(query)
        return {
            entry["name"]: int(entry["value"])
            for entry in data.get("stats", [])
            if "name" in entry and isinstance(entry.get("value"), int | float)
        }

    def certs(self) -> EnvoyCerts:
        """The certificates of the TLS contexts in use (``GET /certs``)."""
        return EnvoyCerts.from_admin(self.admin_json("/certs"))

    def leaf_serials(self) -> set[str]:
        """Serials of the leaves Envoy presents now."""
        return self.certs().leaf_serials()

    def trusted_ca_serials(self) -> set[str]:
        """Serials of the CA certificates Envoy trusts now (every certificate of the bundle)."""
        return self.certs().trusted_ca_serials()

    def secrets(self) -> list[dict[str, Any]]:
        """The v3 ``Secret`` messages Envoy holds (static and dynamic active), private keys
        redacted by Envoy."""
        data = self.admin_json("/config_dump?resource=dynamic_active_secrets")
        found = [entry["secret"] for entry in data.get("configs", []) if "secret" in entry]
        static = self.admin_json("/config_dump?resource=static_secrets")
        found += [entry["secret"] for entry in static.get("configs", []) if "secret" in entry]
        return found

    # data plane ----------------------------------------------------------------

    def request(
        self,
        path: str = "/",
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> HttpResponse:
        """GET ``path`` through the outbound listener on a new connection (closed after)."""
        connection = http.client.HTTPConnection(HOST, self.outbound_port, timeout=timeout)
        try:
            connection.request("GET", path, headers={"connection": "close", **(headers or {})})
            response = connection.getresponse()
            body = response.read()
            merged: dict[str, str] = {}
            for key, value in response.getheaders():
                name = key.lower()
                merged[name] = f"{merged[name]},{value}" if name in merged else value
            return HttpResponse(response.status, merged, body)
        finally:
            connection.close()


# --------------------------------------------------------------------------- pairs


@dataclass(slots=True)
class EnvoyPair:
    """Two Envoys wired to each other: ``a`` outbound → ``b`` inbound and back."""

    a: EnvoyProcess
    b: EnvoyProcess
    _all: tuple[EnvoyProcess, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._all = (self.a, self.b)

    def wait_listeners_ready(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until both Envoys have both listeners active."""
        for envoy in self._all:
            envoy.wait_listeners_ready(timeout)


def _wired(a: EnvoyConfig, b: EnvoyConfig) -> tuple[EnvoyConfig, EnvoyConfig]:
    port_a, port_b = free_port(), free_port()
    return (
        replace(a, inbound_port=port_a, peer_port=port_b),
        replace(b, inbound_port=port_b, peer_port=port_a),
    )


def _port_clash(error: EnvoyError) -> bool:
    text = str(error).lower()
    return "address already in use" in text or "cannot bind" in text


@contextlib.contextmanager
def envoy_pair(
    a: EnvoyConfig,
    b: EnvoyConfig,
    workdir: Path,
    *,
    wait_live: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    attempts: int = 3,
) -> Iterator[EnvoyPair]:
    """Start Envoys for ``a`` and ``b`` (ports and ``peer_port`` filled in) wired to each
    other; stop both on exit. Retries with fresh ports if a pre-allocated port was taken."""
    for attempt in range(1, attempts + 1):
        config_a, config_b = _wired(a, b)
        envoy_a, envoy_b = EnvoyProcess(config_a, workdir), EnvoyProcess(config_b, workdir)
        try:
            envoy_a.start(wait_live=wait_live, timeout=timeout)
            envoy_b.start(wait_live=wait_live, timeout=timeout)
        except BaseException as error:  # an interrupt must not leave the first Envoy running
            envoy_a.stop()
            envoy_b.stop()
            if not isinstance(error, EnvoyError) or attempt == attempts or not _port_clash(error):
                raise
            continue
        try:
            yield EnvoyPair(envoy_a, envoy_b)
        finally:
            envoy_b.stop()
            envoy_a.stop()
        return


__all__ = [
    "DEFAULT_TIMEOUT",
    "CertDetails",
    "EnvoyCerts",
    "EnvoyConfig",
    "EnvoyError",
    "EnvoyPair",
    "EnvoyProcess",
    "HttpResponse",
    "SdsApi",
    "SdsSource",
    "StaticSecrets",
    "TlsContextCerts",
    "bootstrap",
    "envoy_binary",
    "envoy_pair",
    "free_port",
    "normalise_serial",
    "spiffe_validator_secret",
    "validate_bootstrap",
    "write_bootstrap",
]
