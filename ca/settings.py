"""One typed settings object, fed (highest first) by command-line flags, ``MESHCA_*``
environment variables, an optional TOML config file, and defaults."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ca.core.addresses import split_host_port
from ca.core.csr_policy import DEFAULT_TTL, MAX_TTL
from ca.core.durations import format_duration, parse_duration
from ca.core.errors import ConfigurationError, InvalidRequest
from ca.core.identity import parse_trust_domain
from ca.core.issuer import DEFAULT_BACKDATE
from ca.core.keys import KeyType
from ca.core.lifecycle import IntermediatePolicy
from ca.core.text import mask_url_passwords

#: The embedded default database: a SQLite file in the working directory.
DEFAULT_DB_URL = "sqlite:///./meshca.db"

#: The value that turns an optional listener off.
OFF = "off"

#: Database backends meshca runs on (SQLAlchemy URL scheme before any ``+driver``).
DB_BACKENDS = ("sqlite", "postgresql")


def _duration(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


Duration = Annotated[
    timedelta, BeforeValidator(_duration), PlainSerializer(format_duration, return_type=str)
]


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _trust_domain_name(value: str) -> str:
    try:
        return parse_trust_domain(value).name
    except InvalidRequest as exc:
        raise ValueError(exc.message) from None


# A trust domain name, normalised (``spiffe://cluster.local`` is accepted as ``cluster.local``).
TrustDomainName = Annotated[str, AfterValidator(_trust_domain_name)]


def listen_address(value: str) -> str:
    """A ``HOST:PORT`` to listen on (port 0: any free port)."""
    split_host_port(value, what="address", listen=True)
    return value


def optional_listen_address(value: str) -> str:
    """A ``HOST:PORT`` to listen on, or ``off``."""
    return value if value == OFF else listen_address(value)


def database_url(value: str) -> str:
    """A SQLAlchemy URL of a backend meshca runs on; the message never shows a password."""
    from sqlalchemy.engine import make_url  # noqa: PLC0415 - the agent's settings skip SQLAlchemy
    from sqlalchemy.exc import ArgumentError  # noqa: PLC0415

    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(
            f"{mask_url_passwords(value)!r} is not a database URL; use sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST:PORT/DATABASE"
        ) from None
    backend = url.drivername.partition("+")[0]
    if backend not in DB_BACKENDS:
        raise ValueError(
            f"{url.render_as_string(hide_password=True)}: unsupported database {backend!r}; "
            "meshca runs on sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DATABASE"
        )
    return value


ListenAddress = Annotated[str, AfterValidator(listen_address)]
OptionalListenAddress = Annotated[str, AfterValidator(optional_listen_address)]
DatabaseUrl = Annotated[str, AfterValidator(database_url)]

# A list given as "a,b,c" in the environment (or as a TOML array, or repeated flags).
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_comma_list)]

#: Asymmetric JWT algorithms a Kubernetes API server may sign with; never ``none`` or HMAC.
JWT_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
)


class TomlSettings(BaseSettings):
    """Settings read (highest first) from init arguments, the environment and a TOML file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file")
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if toml_file is not None:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=toml_file),)
        return sources


S = TypeVar("S", bound=TomlSettings)


class Settings(TomlSettings):
    """Every knob meshca has. Each field is also ``MESHCA_<FIELD>`` and a key of the TOML file."""

    model_config = SettingsConfigDict(env_prefix="MESHCA_", extra="forbid", frozen=True)

    db_url: DatabaseUrl = Field(DEFAULT_DB_URL, description="SQLAlchemy database URL")
    kek_file: Path = Field(Path("meshca.kek"), description="key-encryption key file (0600)")
    trust_domain: TrustDomainName = Field("cluster.local", description="SPIFFE trust domain")
    key_type: KeyType = Field(KeyType.EC_P256, description="CA key type for `ca init`")
    root_ttl: Duration = Field(timedelta(days=3650), description="lifetime of a new root")
    intermediate_ttl: Duration = Field(
        timedelta(days=365), description="lifetime of a new intermediate"
    )
    default_ttl: Duration = Field(DEFAULT_TTL, description="default SVID lifetime")
    max_ttl: Duration = Field(MAX_TTL, description="maximum SVID lifetime")
    backdate: Duration = Field(DEFAULT_BACKDATE, description="NotBefore backdating for clock skew")

    # --- serving (`meshca ca serve`) ---
    listen: ListenAddress = Field(
        "0.0.0.0:15012", description="gRPC address (token-authenticated, TLS)"
    )
    mtls_listen: OptionalListenAddress = Field(
        "0.0.0.0:15013",
        description="gRPC address for renewal by client certificate (mTLS); 'off' disables it",
    )
    metrics_listen: OptionalListenAddress = Field(
        "127.0.0.1:15014", description="HTTP address of /metrics, /healthz, /readyz; 'off'"
    )
    workers: int | None = Field(
        None, ge=1, le=256, description="server processes sharing the port [number of cores]"
    )
    plaintext: bool = Field(False, description="serve without TLS (loopback development only)")
    server_dns_names: CommaList = Field(
        ["localhost", "127.0.0.1"], description="DNS names and IPs in the server's certificate"
    )
    server_cert_ttl: Duration = Field(
        timedelta(hours=24),
        description="lifetime of the server's own certificate (renewed at half)",
    )
    log_format: Literal["text", "json"] = Field("text", description="log line format")

    # --- caller authentication ---
    auth: Literal["jwt", "tokenreview"] = Field("jwt", description="how tokens are verified")
    jwt_issuer: str | None = Field(None, description="required `iss` of service-account tokens")
    jwt_audiences: CommaList = Field(["istio-ca"], description="accepted `aud` values")
    jwks: str | None = Field(None, description="JWKS file path or https URL")
    jwt_public_keys: CommaList = Field([], description="PEM public key files")
    oidc_discovery: str | None = Field(
        None, description="issuer URL whose /.well-known/openid-configuration names the JWKS"
    )
    jwks_ca_file: Path | None = Field(None, description="CA bundle to verify JWKS/OIDC servers")
    jwks_refresh_interval: Duration = Field(
        timedelta(seconds=10), description="minimum time between key-set refetches"
    )
    jwt_leeway: Duration = Field(timedelta(seconds=30), description="clock-skew leeway")
    jwt_algorithms: CommaList = Field(list(JWT_ALGORITHMS), description="allowed algorithms")
    allow_legacy_tokens: bool = Field(
        False, description="accept legacy secret-based tokens (no exp, no aud)"
    )
    kubeconfig: Path | None = Field(
        None, description="kubeconfig for TokenReview (default: in-cluster config)"
    )
    tokenreview_cache_ttl: Duration = Field(
        timedelta(seconds=10), description="how long a TokenReview result is reused"
    )
    token_cache_size: int = Field(10_000, ge=0, description="verified tokens kept (0: none)")

    # --- admission ---
    rate_limit_per_caller: float = Field(10.0, gt=0, description="requests/s per pod or identity")
    rate_limit_per_caller_burst: int = Field(50, ge=1, description="burst per pod or identity")
    rate_limit_global: float = Field(10_000.0, gt=0, description="requests/s for the process")
    rate_limit_global_burst: int = Field(20_000, ge=1, description="global burst")
    deny_identities: CommaList = Field(
        [], description="SPIFFE IDs refused (a trailing /* denies a path prefix)"
    )
    bundle_refresh_interval: Duration = Field(
        timedelta(seconds=1),
        description="how often the database is checked for CA changes (PostgreSQL also "
        "announces them at once with NOTIFY)",
    )

    db_notifications: bool = Field(
        True,
        description="listen for PostgreSQL NOTIFY of CA changes (turn off behind a "
        "transaction-pooling PgBouncer; changes then arrive by the bundle_refresh_interval poll)",
    )

    # --- rotation ---
    reissue_window: Duration = Field(
        timedelta(minutes=5),
        description="after the signing authority changes, agents re-issue at a random point "
        "within this window",
    )
    intermediate_rotation: bool = Field(
        True, description="replace the signing intermediate automatically before it expires"
    )
    intermediate_prepare_at: float = Field(
        0.5, gt=0, lt=1, description="prepare the next intermediate at this fraction of life"
    )
    intermediate_activate_at: float = Field(
        5 / 6, gt=0, lt=1, description="activate the prepared intermediate at this fraction"
    )
    rotation_check_interval: Duration = Field(
        timedelta(seconds=30), description="how often a server checks whether rotation is due"
    )

    @model_validator(mode="after")
    def _rotation_points_in_order(self) -> Settings:
        try:
            IntermediatePolicy(self.intermediate_prepare_at, self.intermediate_activate_at)
        except InvalidRequest as exc:
            raise ValueError(exc.message) from None
        return self

    @field_validator("jwt_algorithms")
    @classmethod
    def _asymmetric_algorithms(cls, value: list[str]) -> list[str]:
        refused = [a for a in value if a not in JWT_ALGORITHMS]
        if refused:
            raise ValueError(
                f"algorithm(s) {', '.join(refused)} not allowed; choose from "
                + ", ".join(JWT_ALGORITHMS)
            )
        if not value:
            raise ValueError("at least one algorithm is required")
        return value


def load_settings(config_file: Path | None = None, **flags: Any) -> Settings:
    """Settings from ``flags`` (``None`` values are ignored), environment, and ``config_file``."""
    return load_into(Settings, config_file, **flags)


def load_into(settings_cls: type[S], config_file: Path | None = None, **flags: Any) -> S:
    """An instance of ``settings_cls`` (a settings class built like :class:`Settings`) from
    ``flags`` (``None`` values are ignored), environment, and ``config_file``."""
    overrides = {k: v for k, v in flags.items() if v is not None}
    cls: type[S] = settings_cls
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigurationError("config_missing", f"config file {config_file} does not exist")
        cls = type(
            f"File{settings_cls.__name__}",
            (settings_cls,),
            {"model_config": {**settings_cls.model_config, "toml_file": config_file}},
        )
    try:
        return cls(**overrides)
    except (ValidationError, ValueError) as exc:
        raise ConfigurationError("invalid_settings", f"invalid settings: {_summary(exc)}") from exc


def _summary(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: "
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
    return str(exc)
