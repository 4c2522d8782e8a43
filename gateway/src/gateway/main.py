import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext, suppress
from functools import partial
from typing import TypedDict

from fastapi import FastAPI
from loguru import logger

from gateway import __version__
from gateway.config import Settings
from gateway.cors import GatewayCORSMiddleware
from gateway.edge import EdgeGuardMiddleware
from gateway.health import router as health_router
from gateway.keys import KeyStore
from gateway.metrics import metrics_listener
from gateway.openapi import DOCS_ASSETS_URL, OpenAPICache, docs_assets, docs_router
from gateway.proxy import ProxyMiddleware
from gateway.proxy.access import ACCESS_CONTROL_HEADERS, AccessControl, Counters
from gateway.ratelimit import MemoryRateLimiter, NoRateLimit, RateLimiter, RedisRateLimiter
from gateway.root import DESCRIPTION
from gateway.root import router as root_router
from gateway.transport import Connector
from gateway.upstreams import Upstream, build_upstreams
from servicekit import (
    REQUEST_ID_HEADER,
    configure_tracing,
    install_graceful_shutdown,
    install_servicekit,
    operation_id,
)
from servicekit.metrics import named_route

TITLE = "Audits Platform API"


class State(TypedDict):
    settings: Settings
    upstreams: dict[str, Upstream]
    limiter: RateLimiter
    access: AccessControl | None
    openapi: OpenAPICache


def _rate_limiter(settings: Settings) -> RateLimiter:
    if settings.rate_limit_llm_per_minute == 0:
        return NoRateLimit()
    if settings.redis_url is not None:
        return RedisRateLimiter(
            settings.redis_url.get_secret_value(), settings.rate_limit_llm_per_minute
        )
    return MemoryRateLimiter(settings.rate_limit_llm_per_minute)


def _metrics_listener(settings: Settings) -> AbstractContextManager[None]:
    if settings.metrics_enabled and not settings.metrics_public:
        return metrics_listener(settings.metrics_host, settings.metrics_port)
    return nullcontext()


def _access_control(settings: Settings) -> AccessControl | None:
    if settings.auth_mode == "none" or settings.api_keys_file is None:
        return None
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    return AccessControl(
        KeyStore(settings.api_keys_file), Counters(redis_url), settings.auth_failures_per_minute
    )


@asynccontextmanager
async def _watching(access: AccessControl | None) -> AsyncIterator[None]:
    """The keys file watched while the gateway runs; the counters closed after."""
    if access is None:
        yield
        return
    watcher = asyncio.create_task(access.keys.watch())
    try:
        yield
    finally:
        watcher.cancel()
        with suppress(asyncio.CancelledError):
            await watcher
        await access.counters.aclose()


@asynccontextmanager
async def lifespan(
    app: FastAPI,
    settings: Settings,
    connectors: Mapping[str, Connector] | None,
) -> AsyncIterator[State]:
    install_graceful_shutdown(app, settings.shutdown_drain_seconds)
    access = _access_control(settings)
    upstreams = build_upstreams(settings, connectors)
    limiter = _rate_limiter(settings)
    logger.info(
        "gateway started",
        upstreams={name: str(upstream.base_url) for name, upstream in upstreams.items()},
        rate_limit=type(limiter).__name__,
        auth_mode=settings.auth_mode,
        api_keys=len(access.keys) if access else None,
    )
    try:
        with _metrics_listener(settings):
            async with _watching(access):
                yield {
                    "settings": settings,
                    "upstreams": upstreams,
                    "limiter": limiter,
                    "access": access,
                    "openapi": OpenAPICache(app.openapi, upstreams, secured=access is not None),
                }
    finally:
        await limiter.aclose()
        for upstream in upstreams.values():
            await upstream.client.aclose()


def create_app(
    settings: Settings | None = None,
    connectors: Mapping[str, Connector] | None = None,
) -> FastAPI:
    """The gateway; `connectors` (by upstream name) stand in for the network in tests."""
    settings = settings or Settings()
    app = FastAPI(
        title=TITLE,
        version=__version__,
        description=DESCRIPTION,
        lifespan=partial(lifespan, settings=settings, connectors=connectors),
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        telemetry=configure_tracing("gateway"),
        generate_unique_id_function=operation_id,
    )
    app.include_router(root_router)
    app.include_router(health_router)
    app.include_router(docs_router(TITLE))
    app.mount(
        DOCS_ASSETS_URL,
        named_route(docs_assets(), f"{DOCS_ASSETS_URL}/{{path}}"),
        name="docs-assets",
    )
    # Added innermost first: request context → CORS → edge checks → proxy → FastAPI routes.
    app.add_middleware(
        ProxyMiddleware,
        body_timeout=settings.client_body_timeout,
        trusted_proxies=settings.trusted_proxies,
    )
    app.add_middleware(
        EdgeGuardMiddleware,
        max_url_bytes=settings.max_url_bytes,
        max_header_bytes=settings.max_header_bytes,
    )
    app.add_middleware(
        GatewayCORSMiddleware,
        allow_origins=["*"],
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=[
            REQUEST_ID_HEADER,
            "Retry-After",
            *(ACCESS_CONTROL_HEADERS if settings.auth_mode == "api_key" else ()),
        ],
        allow_credentials=False,
    )
    install_servicekit(
        app,
        service="gateway",
        settings=settings,
        behind_gateway=False,
        metrics_route=settings.metrics_public,
    )
    return app
