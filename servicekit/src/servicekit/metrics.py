"""Prometheus metrics every service shares: requests by route template, method and status,
their durations, and the `/metrics` exposition.

Labels name route templates (`/api/v1/audits/{audit_id}`), never raw paths: a path no route
matches is `unmatched`, a method outside the usual set `other`, so what clients send cannot
grow the label sets. A layer that answers requests itself, before FastAPI's routing (the
gateway's proxy), names its template under `ROUTE_TEMPLATE` in the ASGI scope.
"""

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import iter_route_contexts
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp, Receive, Scope, Send

ROUTE_TEMPLATE = "servicekit.route_template"
UNMATCHED = "unmatched"
OTHER_METHOD = "other"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Seconds; from a cached read (a few ms) to the LLM routes' long completions.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS = Counter(
    "http_requests_total",
    "Requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by route template and method.",
    ["route", "method"],
    buckets=DURATION_BUCKETS,
)


class RequestMetrics:
    """Records each request once; the labelled series are looked up once per label set."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        # Route -> its full template: a route in an included router knows only its own
        # part of the path (`/audits/{audit_id}`, without the router's `/api/v1`).
        self._templates: dict[int, str] | None = None
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def route_template(self, scope: Mapping[str, Any]) -> str:
        """The template of the route that answered, `unmatched` when none did."""
        named: str | None = scope.get(ROUTE_TEMPLATE)
        if named is not None:
            return named
        route = scope.get("route")
        if route is None:
            return UNMATCHED
        if self._templates is None:
            self._templates = {
                id(context.original_route): context.path_format or UNMATCHED
                for context in iter_route_contexts(self._app.routes)
            }
        return self._templates.get(id(route), UNMATCHED)

    def observe(self, scope: Mapping[str, Any], status: int, seconds: float) -> None:
        method: str = scope["method"]
        if method not in _METHODS:
            method = OTHER_METHOD
        key = (self.route_template(scope), method, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (
                REQUESTS.labels(key[0], method, str(status)),
                REQUEST_DURATION.labels(key[0], method),
            )
        series[0].inc()
        series[1].observe(seconds)


def named_route(app: ASGIApp, template: str) -> ASGIApp:
    """`app` (a mounted one: a mount is not a route FastAPI names) counted under `template`."""

    async def named(scope: Scope, receive: Receive, send: Send) -> None:
        scope[ROUTE_TEMPLATE] = template
        await app(scope, receive, send)

    return named


def exposition(accept: str | None) -> Response:
    """The default registry in the format the scraper's `Accept` asks for (Prometheus' text
    format unless it asks for OpenMetrics)."""
    encode, content_type = choose_encoder(accept or "")
    return Response(encode(REGISTRY), headers={"Content-Type": content_type})


def metrics_router() -> APIRouter:
    router = APIRouter(tags=["observability"])

    @router.get(
        "/metrics",
        summary="Prometheus metrics of this process",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Metrics"}},
    )
    async def metrics(request: Request) -> Response:
        return exposition(request.headers.get("accept"))

    return router
