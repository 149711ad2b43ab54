"""Where the keys that verify service-account JWTs come from, and when they are fetched again.

A :class:`KeySource` holds the current :class:`KeySet` and reloads it through one of four
loaders: PEM public key (or certificate) files, a JWKS file, a JWKS URL, or OIDC discovery
(``<issuer>/.well-known/openid-configuration`` names the ``jwks_uri``; a Kubernetes API server
serves both, the JWKS at ``/openid/v1/jwks``).

Keys are loaded at :meth:`KeySource.start`. When a token names a key the set does not hold, the
verifier calls :meth:`KeySource.refresh_if_stale`: at most one fetch per refresh interval (a
flood of forged key IDs cannot hammer the API server), and concurrent refreshes share one fetch.
That is how an API-server key rotation is picked up without a restart. A failed fetch keeps the
previous keys and logs a warning.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt import PyJWK, PyJWTError
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from ca.core.errors import ConfigurationError, MeshcaError, Unavailable
from ca.core.keys import MIN_RSA_BITS

if TYPE_CHECKING:
    from ca.settings import Settings

log = logging.getLogger(__name__)

#: Seconds allowed for connecting to, and reading from, a JWKS or OIDC discovery server.
FETCH_TIMEOUT = 5.0
#: The largest JWKS or discovery document accepted.
MAX_DOCUMENT_BYTES = 1024 * 1024
DEFAULT_REFRESH_INTERVAL = timedelta(seconds=10)

_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
#: Every algorithm a key of this module can verify: RSA PKCS#1 v1.5 and PSS, and ECDSA.
ASYMMETRIC_ALGORITHMS = _RSA_ALGORITHMS | frozenset(_EC_ALGORITHMS.values())
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)
_WELL_KNOWN = "/.well-known/openid-configuration"


class UnusableKeyError(ValueError):
    """A key (or key file, or JWKS) that cannot verify service-account tokens."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key and the JWT algorithms it may verify."""

    jwk: PyJWK
    #: RS*/PS* for RSA keys, the one ES* of an EC key's curve; narrowed to the JWK's ``alg``.
    algorithms: frozenset[str]

    @property
    def kid(self) -> str | None:
        """The key ID (``kid``); ``None`` for keys read from PEM files."""
        return self.jwk.key_id

    @property
    def key(self) -> Any:
        """The ``cryptography`` public key object."""
        return self.jwk.key


@dataclass(frozen=True, slots=True)
class KeySet:
    """The keys a source currently offers: those with a key ID, and those without one."""

    by_kid: Mapping[str, VerificationKey]
    without_kid: tuple[VerificationKey, ...] = ()

    @classmethod
    def of(cls, keys: Iterable[VerificationKey], origin: str) -> KeySet:
        """A set of ``keys``; the first key wins when two share a key ID."""
        by_kid: dict[str, VerificationKey] = {}
        without_kid: list[VerificationKey] = []
        for key in keys:
            if key.kid is None:
                without_kid.append(key)
            elif key.kid in by_kid:
                log.warning("%s has two keys with kid %r; using the first", origin, key.kid)
            else:
                by_kid[key.kid] = key
        return cls(by_kid, tuple(without_kid))

    def __len__(self) -> int:
        return len(self.by_kid) + len(self.without_kid)

    def knows(self, kid: str | None) -> bool:
        """Whether ``kid`` names a key of this set (so a failure with it is final)."""
        return kid is not None and kid in self.by_kid

    def candidates(self, kid: str | None, algorithm: str) -> tuple[VerificationKey, ...]:
        """The keys to try on a token with header ``kid`` and ``alg``.

        A known ``kid`` selects its key. A token without ``kid`` may be signed by any key; one
        whose ``kid`` matches no key is tried against the keys without a key ID (PEM keys).
        """
        if kid is not None and kid in self.by_kid:
            pool: Iterable[VerificationKey] = (self.by_kid[kid],)
        elif kid is not None:
            pool = self.without_kid
        else:
            pool = (*self.by_kid.values(), *self.without_kid)
        return tuple(key for key in pool if algorithm in key.algorithms)


def verification_key(public_key: object, *, kid: str | None = None) -> VerificationKey:
    """A :class:`VerificationKey` for a ``cryptography`` RSA (2048 bits or more) or EC
    (P-256, P-384, P-521) public key. Raises :class:`UnusableKeyError` for any other key."""
    if isinstance(public_key, rsa.RSAPublicKey):
        _check_rsa_size(public_key)
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        _check_curve(public_key)
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        raise UnusableKeyError(
            f"{type(public_key).__name__} keys cannot verify service-account tokens "
            "(RSA or EC P-256/P-384/P-521 keys only)"
        )
    if kid is not None:
        jwk["kid"] = kid
    return _from_jwk(jwk)


def keys_from_pem(data: bytes) -> list[VerificationKey]:
    """Every public key (``PUBLIC KEY``, ``RSA PUBLIC KEY``) and certificate public key in
    ``data``. Raises :class:`UnusableKeyError` when there is none, or a block is anything else.

    A certificate is only a container for its key: its validity dates are not checked (as
    Kubernetes does not).
    """
    blocks = list(_PEM_BLOCK.finditer(data))
    if not blocks:
        raise UnusableKeyError("no PEM public key or certificate found")
    return [
        verification_key(_pem_public_key(block.group(1).decode(), block.group(0)))
        for block in blocks
    ]


def _pem_public_key(label: str, pem: bytes) -> object:
    if "PRIVATE KEY" in label:
        raise UnusableKeyError(
            "it holds a private key; give the public key only (openssl pkey -pubout)"
        )
    try:
        if label == "CERTIFICATE":
            return x509.load_pem_x509_certificate(pem).public_key()
        if label in ("PUBLIC KEY", "RSA PUBLIC KEY"):
            return serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise UnusableKeyError(f"its {label} cannot be parsed: {exc}") from exc
    raise UnusableKeyError(f"unsupported PEM block {label!r}")


def keys_from_jwks(document: object, origin: str) -> KeySet:
    """The signature keys of a JWKS document (``{"keys": [...]}``), parsed by PyJWT.

    Keys for encryption (``use`` other than ``sig``), symmetric keys, private keys, keys with a
    non-string ``kid`` and keys PyJWT cannot load are skipped with a warning. Raises
    :class:`UnusableKeyError` when the document is not a JWKS or holds no usable key.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise UnusableKeyError("not a JWKS: expected an object with a 'keys' array")
    keys = []
    for index, entry in enumerate(document["keys"]):
        try:
            keys.append(_jwks_entry(entry))
        except ValueError as exc:
            log.warning("%s: skipping key %d: %s", origin, index, exc)
    if not keys:
        raise UnusableKeyError("the JWKS holds no usable signature key")
    return KeySet.of(keys, origin)


def _jwks_entry(entry: object) -> VerificationKey:
    if not isinstance(entry, dict):
        raise UnusableKeyError("not a JSON object")
    if entry.get("use", "sig") != "sig":
        raise UnusableKeyError(f"use is {entry.get('use')!r}, not 'sig'")
    if entry.get("kty") not in ("RSA", "EC"):
        raise UnusableKeyError(f"key type {entry.get('kty')!r} is not RSA or EC")
    if "d" in entry:
        raise UnusableKeyError("it holds private key material")
    if "kid" in entry and not isinstance(entry["kid"], str):
        raise UnusableKeyError("its kid is not a string")
    return _from_jwk(entry)


def _from_jwk(data: dict[str, Any]) -> VerificationKey:
    try:
        jwk = PyJWK(data)
    except PyJWTError as exc:
        raise UnusableKeyError(f"unusable JWK: {exc}") from exc
    public_key = jwk.key
    if isinstance(public_key, rsa.RSAPublicKey):
        _check_rsa_size(public_key)
        algorithms = _RSA_ALGORITHMS
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        algorithms = frozenset({_check_curve(public_key)})
    else:
        raise UnusableKeyError(f"{type(public_key).__name__} is not an RSA or EC public key")
    declared = data.get("alg")
    if declared is not None:
        if declared not in algorithms:
            raise UnusableKeyError(f"its alg {declared!r} does not suit a {data.get('kty')} key")
        algorithms = frozenset({declared})
    return VerificationKey(jwk, algorithms)


def _check_rsa_size(public_key: rsa.RSAPublicKey) -> None:
    if public_key.key_size < MIN_RSA_BITS:
        raise UnusableKeyError(
            f"RSA key of {public_key.key_size} bits; at least {MIN_RSA_BITS} needed"
        )


def _check_curve(public_key: ec.EllipticCurvePublicKey) -> str:
    algorithm = _EC_ALGORITHMS.get(public_key.curve.name)
    if algorithm is None:
        raise UnusableKeyError(f"EC curve {public_key.curve.name} is not P-256, P-384 or P-521")
    return algorithm


class KeyLoader(Protocol):
    """Loads a complete key set from one place.

    Raises :class:`ConfigurationError` when local configuration is wrong (a missing or invalid
    file) and :class:`Unavailable` when a server cannot be reached or answers badly.
    """

    @property
    def description(self) -> str:
        """Where the keys come from, for log lines and error messages."""
        ...

    async def load(self) -> KeySet: ...


class PemFileLoader:
    """PEM public keys or certificates from files (``--jwt-public-key``); keys have no ``kid``."""

    def __init__(self, paths: Sequence[Path]) -> None:
        if not paths:
            raise ValueError("at least one PEM file is needed")
        self._paths = tuple(paths)

    @property
    def description(self) -> str:
        return "PEM file(s) " + ", ".join(str(p) for p in self._paths)

    async def load(self) -> KeySet:
        keys: list[VerificationKey] = []
        for path in self._paths:
            try:
                keys += keys_from_pem(path.read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigurationError(
                    "jwt_public_key_invalid",
                    f"JWT public key file {path}: {_describe_error(exc)}",
                ) from exc
        return KeySet.of(keys, self.description)


class JwksFileLoader:
    """A JWKS document in a file, read again at every refresh."""

    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def description(self) -> str:
        return f"JWKS file {self._path}"

    async def load(self) -> KeySet:
        try:
            document = json.loads(self._path.read_bytes())
            return keys_from_jwks(document, self.description)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                "jwks_invalid", f"JWKS file {self._path}: {_describe_error(exc)}"
            ) from exc


class JwksUrlLoader:
    """A JWKS document fetched over HTTPS (or HTTP on the loopback interface)."""

    def __init__(self, url: str, *, ca_file: Path | None = None) -> None:
        self._url = check_url(url, "--jwks")
        self._tls = tls_context(ca_file)

    @property
    def description(self) -> str:
        return f"JWKS at {self._url}"

    async def load(self) -> KeySet:
        async with _client(self._tls) as client:
            document = await fetch_json(client, self._url)
        return _remote_jwks(document, self._url)


class OidcDiscoveryLoader:
    """The JWKS named by an issuer's OpenID Connect discovery document.

    A Kubernetes API server only answers anonymous discovery requests when the
    ``system:service-account-issuer-discovery`` role is bound to ``system:unauthenticated``.
    """

    def __init__(self, issuer_url: str, *, ca_file: Path | None = None) -> None:
        self._base = check_url(issuer_url, "--oidc-discovery").rstrip("/")
        self._tls = tls_context(ca_file)

    @property
    def description(self) -> str:
        return f"OIDC discovery at {self._base}"

    @property
    def discovery_url(self) -> str:
        """Where the discovery document is read."""
        return self._base + _WELL_KNOWN

    async def load(self) -> KeySet:
        async with _client(self._tls) as client:
            discovery = await fetch_json(client, self.discovery_url)
            jwks_uri = discovery.get("jwks_uri") if isinstance(discovery, Mapping) else None
            if not isinstance(jwks_uri, str):
                raise Unavailable("jwks_unavailable", f"{self.discovery_url} names no jwks_uri")
            try:
                jwks_uri = check_url(jwks_uri, "jwks_uri")
            except ConfigurationError as exc:
                raise Unavailable(
                    "jwks_unavailable", f"{self.discovery_url}: {exc.message}"
                ) from exc
            document = await fetch_json(client, jwks_uri)
        return _remote_jwks(document, jwks_uri)


def check_url(url: str, flag: str) -> str:
    """``url`` if it is ``https``, or ``http`` to a loopback address (keys fetched in the clear
    from elsewhere could be replaced by anyone on the path)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return url
    raise ConfigurationError(
        "jwks_insecure_url",
        f"{flag} {url!r} must be an https URL (plain http only to a loopback address)",
    )


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """A client TLS context trusting ``ca_file``, or the system's CAs."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            "jwks_ca_file_invalid", f"--jwks-ca-file {ca_file}: {_describe_error(exc)}"
        ) from exc


async def fetch_json(client: httpx.AsyncClient, url: str) -> object:
    """GET ``url`` and parse its JSON body (at most 1 MiB); :class:`Unavailable` on failure."""
    body = bytearray()
    try:
        async with client.stream("GET", url, headers={"Accept": "application/json"}) as response:
            if response.status_code != httpx.codes.OK:
                raise Unavailable(
                    "jwks_unavailable", f"GET {url} answered HTTP {response.status_code}"
                )
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise Unavailable(
                        "jwks_unavailable", f"GET {url}: document over {MAX_DOCUMENT_BYTES} bytes"
                    )
    except httpx.HTTPError as exc:
        raise Unavailable("jwks_unavailable", f"GET {url} failed: {_describe_error(exc)}") from exc
    try:
        return json.loads(body)
    except ValueError as exc:
        raise Unavailable("jwks_unavailable", f"GET {url}: not JSON: {exc}") from exc


def _remote_jwks(document: object, url: str) -> KeySet:
    try:
        return keys_from_jwks(document, f"JWKS at {url}")
    except ValueError as exc:
        raise Unavailable("jwks_unavailable", f"JWKS at {url}: {exc}") from exc


def _client(tls: ssl.SSLContext) -> httpx.AsyncClient:
    # One client per fetch: fetches are rare, and a client is bound to its event loop.
    return httpx.AsyncClient(verify=tls, timeout=FETCH_TIMEOUT, follow_redirects=False)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class KeySource:
    """The current verification keys of one loader, refreshed on demand and rate-limited.

    ``clock`` returns monotonic seconds (``time.monotonic``); tests pass a fake one.
    """

    def __init__(
        self,
        loader: KeyLoader,
        *,
        refresh_interval: timedelta = DEFAULT_REFRESH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loader = loader
        self._interval = refresh_interval.total_seconds()
        self._clock = clock
        self._keys: KeySet | None = None
        self._last_attempt: float | None = None
        self._last_error: str | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._fetches = 0

    @property
    def description(self) -> str:
        """Where the keys come from."""
        return self._loader.description

    @property
    def keys(self) -> KeySet | None:
        """The keys of the last successful load; ``None`` until one succeeded."""
        return self._keys

    @property
    def last_error(self) -> str | None:
        """Why the last load failed; ``None`` after a success."""
        return self._last_error

    @property
    def fetches(self) -> int:
        """How many loads were attempted (for metrics and tests)."""
        return self._fetches

    async def start(self) -> bool:
        """Load the keys once. Returns whether that worked; a server that cannot be reached is
        logged and retried on demand, but a :class:`ConfigurationError` (a bad file) is raised."""
        self._last_attempt = self._clock()
        self._fetches += 1
        try:
            self._loaded(await self._loader.load())
        except Unavailable as exc:
            self._failed(exc.message)
            return False
        return True

    async def refresh(self) -> KeySet | None:
        """Load the keys now, or join the load already under way; returns the current keys.

        A failure is logged and keeps the previous keys.
        """
        task = self._inflight
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            self._last_attempt = self._clock()
            task = asyncio.ensure_future(self._load())
            self._inflight = task
            task.add_done_callback(self._done)
        await asyncio.shield(task)
        return self._keys

    async def refresh_if_stale(self) -> KeySet | None:
        """:meth:`refresh` unless the last load started less than the refresh interval ago
        (then the current keys, without fetching)."""
        if self._inflight is not None or self._stale():
            return await self.refresh()
        return self._keys

    def _stale(self) -> bool:
        return self._last_attempt is None or self._clock() - self._last_attempt >= self._interval

    def _done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _load(self) -> None:
        self._fetches += 1
        try:
            keys = await self._loader.load()
        except MeshcaError as exc:
            self._failed(exc.message)
        except Exception as exc:  # a refresh must never take verification down with it
            log.exception("unexpected error loading JWT verification keys")
            self._failed(_describe_error(exc))
        else:
            self._loaded(keys)

    def _loaded(self, keys: KeySet) -> None:
        previous = self._keys
        self._keys = keys
        self._last_error = None
        if previous is None or _fingerprint(previous) != _fingerprint(keys):
            log.info(
                "loaded %d JWT verification key(s) from %s (kids: %s)",
                len(keys),
                self.description,
                ", ".join(sorted(keys.by_kid)) or "none",
            )

    def _failed(self, message: str) -> None:
        self._last_error = message
        kept = (
            f"keeping the {len(self._keys)} key(s) loaded before"
            if self._keys is not None
            else "no keys are loaded yet"
        )
        log.warning("could not load JWT verification keys: %s; %s", message, kept)


def _fingerprint(keys: KeySet) -> tuple[frozenset[str], int]:
    return frozenset(keys.by_kid), len(keys.without_kid)


def key_source_from_settings(
    settings: Settings, *, clock: Callable[[], float] = time.monotonic
) -> KeySource:
    """The key source the settings name: exactly one of ``--jwks`` (file path or URL),
    ``--jwt-public-key`` (PEM files) or ``--oidc-discovery`` (issuer URL)."""
    chosen = [
        flag
        for flag, value in (
            ("--jwks", settings.jwks),
            ("--jwt-public-key", settings.jwt_public_keys),
            ("--oidc-discovery", settings.oidc_discovery),
        )
        if value
    ]
    if not chosen:
        raise ConfigurationError(
            "jwt_keys_missing",
            "JWT verification needs keys: set one of --jwks (file or URL), --jwt-public-key "
            "(PEM files) or --oidc-discovery (issuer URL)",
        )
    if len(chosen) > 1:
        raise ConfigurationError(
            "jwt_keys_ambiguous",
            f"set only one of --jwks, --jwt-public-key, --oidc-discovery (got {', '.join(chosen)})",
        )
    loader: KeyLoader
    if settings.jwks and "://" in settings.jwks:
        loader = JwksUrlLoader(settings.jwks, ca_file=settings.jwks_ca_file)
    elif settings.jwks:
        loader = JwksFileLoader(Path(settings.jwks))
    elif settings.oidc_discovery:
        loader = OidcDiscoveryLoader(settings.oidc_discovery, ca_file=settings.jwks_ca_file)
    else:
        loader = PemFileLoader([Path(p) for p in settings.jwt_public_keys])
    return KeySource(loader, refresh_interval=settings.jwks_refresh_interval, clock=clock)
