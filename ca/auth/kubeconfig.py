"""How meshca reaches the Kubernetes API server: a kubeconfig file or the in-cluster config.

Only what a CA needs to call TokenReview is supported: a server URL, its CA bundle (or, when the
kubeconfig says so, ``insecure-skip-tls-verify``), and static client credentials (a bearer token,
a token file re-read on every request as in-cluster tokens rotate, or a client certificate and
key). Credential plugins (``exec``, ``auth-provider``) and basic auth are refused with a
:class:`~ca.core.errors.ConfigurationError` naming the file and the field.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import ssl
import tempfile
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from ca.core.errors import ConfigurationError

log = logging.getLogger(__name__)

#: Where Kubernetes mounts a pod's service-account token, CA bundle and namespace.
IN_CLUSTER_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True, slots=True)
class ClusterAccess:
    """Everything needed to open an authenticated HTTPS connection to an API server.

    Secrets (``token``, ``client_key_pem``) are left out of ``repr``.
    """

    #: ``https://host[:port][/path-prefix]``.
    server: str
    #: Where this came from (``kubeconfig /path (context x)``, ``in-cluster config``), for messages.
    source: str = "cluster access"
    ca_pem: bytes | None = None
    ca_file: Path | None = None
    #: Only ever set because a kubeconfig says ``insecure-skip-tls-verify: true``.
    insecure_skip_tls_verify: bool = False
    #: Name to verify the server's certificate against instead of the URL's host.
    tls_server_name: str | None = None
    proxy_url: str | None = None
    token: str | None = field(default=None, repr=False)
    #: Re-read on every request; takes precedence over ``token`` (as in client-go).
    token_file: Path | None = None
    client_cert_pem: bytes | None = None
    client_cert_file: Path | None = None
    client_key_pem: bytes | None = field(default=None, repr=False)
    client_key_file: Path | None = None

    def __post_init__(self) -> None:
        url = urlsplit(self.server)
        if url.scheme != "https" or not url.hostname:
            raise ConfigurationError(
                "kubeconfig_invalid",
                f"{self.source}: server {self.server!r} must be an https:// URL "
                "(tokens are never sent in clear text)",
            )
        if self.ca_pem is not None and self.ca_file is not None:
            raise ConfigurationError(
                "kubeconfig_invalid", f"{self.source}: give the CA bundle as data or file, not both"
            )
        if self.insecure_skip_tls_verify and self.has_ca:
            raise ConfigurationError(
                "kubeconfig_invalid",
                f"{self.source}: a CA bundle and insecure-skip-tls-verify exclude each other",
            )
        has_cert = self.client_cert_pem is not None or self.client_cert_file is not None
        has_key = self.client_key_pem is not None or self.client_key_file is not None
        if has_cert != has_key:
            raise ConfigurationError(
                "kubeconfig_invalid",
                f"{self.source}: a client certificate needs its key, and a key its certificate",
            )
        if not (has_cert or self.token or self.token_file):
            raise ConfigurationError(
                "kubeconfig_invalid",
                f"{self.source}: no client credentials "
                "(token, tokenFile, or client-certificate and client-key)",
            )

    @property
    def has_ca(self) -> bool:
        return self.ca_pem is not None or self.ca_file is not None

    @property
    def has_client_cert(self) -> bool:
        return self.client_cert_pem is not None or self.client_cert_file is not None


def load_kubeconfig(path: Path, context: str | None = None) -> ClusterAccess:
    """The cluster and user of ``context`` (default: ``current-context``) in the kubeconfig at
    ``path``. Relative file names in it are relative to the kubeconfig's directory."""
    doc = _read_yaml(path)
    where = f"kubeconfig {path}"
    name = context if context is not None else doc.get("current-context")
    if not name:
        raise ConfigurationError(
            "kubeconfig_invalid", f"{where}: no current-context set and no context given"
        )
    ctx = _named(doc, "contexts", "context", str(name), where)
    where = f"{where} (context {name})"
    cluster_name = ctx.get("cluster")
    user_name = ctx.get("user")
    if not cluster_name:
        raise ConfigurationError("kubeconfig_invalid", f"{where}: context names no cluster")
    if not user_name:
        raise ConfigurationError("kubeconfig_invalid", f"{where}: context names no user")
    cluster = _named(doc, "clusters", "cluster", str(cluster_name), where)
    user = _named(doc, "users", "user", str(user_name), where)
    base = path.parent
    c_where = f"{where}, cluster {cluster_name}"
    u_where = f"{where}, user {user_name}"

    for plugin in ("exec", "auth-provider"):
        if user.get(plugin):
            raise ConfigurationError(
                "kubeconfig_unsupported",
                f"{u_where}: {plugin!r} credential plugins are not supported; "
                "give the CA a token, tokenFile or client certificate",
            )
    if user.get("username") or user.get("password"):
        raise ConfigurationError(
            "kubeconfig_unsupported",
            f"{u_where}: basic auth (username/password) is not supported",
        )
    server = _string(cluster, "server", c_where)
    if not server:
        raise ConfigurationError("kubeconfig_invalid", f"{c_where}: missing field 'server'")
    insecure = cluster.get("insecure-skip-tls-verify", False)
    if not isinstance(insecure, bool):
        raise ConfigurationError(
            "kubeconfig_invalid", f"{c_where}: 'insecure-skip-tls-verify' must be true or false"
        )
    token_file = _file(user, "tokenFile", base, u_where)
    access = ClusterAccess(
        server=server,
        source=where,
        ca_pem=_data(cluster, "certificate-authority", c_where),
        ca_file=_file(cluster, "certificate-authority", base, c_where),
        insecure_skip_tls_verify=insecure,
        tls_server_name=_string(cluster, "tls-server-name", c_where),
        proxy_url=_string(cluster, "proxy-url", c_where),
        token=_string(user, "token", u_where),
        token_file=token_file,
        client_cert_pem=_data(user, "client-certificate", u_where),
        client_cert_file=_file(user, "client-certificate", base, u_where),
        client_key_pem=_data(user, "client-key", u_where),
        client_key_file=_file(user, "client-key", base, u_where),
    )
    if token_file is not None:
        bearer_token(access)  # fail at start-up, not on the first request
    if insecure:
        log.warning("%s: TLS verification of the API server is disabled", c_where)
    return access


def in_cluster(
    base_dir: Path = IN_CLUSTER_DIR, environ: Mapping[str, str] | None = None
) -> ClusterAccess:
    """The API server as seen from inside a pod: ``KUBERNETES_SERVICE_HOST``/``_PORT``, and the
    mounted service-account token (re-read on each request) and ``ca.crt``."""
    env = os.environ if environ is None else environ
    host = env.get("KUBERNETES_SERVICE_HOST", "")
    port = env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise ConfigurationError(
            "in_cluster_unavailable",
            "not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT "
            "are not set); give a kubeconfig instead",
        )
    if ":" in host:  # an IPv6 address, bracketed as net.JoinHostPort does
        host = f"[{host}]"
    token_file = base_dir / "token"
    ca_file = base_dir / "ca.crt"
    if not ca_file.is_file():
        raise ConfigurationError(
            "in_cluster_unavailable", f"in-cluster config: CA bundle {ca_file} does not exist"
        )
    access = ClusterAccess(
        server=f"https://{host}:{port}",
        source="in-cluster config",
        ca_file=ca_file,
        token_file=token_file,
    )
    bearer_token(access)
    return access


def load_cluster_access(kubeconfig: Path | None, context: str | None = None) -> ClusterAccess:
    """The kubeconfig when one is given, else the in-cluster config."""
    return in_cluster() if kubeconfig is None else load_kubeconfig(kubeconfig, context)


def bearer_token(access: ClusterAccess) -> str | None:
    """The token to present now: the token file's current content, else the static token."""
    if access.token_file is None:
        return access.token
    try:
        token = access.token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigurationError(
            "kubeconfig_token_file",
            f"{access.source}: cannot read token file {access.token_file}: {detail}",
        ) from exc
    if not token:
        raise ConfigurationError(
            "kubeconfig_token_file", f"{access.source}: token file {access.token_file} is empty"
        )
    return token


def request_headers(access: ClusterAccess) -> dict[str, str]:
    """The ``Authorization`` header for one request (empty with client-certificate auth only)."""
    token = bearer_token(access)
    return {"Authorization": f"Bearer {token}"} if token else {}


def ssl_context(access: ClusterAccess) -> ssl.SSLContext:
    """A client TLS context trusting the cluster's CA and presenting the client certificate."""
    if not access.has_ca:
        ctx = ssl.create_default_context()  # the system's roots, as kubectl does
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # the cluster's CA only
        try:
            if access.ca_file is not None:
                ctx.load_verify_locations(cafile=str(access.ca_file))
            else:
                ctx.load_verify_locations(cadata=(access.ca_pem or b"").decode("ascii"))
        except (ssl.SSLError, OSError, UnicodeDecodeError) as exc:
            what = access.ca_file or "certificate-authority-data"
            raise ConfigurationError(
                "kubeconfig_bad_ca", f"{access.source}: cannot load CA bundle {what}: {exc}"
            ) from exc
    if access.insecure_skip_tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if access.has_client_cert:
        try:
            with _as_files(access) as (cert_file, key_file):
                ctx.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError(
                "kubeconfig_bad_client_cert",
                f"{access.source}: cannot load the client certificate and key: {exc}",
            ) from exc
    return ctx


class _ClusterAuth(httpx.Auth):
    """Sets the bearer token on every request, re-reading a token file each time."""

    def __init__(self, access: ClusterAccess) -> None:
        self._access = access

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(request_headers(self._access))
        yield request


def async_client(access: ClusterAccess, *, timeout: float = 5.0) -> httpx.AsyncClient:
    """An HTTP client for the API server: ``base_url`` is the server, TLS is verified against the
    cluster CA, every request carries the current credentials. Environment proxies and
    ``SSL_CERT_*`` variables are ignored; ``proxy-url`` from the kubeconfig is honoured.

    A token file that cannot be read raises :class:`ConfigurationError` from the request. With a
    ``tls_server_name``, pass ``extensions={"sni_hostname": access.tls_server_name}`` per request
    (see :func:`request_extensions`)."""
    return httpx.AsyncClient(
        base_url=access.server,
        verify=ssl_context(access),
        auth=_ClusterAuth(access),
        timeout=httpx.Timeout(timeout),
        proxy=access.proxy_url,
        trust_env=False,
        headers={"Accept": "application/json", "User-Agent": "meshca"},
    )


def request_extensions(access: ClusterAccess) -> dict[str, Any]:
    """httpx request extensions: the TLS server name to verify, when the kubeconfig sets one."""
    return {"sni_hostname": access.tls_server_name} if access.tls_server_name else {}


# --- kubeconfig parsing helpers ---


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            "kubeconfig_unreadable", f"cannot read kubeconfig {path}: {exc.strerror or exc}"
        ) from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(
            "kubeconfig_invalid", f"kubeconfig {path} is not valid YAML: {exc}"
        ) from exc
    if not isinstance(doc, dict):
        raise ConfigurationError(
            "kubeconfig_invalid", f"kubeconfig {path}: expected a mapping at the top"
        )
    return doc


def _named(doc: dict[str, Any], section: str, key: str, name: str, where: str) -> dict[str, Any]:
    entries = doc.get(section) or []
    if not isinstance(entries, list):
        raise ConfigurationError("kubeconfig_invalid", f"{where}: {section!r} must be a list")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            body = entry.get(key)
            if body is None:
                return {}
            if not isinstance(body, dict):
                raise ConfigurationError(
                    "kubeconfig_invalid", f"{where}: {key} {name!r} must be a mapping"
                )
            return body
    raise ConfigurationError("kubeconfig_invalid", f"{where}: no {key} named {name!r}")


def _string(section: dict[str, Any], key: str, where: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigurationError("kubeconfig_invalid", f"{where}: {key!r} must be a string")
    return value


def _file(section: dict[str, Any], key: str, base: Path, where: str) -> Path | None:
    value = _string(section, key, where)
    if value is None:
        return None
    if section.get(f"{key}-data"):
        raise ConfigurationError(
            "kubeconfig_invalid", f"{where}: both {key!r} and '{key}-data' are set; keep one"
        )
    path = base / value  # an absolute value replaces base
    if not path.is_file():
        raise ConfigurationError("kubeconfig_invalid", f"{where}: {key} file {path} does not exist")
    return path


def _data(section: dict[str, Any], key: str, where: str) -> bytes | None:
    value = _string(section, f"{key}-data", where)
    if value is None:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigurationError(
            "kubeconfig_invalid", f"{where}: '{key}-data' is not valid base64"
        ) from exc


@contextmanager
def _as_files(access: ClusterAccess) -> Iterator[tuple[str, str]]:
    """Client certificate and key as file names (``ssl`` loads chains only from files): the
    given paths, or the PEM data written to a private temporary directory removed on exit."""
    with tempfile.TemporaryDirectory(prefix="meshca-kube-") as tmp:  # mode 0700
        cert = access.client_cert_file or _write_private(
            Path(tmp, "client.crt"), access.client_cert_pem
        )
        key = access.client_key_file or _write_private(
            Path(tmp, "client.key"), access.client_key_pem
        )
        yield str(cert), str(key)


def _write_private(path: Path, data: bytes | None) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data or b"")
    return path
