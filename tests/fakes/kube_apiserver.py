"""A small, honest Kubernetes API server for tests: real HTTPS, the real TokenReview wire format.

``with KubeApiServer() as api:`` serves ``POST /apis/authentication.k8s.io/v1/tokenreviews`` on
127.0.0.1 with a certificate from a throwaway CA (``api.ca_pem`` / ``api.ca_file``). The caller
(the CA) authenticates with ``api.client_token`` or a client certificate from
``api.issue_client_cert()``. Tokens it knows are added with :meth:`KubeApiServer.register`;
spec.audiences is honoured like a real API server (intersection, else unauthenticated).
Faults: :meth:`fail_next` (HTTP status), :meth:`drop_next` (close without answering),
:meth:`delay_next`; ``forbidden`` (RBAC 403) and ``ignore_audiences`` (an API server or webhook
that drops audiences) switches; ``requests`` counts TokenReview requests received.
"""

from __future__ import annotations

import base64
import datetime as dt
import http
import ipaddress
import json
import secrets
import shutil
import ssl
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
API_AUDIENCES = ("https://kubernetes.default.svc.cluster.local",)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class _Ca:
    """A throwaway CA signing the server's and clients' certificates."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake kubernetes CA")])
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        ku = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        cert = (
            self._builder(self.name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(ku, critical=True)
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = cert.public_bytes(serialization.Encoding.PEM)

    def _builder(self, subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder(subject_name=subject, issuer_name=self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
        )

    def issue(self, common_name: str, *, server: bool) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for a server on 127.0.0.1/localhost, or a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        ku = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
        eku = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        builder = (
            self._builder(name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(ku, critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(aki, critical=False)
        )
        if server:
            sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


class KubeApiServer:
    def __init__(self) -> None:
        self.client_token = secrets.token_urlsafe(24)
        self.forbidden = False  # answer 403 as when the CA lacks `create tokenreviews`
        self.ignore_audiences = False  # leave status.audiences out, as old webhooks do
        self.received: list[dict[str, Any]] = []  # each TokenReview body received
        self._tokens: dict[str, dict[str, Any]] = {}
        self._faults: deque[tuple[str, Any]] = deque()
        self._lock = threading.Lock()
        self._requests = 0
        self._stopping = threading.Event()
        self._ca = _Ca()
        self.ca_pem = self._ca.pem
        self._dir = Path(tempfile.mkdtemp(prefix="fake-kube-"))
        self.ca_file = self._dir / "ca.crt"
        self.ca_file.write_bytes(self.ca_pem)
        cert_pem, key_pem = self._ca.issue("kube-apiserver", server=True)
        (self._dir / "tls.crt").write_bytes(cert_pem)
        (self._dir / "tls.key").write_bytes(key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self._dir / "tls.crt", self._dir / "tls.key")
        ctx.load_verify_locations(cadata=self.ca_pem.decode())
        ctx.verify_mode = ssl.CERT_OPTIONAL  # x509 client auth, as --client-ca-file enables
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = ctx.wrap_socket(
            self._httpd.socket, server_side=True, do_handshake_on_connect=False
        )
        self._httpd.fake = self  # type: ignore[attr-defined]
        self._httpd.handle_error = lambda *_: None  # type: ignore[method-assign]
        self.url = f"https://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def __enter__(self) -> KubeApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def requests(self) -> int:
        """TokenReview requests received (including those answered with a fault)."""
        with self._lock:
            return self._requests

    def register(
        self,
        token: str,
        *,
        namespace: str = "default",
        service_account: str = "default",
        pod_name: str | None = None,
        pod_uid: str | None = None,
        audiences: Sequence[str] = ("istio-ca",),
        username: str | None = None,
        groups: Sequence[str] | None = None,
    ) -> None:
        """Make ``token`` valid for ``audiences``; it authenticates as the service account, or as
        ``username``/``groups`` when given (a user that is not a service account)."""
        extra: dict[str, list[str]] = {}
        if pod_name is not None:
            extra["authentication.kubernetes.io/pod-name"] = [pod_name]
        if pod_uid is not None:
            extra["authentication.kubernetes.io/pod-uid"] = [pod_uid]
        sa_groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
        user: dict[str, Any] = {
            "username": username or f"system:serviceaccount:{namespace}:{service_account}",
            "uid": str(uuid.uuid4()),
            "groups": [*(sa_groups if groups is None else groups), "system:authenticated"],
        }
        if extra:
            user["extra"] = extra
        with self._lock:
            self._tokens[token] = {"user": user, "audiences": list(audiences)}

    def revoke(self, token: str) -> None:
        """Forget ``token``, as when its pod or service account is deleted."""
        with self._lock:
            self._tokens.pop(token, None)

    def fail_next(self, count: int, status: int = 503) -> None:
        self._add_faults(count, "status", status)

    def drop_next(self, count: int) -> None:
        """Close the next ``count`` connections after reading the request, without answering."""
        self._add_faults(count, "drop", None)

    def delay_next(self, count: int, seconds: float) -> None:
        """Answer the next ``count`` requests only after ``seconds`` (or at shutdown)."""
        self._add_faults(count, "delay", seconds)

    def _add_faults(self, count: int, kind: str, arg: Any) -> None:
        with self._lock:
            self._faults.extend([(kind, arg)] * count)

    def issue_client_cert(self, common_name: str = "meshca") -> tuple[bytes, bytes]:
        """A client certificate (PEM) and key (PEM) this server accepts instead of the token."""
        return self._ca.issue(common_name, server=False)

    def write_kubeconfig(self, path: Path, *, token: str | None = None) -> Path:
        """A kubeconfig pointing at this server, with the CA embedded and the client token."""
        ca_data = base64.b64encode(self.ca_pem).decode()
        cluster = {"server": self.url, "certificate-authority-data": ca_data}
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "meshca", "user": {"token": token or self.client_token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "meshca"}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(doc))
        return path

    def review(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The status a real API server computes for ``spec``."""
        with self._lock:
            known = self._tokens.get(spec.get("token") or "")
        requested = spec.get("audiences") or list(API_AUDIENCES)
        if known is None:
            return {"user": {}, "error": "[invalid bearer token, Token has been invalidated]"}
        auds = [a for a in known["audiences"] if a in requested]
        if not auds:
            error = f"token audiences {json.dumps(known['audiences'])} is invalid for the target "
            return {"user": {}, "error": error + f"audiences {json.dumps(requested)}"}
        status: dict[str, Any] = {"authenticated": True, "user": known["user"]}
        if not self.ignore_audiences:
            status["audiences"] = auds
        return status


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def setup(self) -> None:
        self.request.do_handshake()  # in this connection's thread, not the accepting one
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        fake: KubeApiServer = self.server.fake  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != PATH:
            return self._reply(404, _status(404, "NotFound", "the server could not find it"))
        with fake._lock:
            fake._requests += 1
            fault: tuple[str, Any] = fake._faults.popleft() if fake._faults else ("", None)
        kind, arg = fault
        if kind == "drop":
            self.close_connection = True
            return None
        if kind == "status":
            reason = http.HTTPStatus(arg).phrase.replace(" ", "")
            return self._reply(arg, _status(arg, reason, "injected fault"))
        if kind == "delay":
            fake._stopping.wait(arg)
        has_cert = bool(self.connection.getpeercert())
        if self.headers.get("Authorization") != f"Bearer {fake.client_token}" and not has_cert:
            return self._reply(401, _status(401, "Unauthorized", "Unauthorized"))
        if fake.forbidden:
            msg = 'tokenreviews.authentication.k8s.io is forbidden: cannot create "tokenreviews"'
            return self._reply(403, _status(403, "Forbidden", msg))
        if self.headers.get_content_type() != "application/json":
            return self._reply(415, _status(415, "UnsupportedMediaType", "unsupported media type"))
        try:
            review = json.loads(body)
        except ValueError:
            review = None
        if not isinstance(review, dict) or not isinstance(review.get("spec"), dict):
            return self._reply(400, _status(400, "BadRequest", "malformed TokenReview"))
        fake.received.append(review)
        if not review["spec"].get("token"):
            return self._reply(400, _status(400, "BadRequest", "token is required"))
        review["metadata"] = {"creationTimestamp": None}
        review["status"] = fake.review(review["spec"])
        return self._reply(201, review)  # the spec, token included, is echoed back

    def _reply(self, code: int, doc: dict[str, Any]) -> None:
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def kube_apiserver() -> Iterator[KubeApiServer]:
    with KubeApiServer() as api:
        yield api
