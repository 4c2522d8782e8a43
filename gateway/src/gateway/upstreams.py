"""The services behind the gateway: which path prefix goes where, and how each is called."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import httpx

from gateway.config import Settings
from gateway.transport import UpstreamTransport

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
    transport: httpx.AsyncBaseTransport
    client: httpx.AsyncClient
    origin: tuple[str, int]
    host: bytes
    # httpx's per-request timeout extension: each phase bounded by the upstream timeout.
    timeouts: Mapping[str, float]

    def matches(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")


class _Spec(NamedTuple):
    name: str
    segment: str
    url: str
    timeout: float
    retry_idempotent: bool
    rate_limited: bool


def build_upstreams(
    settings: Settings, transports: Mapping[str, httpx.AsyncBaseTransport] | None = None
) -> dict[str, Upstream]:
    """One pooled client per upstream; `transports` replaces the network in tests."""
    specs = (
        _Spec("audits", "audits", settings.audits_service_url, settings.audits_timeout,
              retry_idempotent=True, rate_limited=False),
        _Spec("llm", "openai", settings.llm_service_url, settings.llm_timeout,
              retry_idempotent=False, rate_limited=True),
    )  # fmt: skip
    upstreams = {}
    for name, segment, url, timeout, retry, limited in specs:
        transport = (transports or {}).get(name) or UpstreamTransport(
            max_connections=settings.upstream_max_connections,
            max_keepalive_connections=settings.upstream_max_keepalive,
        )
        base_url = httpx.URL(url.rstrip("/"))
        upstreams[name] = Upstream(
            name=name,
            prefix=f"{API_PREFIX}/{segment}",
            base_url=base_url,
            timeout=timeout,
            retry_idempotent=retry,
            rate_limited=limited,
            transport=transport,
            client=httpx.AsyncClient(
                base_url=base_url, transport=transport, timeout=timeout, follow_redirects=False
            ),
            origin=(base_url.host, base_url.port or 80),
            host=base_url.netloc,
            timeouts=dict.fromkeys(("connect", "read", "write", "pool"), timeout),
        )
    return upstreams
