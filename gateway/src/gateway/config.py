from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from servicekit import ServiceSettings

IPNetwork = IPv4Network | IPv6Network


class Settings(ServiceSettings):
    audits_service_url: str = "http://localhost:8001"
    llm_service_url: str = "http://localhost:8002"
    audits_timeout: float = Field(default=10.0, gt=0, description="Seconds per upstream phase.")
    llm_timeout: float = Field(default=120.0, gt=0, description="Seconds per upstream phase.")
    health_check_timeout: float = Field(default=2.0, gt=0)
    max_body_bytes: int = Field(
        default=1_048_576, ge=0, description="Request body limit on every route but the LLM's."
    )
    llm_max_body_bytes: int = Field(
        default=20 * 1024 * 1024,
        ge=0,
        description="Request body limit on the LLM routes (`/api/v1/openai…`): image inputs "
        "travel inside the JSON as data URLs.",
    )
    client_body_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds the whole request body may take to arrive before a 408.",
    )
    client_header_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a connection may take to send a request's whole header block.",
    )
    max_connections: int = Field(
        default=1024, gt=0, description="Open client connections per gateway process."
    )
    keepalive_requests: int = Field(
        default=1000, gt=0, description="Requests one client connection may carry."
    )
    keepalive_time: float = Field(
        default=3600.0,
        gt=0,
        description="Seconds after which a client connection takes no further request.",
    )
    lingering_time: float = Field(
        default=30.0,
        gt=0,
        description="Seconds at most that a connection closing with input unread goes on "
        "reading and discarding it, so that the client reads the answer first.",
    )
    lingering_timeout: float = Field(
        default=5.0, gt=0, description="Seconds without input that end a lingering close."
    )
    lingering_max_bytes: int = Field(
        default=16_777_216, ge=0, description="Bytes a lingering close discards at most."
    )
    max_url_bytes: int = Field(default=8192, gt=0)
    max_header_bytes: int = Field(default=32_768, gt=0)
    rate_limit_llm_per_minute: int = Field(default=60, ge=0, description="0 disables the limit.")
    trusted_proxies: Annotated[tuple[IPNetwork, ...], NoDecode] = ()
    redis_url: SecretStr | None = None
    auth_mode: Literal["none", "api_key"] = Field(
        default="none", description="`api_key`: every proxied route needs a key from the keys file."
    )
    api_keys_file: Path | None = Field(
        default=None, description="YAML or JSON file of the keys' hashes, scopes and limits."
    )
    auth_failures_per_minute: int = Field(
        default=10, ge=0, description="Failed key checks per client IP before a 429; 0: no limit."
    )
    upstream_max_connections: int = Field(default=1000, gt=0)
    upstream_max_keepalive: int = Field(default=100, ge=0)
    upstream_ca_bundle: Path | None = Field(
        default=None,
        description="PEM file of the CAs that sign https:// upstreams' certificates "
        "(a private CA); unset: the system's CAs.",
    )

    metrics_public: bool = Field(
        default=False,
        description="Serve `/metrics` on the public listener instead of on `METRICS_PORT`.",
    )
    metrics_host: str = Field(default="0.0.0.0", description="Address of the metrics listener.")
    metrics_port: int = Field(default=9100, ge=0, le=65535, description="0: any free port.")

    @field_validator("audits_service_url", "llm_service_url")
    @classmethod
    def _http_or_https(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL with a host, not {value!r}")
        return value

    @model_validator(mode="after")
    def _keys_file_with_api_keys(self) -> Self:
        if self.auth_mode == "api_key" and self.api_keys_file is None:
            raise ValueError("AUTH_MODE=api_key needs API_KEYS_FILE")
        return self

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(
                ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip()
            )
        return value

    @field_validator("redis_url", "upstream_ca_bundle", "api_keys_file", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if value == "" else value
