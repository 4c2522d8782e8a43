"""The services behind the gateway: which path prefix goes where, and how each is called."""

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import httpx
from loguru import logger

from gateway.config import Settings
from gateway.metrics import UpstreamMetrics
from gateway.transport import Connector, HttpxTransport, Origin, default_port
from servicekit import ServiceError, UpstreamTimeout, UpstreamUnavailable
from servicekit.pool import ConnectionPool

API_PREFIX = "/api/v1"


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    prefix: str
    base_url: httpx.URL
    timeout: float
    # Connection errors on idempotent methods are retried once, except where the service
    # owns its retries (the LLM service retries OpenAI itself; retries have one owner).
    retry_idempotent: bool
    rate_limited: bool
    max_body_bytes: int
    connector: Connector
    client: httpx.AsyncClient
    origin: Origin
    host: bytes
    # Per-phase timeouts (httpx's names): each phase bounded by the upstream timeout.
    timeouts: Mapping[str, float]
    # What the request metrics call every path under the prefix.
    route_template: str
    metrics: UpstreamMetrics | None

    def matches(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    def problem(self, exc: httpx.TransportError, *, mid_response: bool = False) -> ServiceError:
        """The one mapping of this upstream's httpx errors: a timeout is `504
        upstream_timeout`, any other transport error `502 upstream_unavailable`."""
        timed_out = isinstance(exc, httpx.TimeoutException)
        if mid_response:
            logger.warning("upstream failed mid-response", upstream=self.name, error=str(exc))
            detail = f"The {self.name} service failed while answering."
        elif timed_out:
            logger.warning("upstream timed out", upstream=self.name)
            detail = f"The {self.name} service did not answer within {self.timeout:g} s."
        else:
            logger.warning("upstream unavailable", upstream=self.name, error=str(exc))
            detail = f"The {self.name} service cannot be reached."
        return UpstreamTimeout(detail) if timed_out else UpstreamUnavailable(detail)


class _Spec(NamedTuple):
    name: str
    segment: str
    url: str
    timeout: float
    retry_idempotent: bool
    rate_limited: bool
    max_body_bytes: int


def upstream_ssl_context(settings: Settings) -> ssl.SSLContext:
    """Certificates verified against `UPSTREAM_CA_BUNDLE` when set, else the system's CAs."""
    return ssl.create_default_context(cafile=settings.upstream_ca_bundle)


def build_upstreams(
    settings: Settings, connectors: Mapping[str, Connector] | None = None
) -> dict[str, Upstream]:
    """One connection pool and one client per upstream; `connectors` stand in for the
    network in tests."""
    specs = (
        _Spec("audits", "audits", settings.audits_service_url, settings.audits_timeout,
              retry_idempotent=True, rate_limited=False, max_body_bytes=settings.max_body_bytes),
        _Spec("llm", "openai", settings.llm_service_url, settings.llm_timeout,
              retry_idempotent=False, rate_limited=True,
              max_body_bytes=settings.llm_max_body_bytes),
    )  # fmt: skip
    upstreams = {}
    for name, segment, url, timeout, retry, limited, max_body_bytes in specs:
        base_url = httpx.URL(url.rstrip("/"))
        connector = (connectors or {}).get(name) or ConnectionPool(
            max_connections=settings.upstream_max_connections,
            max_keepalive_connections=settings.upstream_max_keepalive,
            ssl_context=upstream_ssl_context(settings) if base_url.scheme == "https" else None,
        )
        upstreams[name] = Upstream(
            name=name,
            prefix=f"{API_PREFIX}/{segment}",
            base_url=base_url,
            timeout=timeout,
            retry_idempotent=retry,
            rate_limited=limited,
            max_body_bytes=max_body_bytes,
            connector=connector,
            client=httpx.AsyncClient(
                base_url=base_url,
                transport=HttpxTransport(connector),
                timeout=timeout,
                follow_redirects=False,
            ),
            origin=(base_url.host, base_url.port or default_port(base_url.scheme)),
            host=base_url.netloc,
            timeouts=dict.fromkeys(("connect", "read", "write", "pool"), timeout),
            route_template=f"{API_PREFIX}/{segment}/{{path}}",
            metrics=UpstreamMetrics(name) if settings.metrics_enabled else None,
        )
    return upstreams
