"""One typed settings object, fed (highest first) by command-line flags, ``MESHCA_*``
environment variables, an optional TOML config file, and defaults."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ca.core.csr_policy import DEFAULT_TTL, MAX_TTL
from ca.core.durations import format_duration, parse_duration
from ca.core.errors import ConfigurationError, InvalidRequest
from ca.core.identity import parse_trust_domain
from ca.core.issuer import DEFAULT_BACKDATE
from ca.core.keys import KeyType
from ca.storage.engine import DEFAULT_DB_URL


def _duration(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


Duration = Annotated[
    timedelta, BeforeValidator(_duration), PlainSerializer(format_duration, return_type=str)
]


class Settings(BaseSettings):
    """Every knob meshca has. Each field is also ``MESHCA_<FIELD>`` and a key of the TOML file."""

    model_config = SettingsConfigDict(env_prefix="MESHCA_", extra="forbid", frozen=True)

    db_url: str = Field(DEFAULT_DB_URL, description="SQLAlchemy database URL")
    kek_file: Path = Field(Path("meshca.kek"), description="key-encryption key file (0600)")
    trust_domain: str = Field("cluster.local", description="SPIFFE trust domain")
    key_type: KeyType = Field(KeyType.EC_P256, description="CA key type for `ca init`")
    root_ttl: Duration = Field(timedelta(days=3650), description="lifetime of a new root")
    intermediate_ttl: Duration = Field(
        timedelta(days=365), description="lifetime of a new intermediate"
    )
    default_ttl: Duration = Field(DEFAULT_TTL, description="default SVID lifetime")
    max_ttl: Duration = Field(MAX_TTL, description="maximum SVID lifetime")
    backdate: Duration = Field(DEFAULT_BACKDATE, description="NotBefore backdating for clock skew")

    @field_validator("trust_domain")
    @classmethod
    def _valid_trust_domain(cls, value: str) -> str:
        try:
            return parse_trust_domain(value).name
        except InvalidRequest as exc:
            raise ValueError(exc.message) from None

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


def load_settings(config_file: Path | None = None, **flags: Any) -> Settings:
    """Settings from ``flags`` (``None`` values are ignored), environment, and ``config_file``."""
    overrides = {k: v for k, v in flags.items() if v is not None}
    settings_cls: type[Settings] = Settings
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigurationError("config_missing", f"config file {config_file} does not exist")
        settings_cls = type(
            "FileSettings",
            (Settings,),
            {"model_config": {**Settings.model_config, "toml_file": config_file}},
        )
    try:
        return settings_cls(**overrides)
    except (ValidationError, ValueError) as exc:
        raise ConfigurationError("invalid_settings", f"invalid settings: {_summary(exc)}") from exc


def _summary(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc)
