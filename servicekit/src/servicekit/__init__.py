"""Shared plumbing for the services: settings, JSON logging, request IDs, problems, health."""

from fastapi import FastAPI

from servicekit.context import (
    CLIENT_ID_HEADER,
    REQUEST_ID_HEADER,
    VALID_CLIENT_ID,
    accept_request_id,
    current_client_id,
    current_request_id,
)
from servicekit.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InternalError,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestHeadersTooLarge,
    RequestTimeout,
    ServiceError,
    ServiceUnavailable,
    ShuttingDown,
    Unauthorized,
    UnsupportedMediaType,
    UpstreamTimeout,
    UpstreamUnavailable,
    UriTooLong,
    ValidationFailed,
)
from servicekit.health import (
    DatabaseHealth,
    MigrationState,
    ReadinessCheck,
    ReadyProbe,
    health_router,
)
from servicekit.logs import configure_logging
from servicekit.metrics import ROUTE_TEMPLATE, RequestMetrics, metrics_router
from servicekit.middleware import HeadAsGetMiddleware, RequestContextMiddleware
from servicekit.problems import (
    PROBLEM_MEDIA_TYPE,
    Problem,
    document_unsupported_media_type,
    error_response,
    install_problem_handlers,
    problem_response,
    problem_responses,
)
from servicekit.runtime import operation_id, tune_gc_after_startup
from servicekit.settings import ServiceSettings
from servicekit.shutdown import install_graceful_shutdown, shutting_down
from servicekit.tracing import configure_tracing, flush_traces_at_shutdown


def install_servicekit(
    app: FastAPI,
    service: str,
    settings: ServiceSettings,
    *,
    behind_gateway: bool = True,
    metrics_route: bool = True,
) -> None:
    """Logging, request IDs with access lines, request metrics (on `/metrics` unless
    `metrics_route` is false: the gateway serves them on a port of their own), and
    problem+json for every error path.

    A service `behind_gateway` takes its client ID from the gateway's `X-Client-ID`."""
    configure_logging(service, settings.log_level)
    install_problem_handlers(app)
    document_unsupported_media_type(app)
    metrics = RequestMetrics(app) if settings.metrics_enabled else None
    if metrics is not None and metrics_route:
        app.include_router(metrics_router())
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(RequestContextMiddleware, trust_client_id=behind_gateway, metrics=metrics)
    tune_gc_after_startup(app)
    flush_traces_at_shutdown(app)


__all__ = [
    "CLIENT_ID_HEADER",
    "PROBLEM_MEDIA_TYPE",
    "REQUEST_ID_HEADER",
    "ROUTE_TEMPLATE",
    "VALID_CLIENT_ID",
    "BadRequest",
    "Conflict",
    "DatabaseHealth",
    "Forbidden",
    "HeadAsGetMiddleware",
    "InternalError",
    "MethodNotAllowed",
    "MigrationState",
    "NotAcceptable",
    "NotFound",
    "PayloadTooLarge",
    "Problem",
    "RateLimited",
    "ReadinessCheck",
    "ReadyProbe",
    "RequestContextMiddleware",
    "RequestHeadersTooLarge",
    "RequestMetrics",
    "RequestTimeout",
    "ServiceError",
    "ServiceSettings",
    "ServiceUnavailable",
    "ShuttingDown",
    "Unauthorized",
    "UnsupportedMediaType",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "UriTooLong",
    "ValidationFailed",
    "accept_request_id",
    "configure_logging",
    "configure_tracing",
    "current_client_id",
    "current_request_id",
    "document_unsupported_media_type",
    "error_response",
    "health_router",
    "install_graceful_shutdown",
    "install_problem_handlers",
    "install_servicekit",
    "metrics_router",
    "operation_id",
    "problem_response",
    "problem_responses",
    "shutting_down",
    "tune_gc_after_startup",
]
