"""The agent's one typed settings object: ``meshca agent`` flags, ``MESHCA_*`` variables and the
optional TOML file (highest first), then defaults."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from ca.core.addresses import split_host_port
from ca.core.keys import KeyType
from ca.settings import CommaList, Duration, OptionalListenAddress, TomlSettings, TrustDomainName
from sds.core.workload_csr import WORKLOAD_KEY_TYPES

#: Longest unix socket path Linux accepts (``sun_path`` is 108 bytes with the final NUL).
MAX_SOCKET_PATH = 107


class AgentSettings(TomlSettings):
    """Every knob of ``meshca agent``; each is also ``MESHCA_<FIELD>`` and a TOML key."""

    model_config = SettingsConfigDict(env_prefix="MESHCA_", extra="ignore", frozen=True)

    ca_address: CommaList = Field(
        description="CA gRPC addresses HOST:PORT (TLS, token auth), tried in order",
        min_length=1,
    )
    ca_mtls_address: CommaList = Field(
        [], description="CA addresses for renewal by mTLS with the current SVID (optional)"
    )
    ca_root: Path = Field(description="PEM file with the root(s) to verify the CA at start")
    ca_server_name: str | None = Field(
        None, description="name to verify in the CA's certificate instead of the address's host"
    )
    token_file: Path = Field(description="the workload's service-account token (re-read)")
    sds_socket: Path = Field(description="unix socket serving Envoy SDS v3")
    workload_api_socket: Path | None = Field(
        None, description="unix socket serving the SPIFFE Workload API (optional)"
    )
    trust_domain: TrustDomainName = Field("cluster.local", description="SPIFFE trust domain")
    key_type: KeyType = Field(KeyType.EC_P256, description="workload key type")
    ttl: Duration = Field(timedelta(hours=24), description="requested SVID lifetime")
    grace_ratio: float = Field(
        0.5, gt=0.0, lt=1.0, description="fraction of the lifetime after which to renew"
    )
    rotation_jitter: float = Field(
        0.05, ge=0.0, lt=0.5, description="renewal point moved by up to this fraction either way"
    )
    ca_timeout: Duration = Field(timedelta(seconds=10), description="deadline of a CA call")
    metrics_listen: OptionalListenAddress = Field(
        "127.0.0.1:15020", description="HTTP address of /metrics, /healthz, /readyz; 'off'"
    )
    log_format: Literal["text", "json"] = Field("text", description="log line format")

    @field_validator("key_type")
    @classmethod
    def _workload_key_type(cls, value: KeyType) -> KeyType:
        if value not in WORKLOAD_KEY_TYPES:
            raise ValueError(
                f"{value} is not a workload key type; choose "
                + ", ".join(k.value for k in WORKLOAD_KEY_TYPES)
            )
        return value

    @field_validator("ca_address", "ca_mtls_address")
    @classmethod
    def _host_and_port(cls, value: list[str]) -> list[str]:
        """Every CA address names its port: gRPC would otherwise dial 443 without a word."""
        for address in value:
            split_host_port(address, what="CA address")
        return value

    @field_validator("sds_socket", "workload_api_socket")
    @classmethod
    def _socket_path_fits(cls, value: Path | None) -> Path | None:
        if value is not None and len(str(value).encode()) > MAX_SOCKET_PATH:
            raise ValueError(
                f"socket path {value} is longer than {MAX_SOCKET_PATH} bytes, "
                "the limit for unix sockets"
            )
        return value
