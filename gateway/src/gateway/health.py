"""The gateway's health: liveness (servicekit's), readiness aggregated over the upstreams,
and the audits service's database check passed through."""

import asyncio
import time

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from gateway.dependencies import SettingsDep, UpstreamsDep
from gateway.schemas import DownstreamHealth, GatewayReadiness
from gateway.upstreams import Upstream
from servicekit import (
    REQUEST_ID_HEADER,
    DatabaseHealth,
    current_request_id,
    health_router,
    problem_responses,
    shutting_down,
)

router = health_router("gateway")


async def _check(upstream: Upstream, seconds: float) -> DownstreamHealth:
    started = time.perf_counter()
    detail: str | None = None
    try:
        async with asyncio.timeout(seconds):
            response = await upstream.client.get(
                "/health/ready",
                headers={REQUEST_ID_HEADER: current_request_id() or ""},
                timeout=seconds,
            )
    except (TimeoutError, httpx.TimeoutException):
        detail = f"no answer within {seconds:g} s"
    except httpx.TransportError:
        detail = "unreachable"
    else:
        if response.status_code != 200:
            detail = _reason(response)
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    return DownstreamHealth(
        status="ok" if detail is None else "unavailable", latency_ms=latency_ms, detail=detail
    )


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        parts = [str(body[key]) for key in ("code", "detail") if body.get(key)]
        if parts:
            return ": ".join(parts)
    return f"readiness answered {response.status_code}"


@router.get(
    "/health/ready",
    summary="Readiness: the gateway and the services behind it",
    description=(
        "Checks every downstream service's readiness concurrently, each bounded by "
        "`HEALTH_CHECK_TIMEOUT`. `ok` and `degraded` (the LLM service is not ready) answer "
        "200; `unavailable` (the audits service or its database is not ready) answers 503."
    ),
    tags=["health"],
    response_model=GatewayReadiness,
    responses={503: {"model": GatewayReadiness, "description": "The audits service is not ready"}},
)
async def readiness(request: Request, upstreams: UpstreamsDep, settings: SettingsDep) -> Response:
    names = list(upstreams)
    checks = await asyncio.gather(
        *(_check(upstreams[name], settings.health_check_timeout) for name in names)
    )
    services = dict(zip(names, checks, strict=True))
    if shutting_down(request) or services["audits"].status != "ok":
        status = "unavailable"
    elif all(check.status == "ok" for check in checks):
        status = "ok"
    else:
        status = "degraded"
    body = GatewayReadiness(status=status, services=services)
    return JSONResponse(body.model_dump(), status_code=503 if status == "unavailable" else 200)


@router.get(
    "/health/db",
    summary="The audits service's database check, passed through",
    tags=["health"],
    response_model=DatabaseHealth,
    responses=problem_responses(502, 503, 504),
)
async def database_health(upstreams: UpstreamsDep) -> Response:
    audits = upstreams["audits"]
    try:
        response = await audits.client.get(
            "/health/db", headers={REQUEST_ID_HEADER: current_request_id() or ""}
        )
    except httpx.TransportError as exc:
        raise audits.problem(exc) from exc
    return Response(
        response.content,
        status_code=response.status_code,
        media_type=response.headers.get("content-type", "application/json"),
    )
