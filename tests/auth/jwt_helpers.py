"""What the JWT tests share: a controllable clock, keys, token minting (honest and forged), and a
real local HTTP(S) server whose JWKS and discovery documents can be swapped while it runs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import ssl
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from ca.auth.jwt_keys import JwksFileLoader, KeySource, PemFileLoader
from ca.auth.jwt_verifier import JwtVerifier
from ca.core.csr_policy import TtlPolicy
from ca.core.identity import WorkloadIdentity, parse_spiffe_id
from ca.core.issuer import Issuer
from ca.core.keys import KeyType, generate_private_key
from ca.settings import JWT_ALGORITHMS
from tests.factories import TRUST_DOMAIN, WEB_ID, make_ca

#: Every test runs at this fixed moment (on an injected clock), whatever the real date is.
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "istio-ca"
LEEWAY = timedelta(seconds=30)
INTERVAL = timedelta(seconds=10)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class FakeClock:
    """Wall-clock and monotonic time that only move when told to."""

    def __init__(self, now: datetime = NOW) -> None:
        self._now = now
        self._start = now

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return (self._now - self._start).total_seconds()

    def advance(self, delta: timedelta) -> None:
        self._now += delta


@dataclass(frozen=True)
class SigningKey:
    """A private key and the ``kid`` its tokens carry."""

    private: PrivateKey
    kid: str | None
    alg: str = "RS256"

    @property
    def public(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        return self.private.public_key()

    def public_pem(self) -> bytes:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self, **extra: Any) -> dict[str, Any]:
        if isinstance(self.public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(self.public, as_dict=True)
        else:
            data = ECAlgorithm.to_jwk(self.public, as_dict=True)
        if self.kid is not None:
            data["kid"] = self.kid
        data.update({"use": "sig", **extra})
        return data

    def sign(self, claims: Mapping[str, Any], **headers: Any) -> str:
        """A token signed by this key, with its ``kid`` unless ``headers`` say otherwise."""
        header = {"kid": self.kid, **headers} if self.kid is not None else dict(headers)
        alg = header.pop("alg", self.alg)
        return jwt.encode(dict(claims), self.private, algorithm=alg, headers=header or None)


def rsa_key(kid: str | None = "rsa-1", bits: int = 2048) -> SigningKey:
    return SigningKey(rsa.generate_private_key(public_exponent=65537, key_size=bits), kid)


def ec_key(kid: str | None = "ec-1", curve: ec.EllipticCurve | None = None) -> SigningKey:
    curve = curve or ec.SECP256R1()
    alg = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[curve.name]
    return SigningKey(ec.generate_private_key(curve), kid, alg)


def projected_claims(
    namespace: str = "payments",
    service_account: str = "api",
    *,
    now: datetime = NOW,
    ttl: timedelta = timedelta(hours=1),
    issuer: str = ISSUER,
    audience: str | list[str] = AUDIENCE,
    pod: tuple[str, str] | None = ("api-7d9f", "0b6f9f0e-1f3c-4d8e-9a55-2c1c5a8d7e11"),
) -> dict[str, Any]:
    """The claims a Kubernetes API server puts in a projected token."""
    k8s: dict[str, Any] = {
        "namespace": namespace,
        "serviceaccount": {"name": service_account, "uid": "5d0f6a1e-sa"},
    }
    if pod is not None:
        k8s["pod"] = {"name": pod[0], "uid": pod[1]}
    issued = int(now.timestamp())
    return {
        "aud": [audience] if isinstance(audience, str) else audience,
        "exp": issued + int(ttl.total_seconds()),
        "iat": issued,
        "nbf": issued,
        "iss": issuer,
        "kubernetes.io": k8s,
        "sub": f"system:serviceaccount:{namespace}:{service_account}",
    }


def legacy_claims(
    namespace: str = "default", service_account: str = "vault-auth"
) -> dict[str, Any]:
    """The claims of a legacy secret-based token (no exp, no aud)."""
    return {
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/secret.name": f"{service_account}-token-t5pcn",
        "kubernetes.io/serviceaccount/service-account.name": service_account,
        "kubernetes.io/serviceaccount/service-account.uid": "d77f89bc-9055",
        "sub": f"system:serviceaccount:{namespace}:{service_account}",
    }


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64url(json.dumps(value).encode())


def unsigned_token(claims: Mapping[str, Any], kid: str | None = "rsa-1") -> str:
    """An ``alg: none`` token: a header, a payload, an empty signature."""
    header: dict[str, Any] = {"alg": "none", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return f"{b64json(header)}.{b64json(dict(claims))}."


def hmac_token(claims: Mapping[str, Any], secret: bytes, kid: str | None = "rsa-1") -> str:
    """An HS256 token whose HMAC secret is ``secret`` (the key-confusion attack passes the
    verifier's public key PEM). Built by hand: PyJWT refuses PEM keys as HMAC secrets."""
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{b64json(header)}.{b64json(dict(claims))}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [key.jwk(alg=key.alg) for key in keys]}


def write_jwks(path: Path, *keys: SigningKey) -> Path:
    path.write_text(json.dumps(jwks(*keys)))
    return path


def write_pem(path: Path, *keys: SigningKey) -> Path:
    path.write_bytes(b"".join(key.public_pem() for key in keys))
    return path


def file_source(
    tmp_path: Path, *keys: SigningKey, clock: FakeClock, pem: bool = False
) -> KeySource:
    """A key source reading ``keys`` from a JWKS file (or a PEM file), started."""
    loader: JwksFileLoader | PemFileLoader
    if pem:
        loader = PemFileLoader([write_pem(tmp_path / "keys.pem", *keys)])
    else:
        loader = JwksFileLoader(write_jwks(tmp_path / "jwks.json", *keys))
    source = KeySource(loader, refresh_interval=INTERVAL, clock=clock.monotonic)
    assert asyncio.run(source.start())
    return source


def make_verifier(
    source: KeySource,
    clock: FakeClock,
    *,
    issuer: str = ISSUER,
    audiences: tuple[str, ...] = (AUDIENCE,),
    algorithms: tuple[str, ...] = JWT_ALGORITHMS,
    allow_legacy: bool = False,
    leeway: timedelta = LEEWAY,
) -> JwtVerifier:
    return JwtVerifier(
        source,
        TRUST_DOMAIN,
        issuer=issuer,
        audiences=audiences,
        algorithms=algorithms,
        leeway=leeway,
        allow_legacy=allow_legacy,
        clock=clock.now,
    )


# --- a real HTTP(S) server ---


class DocumentServer:
    """Serves JSON documents by path on 127.0.0.1 from a thread; documents can be replaced
    while it runs, and every request is counted by path."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._documents: dict[str, tuple[int, bytes]] = {}
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.requests[self.path] += 1
                    status, body = server._documents.get(self.path, (404, b'{"error":"nope"}'))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    def put(self, path: str, document: Any, status: int = 200) -> None:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        with self._lock:
            self._documents[path] = (status, body)

    def __enter__(self) -> DocumentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@contextmanager
def document_server(tls: ssl.SSLContext | None = None) -> Iterator[DocumentServer]:
    with DocumentServer(tls) as server:
        yield server


@dataclass(frozen=True)
class TlsFiles:
    """A CA certificate (PEM file) and a server TLS context whose certificate it issued."""

    ca_file: Path
    server_context: ssl.SSLContext


def make_tls(tmp_path: Path) -> TlsFiles:
    """A throwaway CA (meshca's own root and intermediate) and a server certificate for
    127.0.0.1 issued by it."""
    root, intermediate = make_ca()
    key = generate_private_key(KeyType.EC_P256)
    server = Issuer(TRUST_DOMAIN, intermediate, TtlPolicy()).issue_serving(
        key.public_key(),
        WorkloadIdentity.from_spiffe_id(parse_spiffe_id(f"{WEB_ID}-jwks")),
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        timedelta(hours=1),
        datetime.now(UTC),
        requester="test",
        request_id="jwks-server",
    )
    ca_file = tmp_path / "jwks-ca.pem"
    ca_file.write_bytes(root.certificate.public_bytes(serialization.Encoding.PEM))
    cert_file = tmp_path / "server.pem"
    cert_file.write_bytes(
        "".join(server.chain_pem()).encode()
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file)
    return TlsFiles(ca_file, context)
