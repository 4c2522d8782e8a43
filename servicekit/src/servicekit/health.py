"""`/health` (liveness, no I/O) and `/health/ready` (readiness, injected check)."""

from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"
    service: str


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    service: str
    detail: str | None = Field(default=None, description="Why the service is not ready.")
    code: str | None = Field(default=None, description="Stable reason code when not ready.")


class ReadinessCheck(BaseModel):
    """What a service's readiness check reports; `ready=False` makes readiness 503."""

    ready: bool
    detail: str | None = None
    code: str | None = None


ReadyProbe = Callable[[Request], Awaitable[ReadinessCheck]]


def health_router(service: str, ready: ReadyProbe) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health", summary="Liveness: the process is up")
    async def liveness() -> Liveness:
        return Liveness(service=service)

    @router.get(
        "/health/ready",
        summary="Readiness: the service can serve requests",
        responses={503: {"model": Readiness, "description": "Not ready, with the reason"}},
    )
    async def readiness(request: Request) -> JSONResponse:
        if getattr(request.app.state, "shutting_down", False):
            check = ReadinessCheck(ready=False, detail="shutting down", code="shutting_down")
        else:
            check = await ready(request)
        body = Readiness(
            status="ok" if check.ready else "unavailable",
            service=service,
            detail=check.detail,
            code=check.code,
        )
        return JSONResponse(body.model_dump(), status_code=200 if check.ready else 503)

    return router
